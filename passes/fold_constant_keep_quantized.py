"""FoldConstantKeepQuantized: ``FoldConstant`` that leaves quantized weights quantized.

Plain ``FoldConstant`` evaluates ``dequantize(W_int8, s, z)`` (and any permute/reshape over
it) into a float constant, which erases the integer weights the integer-lowering passes need.
This pass hides the integer operand of every ``dequantize`` whose data is a constant behind a
temporary function parameter, runs ``FoldConstant`` on the rest, then binds the constants
back. Everything else folds exactly as with ``FoldConstant``.

Preconditions: none. Position: replaces ``FoldConstant`` in the canonicalize phase whenever
integer lowering follows (before :class:`LowerIntegerConv`).
"""
from __future__ import annotations

from tvmq._tvm import Constant, relax, tvm

_PREFIX = "tvmq_qconst_"


@relax.expr_functor.mutator
class _Hide(relax.PyExprMutator):
    def __init__(self):
        super().__init__()
        self.hidden: dict[str, tuple[relax.Var, Constant]] = {}

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.dequantize"
                and isinstance(call.args[0], Constant)):
            const = call.args[0]
            name = f"{_PREFIX}{len(self.hidden)}"
            var = relax.Var(name, const.ty if hasattr(const, "ty") else const.struct_info)
            self.hidden[name] = (var, const)
            return relax.Call(call.op, [var, *call.args[1:]], call.attrs)
        return call


def _fold_function(func: relax.Function) -> relax.Function:
    hider = _Hide()
    body = hider.visit_expr(func.body)
    if not hider.hidden:
        return None
    params = list(func.params) + [v for v, _ in hider.hidden.values()]
    lifted = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs)
    mod = tvm.IRModule({"main": lifted})
    mod = relax.transform.FoldConstant()(mod)
    consts = {name: const.value for name, (_, const) in hider.hidden.items()}
    mod = relax.transform.BindParams("main", consts)(mod)
    return mod["main"]


@tvm.transform.module_pass(opt_level=0, name="FoldConstantKeepQuantized")
class FoldConstantKeepQuantized:
    """Fold constants except the integer data of ``dequantize`` calls."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                folded = _fold_function(func)
                if folded is None:
                    folded = relax.transform.FoldConstant()(tvm.IRModule({"main": func}))["main"]
                updates[gvar] = folded
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod
