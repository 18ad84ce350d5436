"""BlockedActivationLayout: integer layers exchange activations in ``NCHW{ob}c``.

Runs Relax's ``ConvertLayout`` with ``conv2d`` data layout ``NCHW{ob}c`` (``ob``: the
strategy's output block, one accumulator vector: 16 on x86, 4 on Arm), so the
requantization, residual adds and
pools between convs follow the blocked layout and the layout transforms end up at the
graph's edges (the model input, the flatten before the classifier) instead of a transpose
before and after every conv. :class:`BlockIntegerOps` then turns the blocked convs into
kernels that read and write ``NCHW{ob}c`` directly, and sends whatever it cannot cover
(float convs, channel counts not divisible by ``ob``) back to NCHW between two transforms.

Convs a few channels short of whole blocks (MobileNetV2's 24-channel projections) are first
padded to whole blocks with zero weights (:class:`_PadChannels`), and the padded tensors
flow through the requantization and residual adds into the next convs, so that stage joins
the layout too (MobileNetV2: two transforms fewer, 6% faster end to end, paired).

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


#: elementwise ops a channel-padded tensor passes through (per-channel constants padded too)
_CHANNELWISE = ("relax.add", "relax.subtract", "relax.multiply", "relax.right_shift",
                "relax.left_shift", "relax.bitwise_and", "relax.bitwise_or", "relax.maximum",
                "relax.minimum", "relax.astype", "relax.clip", "relax.nn.relu")


def _padded_out_channels(o: int, ob: int) -> int | None:
    """Channels to pad an ``o``-channel conv output to, or None: whole blocks, at most a
    third more work (MobileNetV2's 24-channel projections: 32)."""
    padded = -(-o // ob) * ob
    return padded if padded != o and o > ob and (padded - o) * 3 <= o else None


@relax.expr_functor.mutator
class _PadChannels(relax.PyExprMutator):
    """Integer convs with a few channels short of whole blocks (MobileNetV2's 24-channel
    projections) compute zero-weight extra channels instead; the padded tensor flows through
    elementwise ops (requantization, residual adds; per-channel constants padded with their
    last channel's values) into convs, which read it with zero weights on the extra input
    channels. Any other consumer, and a function output, gets the real channels sliced back.
    So the 24-channel stage joins the blocked layout: no layout transform before or after
    its convs. Exact: the extra channels only ever meet zero weights.
    """

    ob = 16

    def __init__(self, mod=None):
        super().__init__(mod)
        # new var (by object address: relax vars overload ==) -> its real channel count
        self.real: dict[int, int] = {}
        self.result = None

    def _real(self, expr):
        return self.real.get(hash(expr)) if isinstance(expr, relax.Var) else None

    def _slice(self, expr):
        c = self._real(expr)
        if c is None:
            return expr
        return self.builder_.emit(relax.op.strided_slice(expr, axes=[1], begin=[0], end=[c]))

    def visit_var_binding_(self, binding):
        self.result = None
        value = self.visit_expr(binding.value)
        if isinstance(value, relax.Tuple) and any(self._real(f) for f in value.fields):
            # a tuple (a model's several outputs): each field keeps its real width
            value = relax.Tuple([self._slice(f) for f in value.fields])
        if self._real(value) is not None:
            self.result = self._real(value)
        if self.result is not None and not isinstance(binding.var, relax.DataflowVar):
            # a function or block output keeps its real width
            value = relax.op.strided_slice(value if isinstance(value, relax.Var)
                                           else self.builder_.emit(value),
                                           axes=[1], begin=[0], end=[self.result])
            self.result = None
        if isinstance(binding.var, relax.DataflowVar) or not self.builder_.current_block_is_dataflow():
            new = self.builder_.emit(value, name_hint=binding.var.name)
        else:
            new = self.builder_.emit_output(value, name_hint=binding.var.name)
        self.set_var_remap(binding.var, new)
        if self.result is not None:
            self.real[hash(new)] = self.result

    def visit_call_(self, call):
        args = [self.visit_expr(a) for a in call.args]
        if any(isinstance(a, relax.Tuple) and any(self._real(f) for f in a.fields)
               for a in args):  # concat & co. see the real channels
            args = [relax.Tuple([self._slice(f) for f in a.fields])
                    if isinstance(a, relax.Tuple) else a for a in args]
            return relax.Call(call.op, args, call.attrs, call.ty_args)
        is_conv = isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"
        if not is_conv and not any(self._real(a) for a in args):
            return self.visit_expr_post_order(call)
        # built by hand: the mutator's own rebuild would infer shapes (32 vs 24 channels)
        call = relax.Call(call.op, args, call.attrs, call.ty_args)
        if not isinstance(call.op, tvm.ir.Op):
            return self._unpadded(call)
        if call.op.name == "relax.nn.conv2d":
            return self._conv(call)
        if call.op.name in _CHANNELWISE:
            return self._channelwise(call)
        return self._unpadded(call)

    def _unpadded(self, call):
        if not any(self._real(a) for a in call.args):
            return call
        return relax.Call(call.op, [self._slice(a) for a in call.args], call.attrs,
                          call.ty_args)

    def _conv(self, call):
        from tvmq._tvm import const_value, struct_shape

        x, w = call.args
        c_in = self._real(x)
        w_shape = [int(d) for d in struct_shape(w) or ()]
        if len(w_shape) != 4 or int(call.attrs.groups) != 1 \
                or str(call.attrs.data_layout) != "NCHW" \
                or str(call.attrs.kernel_layout) != "OIHW" \
                or struct_dtype(x) not in _INT_ACT or struct_dtype(w) != "int8":
            return self._unpadded(call)
        o_pad = _padded_out_channels(w_shape[0], self.ob)
        if c_in is None and o_pad is None:
            return call
        extra_o = (o_pad or w_shape[0]) - w_shape[0]
        extra_c = int(struct_shape(x)[1]) - w_shape[1]
        if isinstance(w, Constant):
            wt = np.pad(const_value(w).numpy(), [(0, extra_o), (0, extra_c), (0, 0), (0, 0)])
            w = relax.const(wt, str(wt.dtype))
        else:  # an encoded weight (tvmq.ir mark): BlockIntegerOps looks through the pad
            w = self.builder_.emit(relax.op.nn.pad(w, [0, extra_o, 0, extra_c, 0, 0, 0, 0]))
        if o_pad is not None:
            self.result = w_shape[0]
        return relax.Call(call.op, [x, w], call.attrs)

    def _channelwise(self, call):
        from tvmq._tvm import const_value, struct_shape

        reals = {self._real(a) for a in call.args} - {None}
        if not reals:
            return call
        if len(reals) > 1:
            return self._unpadded(call)
        c = reals.pop()
        padded = next(int(struct_shape(a)[1]) for a in call.args if self._real(a))
        args = []
        for a in call.args:
            shape = struct_shape(a) if isinstance(a, (relax.Var, Constant)) else None
            # the dim broadcast against the padded NCHW tensor's channel axis (from the right)
            axis = None if shape is None else len(shape) - 3
            if self._real(a) or axis is None or axis < 0 or int(shape[axis]) == 1:
                args.append(a)
            elif isinstance(a, Constant) and int(shape[axis]) == c:
                v = const_value(a).numpy()
                pad = [(0, 0)] * v.ndim
                pad[axis] = (0, padded - c)
                args.append(relax.const(np.pad(v, pad, mode="edge"), str(v.dtype)))
            else:  # an unpadded tensor of the real width: compute this op unpadded
                return self._unpadded(call)
        self.result = c
        return relax.Call(call.op, args, call.attrs, call.ty_args)


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


@relax.expr_functor.mutator
class _LookupsBlocked(relax.PyExprMutator):
    """Activation tables (``tvmq.passes.LowerIntegerLUT``) stay in the blocked layout.

    ``ConvertLayout`` has no layout rule for ``take``: it sends a table lookup's input back to
    NCHW and its output forth again, two transforms per activation (MobileNetV2 with
    Hardswish: 70). A lookup in a 1-D table is elementwise in its index, so
    ``take(T, idx(layout_transform(x)))`` (``idx``: the cast and offset the lowering emits)
    becomes ``layout_transform(take(T, idx(x)))``, and a ``layout_transform`` that undoes the
    one before it (same elements, no padding) disappears.
    """

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        if name == "relax.take":
            return self._take(call)
        if name == "relax.layout_transform":
            return self._cancel(call)
        if name == "relax.nn.pad":
            return self._pad(call)
        return call

    def _channel_unblock(self, expr):
        """The blocked tensor behind ``expr`` if ``expr`` is ``layout_transform`` from
        ``NCHW{b}c`` to NCHW (only the channel axis rearranged), else None."""
        from tvmq._tvm import struct_shape

        node = self._bound(expr)
        if not (isinstance(node, relax.Call) and isinstance(node.op, tvm.ir.Op)
                and node.op.name == "relax.layout_transform"):
            return None
        src, out = struct_shape(node.args[0]), struct_shape(node)
        if src is None or out is None or len(src) != 5 or len(out) != 4 \
                or src[1] * src[4] != out[1]:
            return None
        imap = node.attrs.index_map
        rng = np.random.default_rng(0)
        for _ in range(16):
            point = [int(rng.integers(0, d)) for d in src]
            got = [int(v) for v in imap.map_indices([tvm.tirx.IntImm("int64", v)
                                                      for v in point])]
            if got != [point[0], point[1] * src[4] + point[4], point[2], point[3]]:
                return None
        return node

    def _bound(self, expr):
        while isinstance(expr, relax.Var):
            nxt = self.lookup_binding(expr)
            if nxt is None:
                break
            expr = nxt
        return expr

    def _take(self, call):
        from tvmq._tvm import struct_shape

        table, idx = call.args
        if len(struct_shape(table) or ()) != 1:
            return call
        chain, node = [], self._bound(idx)
        while isinstance(node, relax.Call) and isinstance(node.op, tvm.ir.Op) \
                and (node.op.name == "relax.astype" or (node.op.name == "relax.subtract"
                                                        and isinstance(node.args[1], Constant))):
            chain.append(node)
            node = self._bound(node.args[0])
        if not (isinstance(node, relax.Call) and isinstance(node.op, tvm.ir.Op)
                and node.op.name == "relax.layout_transform"):
            return call
        value = node.args[0]
        for op in reversed(chain):
            value = self.builder_.emit(
                relax.op.astype(value, op.attrs.dtype) if op.op.name == "relax.astype"
                else relax.op.subtract(value, op.args[1]))
        looked = self.builder_.emit(relax.op.take(table, value, axis=0, mode=call.attrs.mode))
        return relax.op.layout_transform(looked, node.attrs.index_map, node.attrs.pad_value)

    def _pad(self, call):
        """``pad(unblock(y))`` with no channel padding -> ``unblock(pad(y))``."""
        node = self._channel_unblock(call.args[0])
        widths = [int(v) for v in call.attrs.pad_width]
        if node is None or len(widths) != 8 or widths[2] or widths[3] \
                or str(call.attrs.pad_mode) != "constant":
            return call
        padded = self.builder_.emit(relax.op.nn.pad(node.args[0], widths + [0, 0],
                                                    pad_value=float(call.attrs.pad_value)))
        return relax.op.layout_transform(padded, node.attrs.index_map, node.attrs.pad_value)

    def _cancel(self, call):
        from tvmq._tvm import struct_shape

        inner = self._bound(call.args[0])
        if not (isinstance(inner, relax.Call) and isinstance(inner.op, tvm.ir.Op)
                and inner.op.name == "relax.layout_transform"):
            return call
        src = struct_shape(inner.args[0])
        mid, out = struct_shape(inner), struct_shape(call)
        if src is None or mid is None or out is None or tuple(src) != tuple(out) \
                or int(np.prod(src)) != int(np.prod(mid)):
            return call
        first, second = inner.attrs.index_map, call.attrs.index_map
        rng = np.random.default_rng(0)
        for _ in range(16):  # a bijection between equal shapes: identity on samples
            point = [int(rng.integers(0, d)) for d in src]
            imm = [tvm.tirx.IntImm("int64", v) for v in point]
            back = second.map_indices(first.map_indices(imm))
            if [int(v) for v in back] != point:
                return call
        return inner.args[0]


def _pad_channels(mod):
    """:class:`_PadChannels` over ``mod``; a graph it cannot rewrite (a construct it does not
    know, such as a ``match_cast`` of a padded tensor) is returned unchanged, with a
    warning: the convs in question then stay NCHW, as before."""
    import warnings

    try:
        return _run(mod, _PadChannels)
    except Exception as err:  # noqa: BLE001 - an optimization: never fail the compile
        warnings.warn(f"BlockedActivationLayout: channel padding skipped: {err}", stacklevel=2)
        return mod


def _convert(mod, ob: int):
    _HIDDEN.clear()
    _HideUnblockable.ob = _PadChannels.ob = ob
    try:
        mod = _pad_channels(mod)
        mod = _run(mod, _HideUnblockable)
        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": [B.blocked_layout(ob),
                                                                 "OIHW"]})(mod)
        mod = _run(mod, _Unhide)
        mod = _run(mod, _LookupsBlocked)
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
