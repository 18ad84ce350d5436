"""BlockIntegerOps: integer conv2d/matmul -> calls of tvmq's blocked kernels (per target).

Rewrites, for the target's :class:`~tvmq.schedules.strategy.Strategy`:

* ``conv2d(x, W, out_dtype="int32")`` (``x`` int8/uint8 NCHW, ``W`` a constant int8 OIHW,
  groups 1) into ``pack(x)`` (padded NCHW{ib}c, shifted to the instruction's signedness)
  and a conv kernel whose weights are packed *now*, at compile time;
* depthwise ``conv2d`` (groups = C = O) into ``pad(x)`` and a vectorized depthwise kernel;
* ``matmul(x, W, out_dtype="int32")`` (``x`` 2-D, ``W`` a constant int8 ``[K, N]``) into a
  dense kernel; for one row of ``x`` and a codebook weight, the activation-table GEMV
  (:mod:`tvmq.schedules.lut_gemv`) where :func:`~tvmq.schedules.gemv_select.choose_form`
  picks it for that shape and CPU.

The kernels return NCHW (or ``[M, N]``) int32 like the op they replace, and are marked
``op_pattern = kOutEWiseFusable``, so ``FuseOps`` fuses the requantization that follows into
them and :class:`ScheduleIntegerKernels` computes it per register tile. Anything else (int16
operands, non-constant weights, other layouts) is left for ``LegalizeOps``.

Position: legalize phase, **before** ``LegalizeOps`` (after the integer lowering of
``tvmq.passes``). Hardware-specific (block sizes, signedness), hence in ``tvmq.schedules``.
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import Constant, const_value, relax, struct_dtype, struct_shape, te, tvm
from tvmq.ir import find_encoded
from tvmq.schedules import blocked as B
from tvmq.schedules.strategy import Strategy

OUT_EWISE_FUSABLE = 4  # tvm::relax::OpPatternKind::kOutEWiseFusable
_INT_ACT = ("int8", "uint8")


def _const(mut, expr) -> np.ndarray | None:
    seen = 0
    while isinstance(expr, relax.Var) and seen < 8:
        expr, seen = mut.lookup_binding(expr), seen + 1
    if isinstance(expr, Constant):
        return const_value(expr).numpy()
    return None


def _pads(attrs) -> tuple[int, int, int, int]:
    p = [int(v) for v in attrs.padding]
    return tuple(p) if len(p) == 4 else (p[0], p[1], p[0], p[1])


def _absorb_pad(mut, x, pads):
    """``(x0, pads, value)``: look through a constant spatial ``nn.pad`` feeding the conv.

    The integer lowering pads with the activation zero point explicitly; the pack stage
    pads anyway, so the separate pass over the activations goes away.
    """
    bound = mut.lookup_binding(x) if isinstance(x, relax.Var) else None
    if not (isinstance(bound, relax.Call) and isinstance(bound.op, tvm.ir.Op)
            and bound.op.name == "relax.nn.pad" and str(bound.attrs.pad_mode) == "constant"):
        return x, pads, 0
    pw = [int(v) for v in bound.attrs.pad_width]
    value = float(bound.attrs.pad_value)
    if len(pw) not in (8, 10) or any(pw[:4]) or any(pw[8:]) or value != int(value) \
            or (any(pads) and value != 0):
        return x, pads, 0
    pt, pb, pl, pr = pw[4], pw[5], pw[6], pw[7]  # NCHW or NCHW{ob}c: H and W are axes 2, 3
    return bound.args[0], (pads[0] + pt, pads[1] + pl, pads[2] + pb, pads[3] + pr), int(value)


def _kernel_func(args, out, name: str):
    # private (no global_symbol), so FuseOps may fuse the requantization into it
    func = te.create_prim_func([*args, out]).with_attr("op_pattern", OUT_EWISE_FUSABLE)
    return func.without_attr("global_symbol") if "global_symbol" in (func.attrs or {}) else func


@relax.expr_functor.mutator
class _Mutator(relax.PyExprMutator):
    def __init__(self, mod, st: Strategy, subbyte_in_kernel: bool, gemv_form: str = "auto",
                 mcpu: str = ""):
        super().__init__(mod)
        self.mod = mod
        self.st = st
        self.subbyte_in_kernel = subbyte_in_kernel
        self.gemv_form = gemv_form
        self.mcpu = mcpu
        self.count = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.attrs is None:
            return call
        name = call.op.name
        new = None
        if name == "relax.nn.conv2d":
            new = self._conv(call)
        elif name == "relax.matmul":
            new = self._matmul(call)
        return call if new is None else new

    # -- helpers --------------------------------------------------------------------------
    def _weight(self, expr):
        """``(int8 weight values, bits to store them at, codebook table or None)``, or
        ``(None, 8, None)``.

        An encoded weight (:func:`tvmq.ir.find_encoded`: the mark ``PackSubByteWeights`` or
        ``LowerCodebookWeights`` leaves) is decoded here with its codec's NumPy reference,
        and its bits (and a codebook's table) returned so the kernel stores it at that width
        again. Looks through a zero ``nn.pad`` of the output- and input-channel axes
        (:class:`~tvmq.schedules.BlockedActivationLayout` pads an RGB stem and 24-channel
        convs to whole blocks; an encoded weight is padded that way, not as a constant).
        """
        padded = self._weight_pad(expr)
        if padded is not None:
            src, pw = padded
            w, bits, table = self._weight(src)
            if w is None:
                return None, 8, None
            pads = [(pw[0], pw[1]), (pw[2], pw[3])] + [(0, 0)] * (w.ndim - 2)
            return np.pad(w, pads), bits, table
        w = _const(self, expr)
        if w is not None or struct_dtype(expr) != "int8":
            return w, 8, None
        enc = find_encoded(self.mod, expr, self.lookup_binding)
        if enc is None:
            return None, 8, None
        if not self.subbyte_in_kernel or enc.codec.name not in ("packed", "codebook"):
            return enc.decode(), 8, None  # any other codec is stored as int8 here
        table = np.asarray(enc.parts["table"], np.int8) if enc.codec.name == "codebook" else None
        return enc.decode(), enc.codec.bits, table

    def _weight_args(self, wp_np, bits, table=None):
        """(placeholders, int8 tensor the kernel reads, Relax constants) of blocked weights:
        stored at ``bits`` and decoded in the kernel; a codebook's indices and table
        (:mod:`tvmq.schedules.blocked_codebook`), or int8 when a padded block holds a value
        the table lacks."""
        if table is not None:
            from tvmq.schedules.blocked_codebook import codebook_operand

            found = codebook_operand(wp_np, table, bits, self.st.ob)
            if found is not None:
                stored, args, wt = found
                return args, wt, [relax.const(a, "int8") for a in stored]
            bits = 8
        stored, arg, wt = B.weight_operand(wp_np, self.st.ob, bits)
        return [arg], wt, [relax.const(stored, "int8")]

    def _call_kernel(self, func, args, out_shape, out_dtype="int32"):
        self.count += 1
        gv = self.builder_.add_func(func, f"tvmq_kernel{self.count}")
        # returned, not emitted: the original binding keeps it (an alias would block FuseOps)
        return relax.call_tir(gv, args, relax.TensorType(out_shape, out_dtype))

    def _emit_pack(self, fn, x, *args, name):
        return self.builder_.emit_te(fn, x, *args, primfunc_name_hint=name)

    def _conv(self, call):
        a = call.attrs
        x, w_expr = call.args
        layout = str(a.data_layout)
        if layout == B.blocked_layout(self.st.ob):
            return self._conv_blocked(call)
        if str(a.out_dtype) != "int32" or layout != "NCHW" \
                or str(a.kernel_layout) != "OIHW" or str(a.out_layout) not in ("NCHW", ""):
            return None
        in_dtype = struct_dtype(x)
        w, bits, table = self._weight(w_expr)
        if in_dtype not in _INT_ACT or w is None or w.dtype != np.int8:
            return None
        c = struct_shape(x)[1]
        strides = tuple(int(s) for s in a.strides)
        dil = tuple(int(d) for d in a.dilation)
        x, pads, pad_value = _absorb_pad(self, x, _pads(a))
        self.pad_value = pad_value
        out_shape = struct_shape(call)
        groups = int(a.groups)
        if groups == 1:
            return self._dense_conv(x, w, in_dtype, strides, pads, dil, out_shape, bits,
                                    table=table)
        if groups == c == w.shape[0] and w.shape[1] == 1:
            return self._depthwise(x, w, in_dtype, strides, pads, dil, out_shape)
        return None

    # -- whole-network blocked layout -------------------------------------------------------
    def _conv_blocked(self, call):
        """An integer conv ``ConvertLayout`` put in ``NCHW{ob}c``: blocked kernels in and out,
        or (anything they do not cover: odd shapes) the NCHW path between transforms."""
        a = call.attrs
        x, w_expr = call.args
        in_dtype = struct_dtype(x)
        if in_dtype not in _INT_ACT:
            # a float conv in the float layout (same block as ours on AVX-512):
            # BlockFloatOps' kernels take it; NCHW around it would undo that layout
            return None
        w, bits, table = self._weight(w_expr)
        ok = (str(a.out_dtype) == "int32" and str(a.kernel_layout) == "OIHW"
              and str(a.out_layout) == str(a.data_layout) and in_dtype in _INT_ACT
              and w is not None and w.dtype == np.int8 and len(struct_shape(x)) == 5)
        if ok:
            n, cb, h, wd, blk = struct_shape(x)
            o, ci, kh, kw = w.shape
            groups = int(a.groups)
            out_shape = struct_shape(call)
            strides = tuple(int(v) for v in a.strides)
            dil = tuple(int(v) for v in a.dilation)
            dense_ok = groups == 1 and ci == cb * blk and o % blk == 0
            dw_ok = groups == cb * blk == o and ci == 1
            src = self._channel_padded_source(x) if dense_ok else None
            if src is not None:
                xs, pads, pad_value = _absorb_pad(self, src, _pads(a))
                self.pad_value = pad_value
                return self._dense_conv(xs, w, in_dtype, strides, pads, dil, out_shape, bits,
                                        blocked=True, nchw_in=True, table=table)
            if dense_ok or dw_ok:
                xs, pads, pad_value = _absorb_pad(self, x, _pads(a))
                self.pad_value = pad_value
                if dense_ok:
                    return self._dense_conv(xs, w, in_dtype, strides, pads, dil, out_shape,
                                            bits, blocked=True, table=table)
                return self._depthwise(xs, w, in_dtype, strides, pads, dil, out_shape,
                                       blocked=True)
        return self._via_nchw(call)

    def _channel_pad(self, expr):
        """``(x0, before, after)`` if ``expr`` is a zero ``nn.pad`` of axis 1 alone, else None."""
        padded = self._weight_pad(expr)
        if padded is None or any(padded[1][:2]):
            return None
        return padded[0], padded[1][2], padded[1][3]

    def _weight_pad(self, expr):
        """``(w0, pad_width)`` if ``expr`` is a zero ``nn.pad`` of axes 0 and 1 alone."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
        if not (isinstance(bound, relax.Call) and isinstance(bound.op, tvm.ir.Op)
                and bound.op.name == "relax.nn.pad" and float(bound.attrs.pad_value) == 0):
            return None
        pw = [int(v) for v in bound.attrs.pad_width]
        if len(pw) != 2 * len(struct_shape(bound.args[0]) or ()) or any(pw[4:]):
            return None
        return bound.args[0], pw[:4]

    def _channel_padded_source(self, x):
        """``x0`` if ``x = layout_transform(nn.pad(x0))`` with the pad after the channels
        only: a conv :class:`~tvmq.schedules.BlockedActivationLayout` padded to whole
        blocks. Packing ``x0`` directly skips a transposing copy of the padded tensor."""
        bound = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if not (isinstance(bound, relax.Call) and isinstance(bound.op, tvm.ir.Op)
                and bound.op.name == "relax.layout_transform"):
            return None
        padded = self._channel_pad(bound.args[0])
        if padded is None or padded[1] or len(struct_shape(padded[0]) or ()) != 4:
            return None
        return padded[0]

    def _via_nchw(self, call):
        ib, a = self.st.ob, call.attrs  # the layout's channel block
        x = self.builder_.emit(relax.op.layout_transform(
            call.args[0], index_map=lambda n, c, h, w, i: (n, c * ib + i, h, w)))
        conv = relax.op.nn.conv2d(x, call.args[1], strides=a.strides, padding=a.padding,
                                  dilation=a.dilation, groups=a.groups, data_layout="NCHW",
                                  kernel_layout=str(a.kernel_layout), out_layout="NCHW",
                                  out_dtype=str(a.out_dtype) or None)
        conv = self.builder_.normalize(conv)
        new = self._conv(conv)
        y = self.builder_.emit(conv if new is None else new)
        return relax.op.layout_transform(
            y, index_map=lambda n, c, h, w: (n, c // ib, h, w, c % ib))

    def _kernel(self, xp, w_arg, w_const, corr_np, compute, name: str, out_shape, pack=None):
        """``call_tir`` of a kernel over packed activations ``xp``, weights (placeholders
        ``w_arg``, constants ``w_const``: lists) and the optional shift correction;
        ``compute(xp_t, corr_t)`` builds its output tensor. With ``pack``, ``xp`` is the
        unpacked input and ``pack(x_t)`` packs it inside the kernel (one call, not two)."""
        if pack is None:
            x_t = xp_t = te.placeholder(B.i64(struct_shape(xp)), self.st.act_dtype, "xp")
        else:
            x_t = te.placeholder(B.i64(struct_shape(xp)), struct_dtype(xp), "x")
            xp_t = pack(x_t)
        corr_t = None if corr_np is None else te.placeholder(B.i64(corr_np.shape), "int32", "corr")
        out = compute(xp_t, corr_t)
        args = [x_t, *w_arg] + ([corr_t] if corr_t is not None else [])
        rargs = [xp, *w_const] + ([relax.const(corr_np, "int32")] if corr_np is not None else [])
        return self._call_kernel(_kernel_func(args, out, name), rargs, out_shape)

    def _dense_conv(self, x, w, in_dtype, strides, pads, dil, out_shape, bits,
                    blocked: bool = False, nchw_in: bool = False, table=None):
        """groups=1 conv; ``blocked``: ``NCHW{ob}c`` in and out (no transposing pack);
        with ``nchw_in``, ``x`` is the NCHW source of a channel-padded blocked input (see
        :meth:`_channel_padded_source`), packed from there."""
        st = self.st
        shift = B.shift_for(in_dtype, st.act_dtype)
        if nchw_in:  # reduce over the real channels only: the rest were zero padding
            w = w[:, :B.ceil_div(struct_shape(x)[1], st.ib) * st.ib]
        pack = None
        if not blocked or nchw_in:
            xp = self._emit_pack(B.pack_activation, x, st.ib, pads, st.act_dtype,
                                 self.pad_value, name="tvmq_pack_act")
        elif any(pads) or shift:
            # padded inside the kernel: one call instead of two (ResNet-18 2% faster)
            xp, pack = x, lambda x_t: B.pad_blocked(x_t, pads, st.act_dtype, self.pad_value)
        else:
            xp = x
        wp_np = B.pack_weight(w, st.ob, st.ib)
        wp_arg, wp_t, wp_const = self._weight_args(wp_np, bits, table)
        attrs = st.weight_attrs(wp_np)

        def compute(xp_t, corr_t):
            acc = B.conv2d_blocked(xp_t, wp_t, strides, dil, out_shape[2:4], attrs=attrs)
            if blocked:
                return B.unpack_blocked(acc, w.shape[0], corr_t)
            return B.unpack_nchw(acc, out_shape[1], corr_t)

        return self._kernel(xp, wp_arg, wp_const, B.shift_correction(w, shift), compute,
                            "tvmq_conv", out_shape, pack=pack)

    def _depthwise(self, x, w, in_dtype, strides, pads, dil, out_shape, blocked: bool = False):
        """Depthwise conv (weights are tiny: stored as int8); ``blocked`` as above."""
        st = self.st
        split = B.dw_split(strides, dil)
        pack = None
        if blocked:
            pads, split, w_np, conv = B.depthwise_blocked_plan(
                w, st.ob, strides, dil, pads, struct_shape(x)[3], out_shape[3], st.dw_pixels,
                st.dw_intrin is not None)
            # padded inside the kernel: one call instead of two (MobileNetV2 5% faster)
            xp, pack = x, lambda x_t: B.pad_blocked(x_t, pads, st.act_dtype, self.pad_value,
                                                    split, B.BLOCK_PAD)
        else:
            xp = self._emit_pack(B.pad_nchw, x, pads, st.act_dtype, self.pad_value, split,
                                 name="tvmq_pad")
            w_np, conv = w, B.depthwise_nchw
        w_t = te.placeholder(B.i64(w_np.shape), "int8", "w")
        corr_np = B.shift_correction(w, B.shift_for(in_dtype, st.act_dtype))
        return self._kernel(
            xp, [w_t], [relax.const(w_np, "int8")], corr_np,
            lambda xp_t, corr_t: conv(xp_t, w_t, strides, dil, out_shape[2:4], corr_t),
            "tvmq_dwconv", out_shape, pack=pack)

    def _matmul(self, call):
        x, w_expr = call.args
        if str(call.attrs.out_dtype) != "int32" or struct_dtype(x) not in _INT_ACT:
            return None
        w, bits, table = self._weight(w_expr)
        if w is None or w.dtype != np.int8 or w.ndim != 2 or len(struct_shape(x)) != 2:
            return None
        st, in_dtype = self.st, struct_dtype(x)
        if table is not None and struct_shape(x)[0] == 1 and self._lut_form(w, bits):
            return self._lut_gemv(x, w, in_dtype, struct_shape(call))
        xp = self._emit_pack(B.pack_rows, x, st.ib, st.act_dtype, name="tvmq_pack_rows")
        wp_np = B.pack_dense_weight(w, st.ob, st.ib)
        wp_arg, wp_t, wp_const = self._weight_args(wp_np, bits, table)
        corr_np = B.shift_correction(w, B.shift_for(in_dtype, st.act_dtype), out_axis=1)
        attrs = st.weight_attrs(wp_np)
        return self._kernel(
            xp, wp_arg, wp_const, corr_np,
            lambda xp_t, corr_t: B.unpack_rows(B.dense_blocked(xp_t, wp_t, attrs=attrs),
                                               w.shape[1], corr_t),
            "tvmq_dense", struct_shape(call))

    def _lut_form(self, w, bits: int) -> bool:
        """Whether a batch-1 codebook dense layer takes the activation-table GEMV."""
        from tvmq.schedules import gemv_select, lut_gemv

        form = gemv_select.choose_form(self.mcpu, w.shape[0], w.shape[1], 1 << bits,
                                       self.gemv_form)
        return form == gemv_select.LUT and lut_gemv.eligible(w)

    def _lut_gemv(self, x, w, in_dtype, out_shape):
        """The activation-table GEMV of ``x[1, K] @ w`` (its planes encoded now)."""
        from tvmq.schedules import lut_gemv

        args, out, consts = lut_gemv.gemv_parts(w, in_dtype)
        rargs = [x] + [relax.const(c, str(c.dtype)) for c in consts]
        return self._call_kernel(_kernel_func(args, out, "tvmq_lut_gemv"), rargs, out_shape)


def BlockIntegerOps(strategy: Strategy, subbyte_in_kernel: bool = True,  # noqa: N802
                    gemv_form: str = "auto", mcpu: str = "") -> tvm.transform.Pass:
    """The pass for ``strategy`` (see the module docstring); identity when it is None.

    Weights marked ``packed`` by ``PackSubByteWeights`` (:func:`tvmq.ir.find_encoded`) are
    re-packed into the blocked layout *at their width* and decoded inside the conv/dense
    kernel, per register tile (``subbyte_in_kernel=True``, default): int4/int2 ``per = 8 //
    bits`` values a byte (:func:`tvmq.schedules.blocked.pack_subbyte_blocked`; they run as
    fast as int8), 3/5/6/7 bits in byte planes
    (:func:`tvmq.schedules.blocked_planar.pack_planar_blocked`). The artifact holds them at
    their width. ``subbyte_in_kernel=False`` stores them as blocked int8 instead (for
    comparison). Depthwise weights are always stored as int8.

    ``gemv_form`` (``"auto"``, ``"direct"``, ``"lut"``) and ``mcpu`` (the target's) choose
    the kernel of batch-1 codebook dense layers
    (:func:`tvmq.schedules.gemv_select.choose_form`).
    """

    @tvm.transform.module_pass(opt_level=0, name="tvmq.BlockIntegerOps")
    def _pass(mod, _ctx):
        if strategy is None:
            return mod
        mut = _Mutator(mod, strategy, subbyte_in_kernel, gemv_form, mcpu)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mut.builder_.update_func(gv, mut.visit_expr(func))
        return relax.transform.DeadCodeElimination()(mut.builder_.get())

    return _pass
