"""BlockedFloatLayout: float layers exchange activations in ``NCHW{b}c``.

Runs Relax's ``ConvertLayout`` with ``conv2d`` data layout ``NCHW{b}c`` on the float32
convs :class:`BlockFloatOps` can run in that layout, so the bias, activations, residual
adds and pools between them follow it, and layout transforms end up at the graph's edges
and at float <-> integer boundaries instead of a pack before and an unpack after every
conv. ``b`` is the float strategy's block. A module whose integer convs
:class:`BlockedActivationLayout` already blocked is left alone (see :func:`layout_block`).

Before the conversion:

* a conv whose input channels are not a multiple of ``b`` but whose output channels are
  (an RGB stem) reads zero-padded channels, so its output joins the layout;
  :class:`BlockFloatOps` then packs the real NCHW input itself;
* ``clip`` (ReLU6), which has no layout rule in TVM 0.27 and would send every tensor back
  to NCHW and forth again, becomes ``minimum(maximum(x, lo), hi)``;
* convs that stay NCHW (other dtypes, groups of partial blocks, channels not divisible by
  ``b``, stems whose weights are computed at run time) are hidden from ``ConvertLayout``
  inside private functions and inlined back afterwards.

After it, chains of two layout transforms (``NCHW{b}c -> NCHW -> NCHW{k}c``: a float
layer feeding an integer one whose transform the integer pass had already placed) are
composed into one, or dropped when they cancel, and transforms of constants are computed
now. Only modules with a float conv on a feature map of at least ``MIN_FEATURE_MAP``
pixels are converted (on tiny maps the edge transforms cost more than they save).
Position: legalize phase, after :class:`BlockedActivationLayout`, before
:class:`BlockIntegerOps` and :class:`BlockFloatOps`.
"""
from __future__ import annotations

import re

import numpy as np

from tvmq._tvm import Constant, const_value, relax, struct_dtype, struct_shape, tvm
from tvmq.schedules.strategy import FloatStrategy

#: smallest feature map (H*W) worth the blocked layout (as for the integer layout)
MIN_FEATURE_MAP = 144
_BLOCKED = re.compile(r"^NCHW(\d+)c$")


def _is_conv(expr) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
        and expr.op.name == "relax.nn.conv2d"


def _convs(mod) -> list:
    found = []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: found.append(e) if _is_conv(e)
                                            else None)
    return found


def layout_block(mod, fs: FloatStrategy) -> int | None:
    """The block to convert ``mod``'s float convs to, or None: no float conv worth it, or
    integer convs already blocked (TVM 0.27's ``ConvertLayout`` fails on a module that
    already holds ``NCHW{k}c`` tensors: "Layouts must have the same size"; the float
    layers of such a mixed model keep their per-layer pack and unpack)."""
    convs = _convs(mod)
    if any(_BLOCKED.match(str(c.attrs.data_layout)) for c in convs):
        return None
    big = [c for c in convs if struct_dtype(c.args[0]) == "float32"
           and len(struct_shape(c.args[0]) or ()) == 4
           and struct_shape(c.args[0])[2] * struct_shape(c.args[0])[3] >= MIN_FEATURE_MAP]
    return fs.block if big else None


def _prim_value(v) -> float:
    v = getattr(v, "value", v)
    return float(getattr(v, "value", v))


def _weight(mut, expr) -> np.ndarray | None:
    while isinstance(expr, relax.Var):
        bound = mut.lookup_binding(expr)
        if bound is None:
            return None
        expr = bound
    return const_value(expr).numpy() if isinstance(expr, Constant) else None


@relax.expr_functor.mutator
class _Prepare(relax.PyExprMutator):
    """Hide the convs that stay NCHW, pad stems' input channels, expand float ``clip``."""

    def __init__(self, mod, block: int, hidden: dict):
        super().__init__(mod)
        self.b = block
        self.hidden = hidden

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        if call.op.name == "relax.clip" and struct_dtype(call) == "float32":
            lo, hi = (_prim_value(v) for v in call.args[1:])
            return relax.op.minimum(relax.op.maximum(call.args[0], relax.const(lo)),
                                    relax.const(hi))
        if call.op.name != "relax.nn.conv2d" or _BLOCKED.match(str(call.attrs.data_layout)):
            return call
        new = self._blockable(call)
        return self._hide(call) if new is None else new

    def _blockable(self, call):
        """``call`` (or its channel-padded form) if it can run in ``NCHW{b}c``, else None."""
        a, (x, w_expr) = call.attrs, call.args
        w = _weight(self, w_expr)  # None: computed at run time (packed in the kernel)
        if struct_dtype(x) != "float32" or str(a.data_layout) != "NCHW" \
                or struct_dtype(w_expr) != "float32" or len(struct_shape(w_expr) or ()) != 4 \
                or str(a.kernel_layout) != "OIHW":
            return None
        c, o, groups = struct_shape(x)[1], struct_shape(w_expr)[0], int(a.groups)
        if o % self.b or (groups == c and c % self.b) \
                or (1 < groups < c and ((o // groups) % self.b or (c // groups) % self.b)):
            return None
        if groups == 1 and c % self.b:  # a stem: zero-padded input channels
            if w is None:
                return None
            extra = -c % self.b
            xp = relax.op.nn.pad(x, [0, 0, 0, extra, 0, 0, 0, 0])
            wp = relax.const(np.pad(w, [(0, 0), (0, extra), (0, 0), (0, 0)]))
            return relax.Call(call.op, [xp, wp], a)
        return call

    def _hide(self, call):
        bb = relax.BlockBuilder()
        x = relax.Var("x", call.args[0].ty)
        name = f"tvmq_nchw_fconv{len(self.hidden)}"
        with bb.function(name, [x], private=True):
            bb.emit_func_output(bb.emit(relax.Call(call.op, [x, call.args[1]], call.attrs)))
        gv = self.builder_.add_func(bb.get()[name], name)
        self.hidden[name] = call
        return relax.Call(gv, [call.args[0]])


@relax.expr_functor.mutator
class _Unhide(relax.PyExprMutator):
    def __init__(self, mod, hidden: dict):
        super().__init__(mod)
        self.hidden = hidden

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if isinstance(call.op, relax.GlobalVar) and call.op.name_hint in self.hidden:
            conv = self.hidden[call.op.name_hint]
            return relax.Call(conv.op, [call.args[0], conv.args[1]], conv.attrs)
        return call


def _compose(outer, inner):
    """``outer(inner(.))`` as one index map, or None when either pads."""
    if outer.attrs.pad_value is not None or inner.attrs.pad_value is not None:
        return None
    m_in, m_out = inner.attrs.index_map, outer.attrs.index_map
    composed = m_out.map_indices(m_in.map_indices(list(m_in.initial_indices)))
    ana = tvm.sym.Analyzer()
    return m_in.initial_indices, [ana.simplify(e) for e in composed]


@relax.expr_functor.mutator
class _MergeTransforms(relax.PyExprMutator):
    """``layout_transform(layout_transform(x))`` -> ``x`` when they cancel, else one
    transform with the composed index map."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not _is_transform(call) or not isinstance(call.args[0], relax.Var):
            return call
        inner = self.lookup_binding(call.args[0])
        if not _is_transform(inner):
            return call
        found = _compose(call, inner)
        if found is None:
            return call
        params, exprs = found
        src = inner.args[0]
        if list(struct_shape(src)) == list(struct_shape(call)) and \
                all(e.same_as(p) for e, p in zip(exprs, params)):
            return src
        imap = tvm.tirx.IndexMap(list(params), exprs, None)
        return relax.op.layout_transform(src, index_map=imap)


def _is_transform(expr) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
        and expr.op.name == "relax.layout_transform"


def _run(mod, make, skip=()):
    mut = make(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function) and gv.name_hint not in skip:
            mut.builder_.update_func(gv, mut.visit_expr(func))
    return mut.builder_.get()


def _convert(mod, block: int):
    from tvmq.schedules.blocked_activation_layout import _FoldConstTransforms

    hidden: dict = {}
    mod = _run(mod, lambda m: _Prepare(m, block, hidden))
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": [f"NCHW{block}c", "OIHW"]})(mod)
    mod = _run(mod, lambda m: _Unhide(m, hidden), skip=hidden)
    mod = tvm.IRModule({gv: f for gv, f in mod.functions.items()
                        if gv.name_hint not in hidden}, attrs=mod.attrs)
    mod = _run(mod, _MergeTransforms)
    return relax.transform.DeadCodeElimination()(_run(mod, _FoldConstTransforms))


def BlockedFloatLayout(strategy: FloatStrategy | None) -> tvm.transform.Pass:  # noqa: N802
    """The layout pass for ``strategy`` (identity when None or nothing to convert)."""

    @tvm.transform.module_pass(opt_level=0, name="tvmq.BlockedFloatLayout")
    def _pass(mod, _ctx):
        block = layout_block(mod, strategy) if strategy is not None else None
        if block is None or block % strategy.lanes:
            return mod
        mod = relax.transform.CanonicalizeBindings()(mod)
        return _convert(mod, block)

    return _pass
