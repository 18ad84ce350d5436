"""BlockedActivationLayout: integer layers exchange activations in ``NCHW{ob}c``.

Runs Relax's ``ConvertLayout`` with ``conv2d`` data layout ``NCHW{ob}c`` (``ob``: the
strategy's output block, one accumulator vector: 16 on x86, 4 on Arm), so the
requantization, residual adds and
pools between convs follow the blocked layout and the layout transforms end up at the
graph's edges (the model input, the flatten before the classifier) instead of a transpose
before and after every conv. :class:`BlockIntegerOps` then turns the blocked convs into
kernels that read and write ``NCHW{ob}c`` directly, and sends whatever it cannot cover
(float convs, channel counts not divisible by ``ob``) back to NCHW between two transforms.

Only modules with an integer ``conv2d`` on a feature map of at least ``MIN_FEATURE_MAP``
pixels are converted (a float model, or a tiny one like the digits CNN, keeps NCHW). Convs
the blocked kernels cannot take (float, channel counts not divisible by ``ob``; TVM 0.27's
``ConvertLayout`` would otherwise give a 24-channel output an invalid ``NCHW16c`` layout and
fail) are hidden from it inside private functions, inlined back afterwards: their tensors
stay NCHW, with transforms at the boundary.
Position: legalize phase, before :class:`BlockIntegerOps`.
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import Constant, relax, struct_dtype, tvm
from tvmq.schedules import blocked as B
from tvmq.schedules.strategy import Strategy

_INT_ACT = ("int8", "uint8")


#: smallest feature map (H*W) worth the blocked layout: on tiny maps the transforms at the
#: edges cost more than the per-layer packing they replace (measured: digits_cnn, 8x8,
#: 0.073 ms blocked vs 0.062 ms NCHW; ResNet-20, 32x32, 0.44 vs 0.50 ms)
MIN_FEATURE_MAP = 144


def _has_integer_conv(mod) -> bool:
    """Whether ``mod`` has an integer conv2d on a feature map of ``MIN_FEATURE_MAP`` or more."""
    from tvmq._tvm import struct_shape

    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
                and expr.op.name == "relax.nn.conv2d" \
                and struct_dtype(expr.args[0]) in _INT_ACT:
            shape = struct_shape(expr.args[0]) or ()
            if len(shape) == 4 and shape[2] * shape[3] >= MIN_FEATURE_MAP:
                found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def _blockable(call, ob: int) -> bool:
    """Whether ``BlockIntegerOps`` can run this conv in ``NCHW{ob}c`` in and out."""
    from tvmq._tvm import struct_shape

    x_shape, w_shape = struct_shape(call.args[0]), struct_shape(call.args[1])
    if struct_dtype(call.args[0]) not in _INT_ACT or len(x_shape or ()) != 4 \
            or len(w_shape or ()) != 4 or str(call.attrs.data_layout) != "NCHW":
        return False
    c, o, groups = x_shape[1], w_shape[0], int(call.attrs.groups)
    return c % ob == 0 and o % ob == 0 and groups in (1, c)


def _pad_input_channels(call, ob: int):
    """An integer conv whose input channels are not a multiple of ``ob`` (an RGB stem,
    MobileNetV2's 24-channel expansions) but whose output is, as the same conv on inputs
    and weights zero-padded to whole blocks: its output then takes part in the blocked
    layout (no transform after it; the pool or requantization that follows stays blocked)
    and :class:`BlockIntegerOps` packs the NCHW input over the real channels only. Else None.
    """
    from tvmq._tvm import struct_shape

    x_shape, w_shape = struct_shape(call.args[0]), struct_shape(call.args[1])
    if struct_dtype(call.args[0]) not in _INT_ACT or len(x_shape or ()) != 4 \
            or len(w_shape or ()) != 4 or str(call.attrs.data_layout) != "NCHW" \
            or int(call.attrs.groups) != 1 or not x_shape[1] % ob or w_shape[0] % ob:
        return None
    extra = -x_shape[1] % ob
    x = relax.op.nn.pad(call.args[0], [0, 0, 0, extra, 0, 0, 0, 0])
    w = relax.op.nn.pad(call.args[1], [0, 0, 0, extra, 0, 0, 0, 0])
    return relax.Call(call.op, [x, w], call.attrs)


_HIDDEN: dict = {}  # hidden function name -> the conv2d call it stands for (one pass run)


@relax.expr_functor.mutator
class _HideUnblockable(relax.PyExprMutator):
    """``conv2d`` calls that must stay NCHW -> calls of private one-op functions."""

    ob = 16

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d") \
                or _blockable(call, self.ob):
            return call
        padded = _pad_input_channels(call, self.ob)
        if padded is not None:
            return padded
        bb = relax.BlockBuilder()
        x = relax.Var("x", call.args[0].ty)
        name = f"tvmq_nchw_conv{len(_HIDDEN)}"
        with bb.function(name, [x], private=True):
            out = bb.emit(relax.Call(call.op, [x, call.args[1]], call.attrs))
            bb.emit_func_output(out)
        gv = self.builder_.add_func(bb.get()[name], name)
        _HIDDEN[gv.name_hint] = call
        return relax.Call(gv, [call.args[0]])


@relax.expr_functor.mutator
class _Unhide(relax.PyExprMutator):
    """Put the hidden convs back (on their possibly re-laid-out NCHW argument)."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if isinstance(call.op, relax.GlobalVar) and call.op.name_hint in _HIDDEN:
            conv = _HIDDEN[call.op.name_hint]
            return relax.Call(conv.op, [call.args[0], conv.args[1]], conv.attrs)
        return call


def _run(mod, mutator_cls):
    mut = mutator_cls(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function) and gv.name_hint not in _HIDDEN:
            mut.builder_.update_func(gv, mut.visit_expr(func))
    return mut.builder_.get()


@relax.expr_functor.mutator
class _FoldConstTransforms(relax.PyExprMutator):
    """``layout_transform(constant)`` -> the transformed constant, computed now (per-channel
    requantization parameters; padded lanes get the pad value, or zero). Otherwise they would
    run at every inference, and a padded bool transform does not even legalize."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.layout_transform"):
            return call
        value = call.args[0]
        while isinstance(value, relax.Var):
            bound = self.lookup_binding(value)
            if bound is None:
                return call
            value = bound
        if not isinstance(value, Constant):
            return call
        from tvmq._tvm import const_value

        src = const_value(value).numpy()
        if src.size > 1 << 16:
            return call
        imap = call.attrs.index_map
        out_shape = [int(d) for d in imap.map_shape([tvm.tirx.IntImm("int64", d)
                                                     for d in src.shape])]
        pad = call.attrs.pad_value
        fill = 0 if pad is None else getattr(pad, "value", pad)
        out = np.full(out_shape, fill, dtype=src.dtype)
        for idx in np.ndindex(*src.shape):
            dst = imap.map_indices([tvm.tirx.IntImm("int64", i) for i in idx])
            out[tuple(int(d) for d in dst)] = src[idx]
        return relax.const(out, str(src.dtype))


def _convert(mod, ob: int):
    _HIDDEN.clear()
    _HideUnblockable.ob = ob
    try:
        mod = _run(mod, _HideUnblockable)
        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": [B.blocked_layout(ob),
                                                                 "OIHW"]})(mod)
        mod = _run(mod, _Unhide)
        return _run(_drop(mod, set(_HIDDEN)), _FoldConstTransforms)
    finally:
        _HIDDEN.clear()


def _drop(mod, names: set):
    funcs = {gv: f for gv, f in mod.functions.items() if gv.name_hint not in names}
    return tvm.IRModule(funcs, attrs=mod.attrs)


def BlockedActivationLayout(strategy: Strategy | None) -> tvm.transform.Pass:  # noqa: N802
    """The layout pass for ``strategy`` (identity when None or without integer convs)."""

    @tvm.transform.module_pass(opt_level=0, name="tvmq.BlockedActivationLayout")
    def _pass(mod, _ctx):
        if strategy is None or not _has_integer_conv(mod):
            return mod
        # var-to-var aliases (``y = x``) have no layout rule: ConvertLayout would send the
        # tensor back to NCHW and forth again around each of them
        mod = relax.transform.CanonicalizeBindings()(mod)
        return _convert(mod, strategy.ob)

    return _pass
