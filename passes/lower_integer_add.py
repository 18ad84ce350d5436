"""LowerIntegerAdd: residual ``add`` of two dequantized tensors in integers.

Rewrites ``add(dequantize(a, s_a, z_a), dequantize(b, s_b, z_b))`` (per-tensor, non-constant
int8/uint8 inputs) into ``dequantize(a' + b', s_acc)`` where ``s_acc = max(s_a, s_b) / 2**20``
and ``a' = RNE((a - z_a) * s_a / s_acc)`` (fixed point, :func:`tvmq.qref.to_common_scale`).
:class:`IntegerRequantize` then requantizes the int32 sum to the output scale, fused with a
following ReLU. Reference: :func:`tvmq.qref.add_int`.

Preconditions: constant per-tensor quantization parameters. Position: quantize phase, after
:class:`LowerIntegerConv` (which claims ``add`` with a constant bias), before
:class:`IntegerRequantize`.
"""
from __future__ import annotations

from tvmq._tvm import Constant, relax, tvm
from tvmq.passes import _qcommon as q

_NAME = "LowerIntegerAdd"


def _pattern():
    return {"anchor": "relax.add", "operands": ("relax.dequantize", "relax.dequantize")}


def quantized_inputs(mut, args):
    """QParams of per-tensor dequantized non-constant integer inputs, or None."""
    params = []
    for arg in args:
        d = q.producer(mut, arg, "relax.dequantize")
        if d is None:
            return None
        p = q.QParams(d)
        if (not p.per_tensor or isinstance(p.data, Constant)
                or q.dtype_of(p.data) not in ("int8", "uint8", "int16", "uint16")):
            return None
        params.append(p)
    return params


@relax.expr_functor.mutator
class _Lower(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if q.op_name(call) != "relax.add":
            return call
        params = quantized_inputs(self, call.args)
        if params is None:
            return call
        (a, b), s_acc = q.to_common_scale_all(self.builder_.emit, params)
        acc = self.builder_.emit(relax.op.add(a, b))
        return q.int_dequantize(acc, s_acc, len(q.shape_of(call)), 0)


@tvm.transform.module_pass(opt_level=0, name=_NAME)
class LowerIntegerAdd:
    """Lower an add of two dequantized tensors to an int32 add at a common scale."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return q.run_mutator(mod, _Lower)
