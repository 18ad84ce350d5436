"""LowerIntegerConcat: ``concat`` of dequantized tensors in integers.

Rewrites ``concat([dequantize(x_i, s_i, z_i)...], axis)`` into
``dequantize(concat([x_i'...]), s_acc)`` with every input at the common accumulator scale
``s_acc = max(s_i) / 2**20`` (:func:`tvmq.qref.to_common_scale`); when all inputs share one
scale, zero point and dtype, the integers are concatenated as they are.
:class:`IntegerRequantize` then requantizes to the output scale. Reference:
:func:`tvmq.qref.concat_int`.

Preconditions: constant per-tensor parameters. Position: quantize phase, before
:class:`IntegerRequantize`.
"""
from __future__ import annotations

from tvmq._tvm import relax, tvm
from tvmq.passes import _qcommon as q
from tvmq.passes.lower_integer_add import quantized_inputs

_NAME = "LowerIntegerConcat"


def _pattern():
    return {"anchor": "relax.concat", "operands": "tuple of relax.dequantize"}


def _fields(mut, tup):
    if isinstance(tup, relax.Var):
        tup = mut.lookup_binding(tup)
    return list(tup.fields) if isinstance(tup, relax.Tuple) else None


@relax.expr_functor.mutator
class _Lower(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if q.op_name(call) != "relax.concat":
            return call
        fields = _fields(self, call.args[0])
        params = quantized_inputs(self, fields) if fields else None
        if not params:
            return call
        axis = int(call.attrs.axis) if call.attrs.axis is not None else 0
        first = params[0]
        if all(p.scale[0] == first.scale[0] and p.zero[0] == first.zero[0]
               and q.dtype_of(p.data) == q.dtype_of(first.data) for p in params):
            cat = self.builder_.emit(relax.op.concat([p.data for p in params], axis))
            return relax.op.dequantize(cat, q.c(first.scale[0], "float32"),
                                       q.c(first.zero[0], q.dtype_of(first.data)), axis=0)
        parts, s_acc = q.to_common_scale_all(self.builder_.emit, params)
        cat = self.builder_.emit(relax.op.concat(parts, axis))
        return q.int_dequantize(cat, s_acc, len(q.shape_of(call)), 0)


@tvm.transform.module_pass(opt_level=0, name=_NAME)
class LowerIntegerConcat:
    """Lower a concat of dequantized tensors to an integer concat."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return q.run_mutator(mod, _Lower)
