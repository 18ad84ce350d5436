"""SinkDequantize: move a per-tensor ``dequantize`` below layout ops and max pooling.

``op(dequantize(x, s, z))`` becomes ``dequantize(op(x), s, z)`` for ``reshape``,
``permute_dims``, ``flatten``, ``squeeze``, ``expand_dims`` (exact: they only move elements)
and ``max_pool2d`` (exact: dequantization with ``s > 0`` is monotonic; padding never wins).
This exposes ``quantize(dequantize(x))`` pairs to :class:`IntegerRequantize`, which removes
them, so QDQ graphs keep integer tensors across layout ops.

Dequantized constants (weights) stay where they are: :class:`LowerIntegerConv` reads them
through ``permute_dims`` itself, and a float fallback folds them.

Preconditions: constant per-tensor parameters. Position: quantize phase, first before
:class:`LowerIntegerConv` (an activation dequantized before a flatten or a max pool, as NNCF
places it, reaches the conv/dense directly), then before :class:`IntegerRequantize` (run
that pair twice to clear chains).
"""
from __future__ import annotations

from tvmq._tvm import relax, tvm
from tvmq.passes import _qcommon as q

_NAME = "SinkDequantize"
_MOVABLE = ("relax.reshape", "relax.permute_dims", "relax.flatten", "relax.squeeze",
            "relax.expand_dims", "relax.nn.max_pool2d")


def _pattern():
    return {"anchors": _MOVABLE, "operand": "relax.dequantize"}


@relax.expr_functor.mutator
class _Sink(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if q.op_name(call) not in _MOVABLE:
            return call
        d = q.producer(self, call.args[0], "relax.dequantize")
        if d is None:
            return call
        p = q.QParams(d)
        if not p.per_tensor or q.dtype_of(p.data) not in q.INT_DTYPES \
                or isinstance(p.data, q.Constant):  # weights: LowerIntegerConv reads them
            return call
        moved = self.builder_.emit(relax.Call(call.op, [p.data, *call.args[1:]], call.attrs))
        ndim = len(q.shape_of(call))
        return relax.op.dequantize(moved, d.args[1], d.args[2], axis=-1 % ndim)


@tvm.transform.module_pass(opt_level=0, name=_NAME)
class SinkDequantize:
    """Move per-tensor dequantize below data-movement ops and max_pool2d."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return q.run_mutator(mod, _Sink)
