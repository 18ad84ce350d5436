"""LowerIntegerAdd: residual ``add`` of two dequantized tensors in integers.

Rewrites ``add(dequantize(a, s_a, z_a), dequantize(b, s_b, z_b))`` (per-tensor, non-constant
int8/uint8 inputs) into ``dequantize(a' + b', s_acc)`` where ``s_acc = max(s_a, s_b) / 2**20``
and ``a' = RNE((a - z_a) * s_a / s_acc)`` (fixed point, :func:`tvmq.qref.to_common_scale`).
:class:`IntegerRequantize` then requantizes the int32 sum to the output scale, fused with a
following ReLU. Reference: :func:`tvmq.qref.add_int`.

``LowerIntegerAdd(match_onnxruntime=True)`` instead rewrites
``quantize(add(dequantize(a), dequantize(b)))`` with same-shape uint8 (or int8) ``a``, ``b`` and
output into one lookup ``table[a - lo, b - lo]`` of the 65,536 outputs onnxruntime's
``QLinearAdd`` computes in float32 with FMA (:func:`tvmq.qref.ort_add_table`): bit-identical
to onnxruntime, still no float op at run time.

Preconditions: constant per-tensor quantization parameters. Position: quantize phase, after
:class:`LowerIntegerConv` (which claims ``add`` with a constant bias), before
:class:`IntegerRequantize`.
"""
from __future__ import annotations

from tvmq import qref
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


@relax.expr_functor.mutator
class _OrtTable(relax.PyExprMutator):
    """``quantize(add(dq(a), dq(b)))`` -> onnxruntime's QLinearAdd as a 256x256 lookup."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if q.op_name(call) != "relax.quantize":
            return call
        add = q.producer(self, call.args[0], "relax.add")
        out = q.QParams(call)
        dtype = str(call.attrs.out_dtype)
        if add is None or not out.per_tensor or dtype not in ("int8", "uint8"):
            return call
        params = quantized_inputs(self, add.args)
        shape = q.shape_of(call)
        if params is None or any(q.dtype_of(p.data) != dtype or q.shape_of(p.data) != shape
                                 for p in params):
            return call
        pa, pb = params
        table = qref.ort_add_table(pa.scale[0], pa.zero[0], pb.scale[0], pb.zero[0],
                                   out.scale[0], out.zero[0], dtype)
        lo = qref.dtype_range(dtype)[0]
        emit = self.builder_.emit
        ia = emit(relax.op.subtract(relax.op.astype(pa.data, "int32"), q.c(lo, "int32")))
        ib = emit(relax.op.subtract(relax.op.astype(pb.data, "int32"), q.c(lo, "int32")))
        idx = emit(relax.op.add(relax.op.multiply(ia, q.c(table.shape[1], "int32")), ib))
        # indices are in [0, 65536) by construction; "clip" only silences TOPI's fast-mode note
        return relax.op.take(relax.const(table.reshape(-1), dtype), idx, axis=0, mode="clip")


@tvm.transform.module_pass(opt_level=0, name=_NAME)
class LowerIntegerAdd:
    """Lower an add of two dequantized tensors to an int32 add at a common scale."""

    def __init__(self, match_onnxruntime: bool = False):
        """``match_onnxruntime``: quantized adds as onnxruntime's QLinearAdd lookup table."""
        self.match_onnxruntime = match_onnxruntime

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if self.match_onnxruntime:
            mod = q.run_mutator(mod, _OrtTable)
        return q.run_mutator(mod, _Lower)
