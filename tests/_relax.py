"""Small helpers the Relax-level tests share."""
from __future__ import annotations

from tvmq._tvm import const_value, relax


def constants(mod, all_functions: bool = False) -> list:
    """NumPy values of the constants in ``mod["main"]`` (or in every Relax function)."""
    found = []

    @relax.expr_functor.visitor
    class _V(relax.PyExprVisitor):
        def visit_constant_(self, c):
            found.append(const_value(c).numpy())

        visit_generic_const_ = visit_constant_  # TVM 0.27 name

    funcs = mod.functions.values() if all_functions else [mod["main"]]
    for func in funcs:
        if isinstance(func, relax.Function):
            _V().visit_expr(func)
    return found
