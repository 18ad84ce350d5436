"""FoldConstantKeepQuantized: ``FoldConstant`` that leaves quantized weights quantized.

Plain ``FoldConstant`` evaluates ``dequantize(W_int8, s, z)`` (and any permute/reshape over
it) into a float constant, which erases the integer weights the integer-lowering passes need.
This pass turns every ``dequantize`` into an opaque call for the time of ``FoldConstant`` and
back after it: the operands fold, the dequantize does not. So integer weight chains that
exporters write collapse into one integer constant under the ``dequantize``: Brevitas's
``W_f32 -> QuantizeLinear -> Clip`` (its dynamo export) and ``W_int8 -> Clip`` (its
TorchScript export), onnxruntime's plain ``W_int8``. Everything else folds exactly as with
``FoldConstant``.

Preconditions: none. Position: replaces ``FoldConstant`` in the canonicalize phase whenever
integer lowering follows (before :class:`LowerIntegerConv`).
"""
from __future__ import annotations

from tvmq._tvm import relax, tvm

_KEEP = "tvmq.keep_dequantize."


def _is_op(call, name: str) -> bool:
    return isinstance(call.op, tvm.ir.Op) and call.op.name == name


@relax.expr_functor.mutator
class _Hide(relax.PyExprMutator):
    """Every ``dequantize`` becomes an opaque packed call (``FoldConstant`` folds its
    operands, never the call itself)."""

    def __init__(self):
        super().__init__()
        self.calls: list = []

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not _is_op(call, "relax.dequantize"):
            return call
        self.calls.append(call)
        ty = call.ty if hasattr(call, "ty") else call.struct_info
        return relax.op.call_pure_packed(f"{_KEEP}{len(self.calls) - 1}", *call.args,
                                         ty_args=ty)


@relax.expr_functor.mutator
class _Restore(relax.PyExprMutator):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not _is_op(call, "relax.call_pure_packed"):
            return call
        func = call.args[0]
        name = getattr(func, "global_symbol", "")
        if not isinstance(func, relax.ExternFunc) or not str(name).startswith(_KEEP):
            return call
        orig = self.calls[int(str(name)[len(_KEEP):])]
        return relax.Call(orig.op, list(call.args[1:]), orig.attrs)


@tvm.transform.module_pass(opt_level=0, name="FoldConstantKeepQuantized")
class FoldConstantKeepQuantized:
    """Fold constants except the ``dequantize`` calls themselves (their operands fold)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        hidden, calls = tvm.IRModule(mod.functions, attrs=mod.attrs), {}
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                hider = _Hide()
                body = hider.visit_expr(func.body)
                hidden[gvar] = relax.Function(func.params, body, func.ret_ty, func.is_pure,
                                              func.attrs)
                calls[gvar.name_hint] = hider.calls
        # the whole module: ``call_tir`` folds only when its PrimFunc is there to evaluate
        folded = relax.transform.FoldConstant()(hidden)
        for gvar, func in folded.functions.items():
            if isinstance(func, relax.Function) and calls.get(gvar.name_hint):
                folded[gvar] = _Restore(calls[gvar.name_hint]).visit_expr(func)
        return folded
