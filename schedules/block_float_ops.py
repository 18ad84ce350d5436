"""BlockFloatOps: float32 conv2d/matmul with constant weights -> tvmq's blocked float kernels.

Rewrites, for the target's :class:`~tvmq.schedules.strategy.FloatStrategy`:

* ``conv2d(x, W)`` (float32, ``W`` a constant OIHW, groups 1) into a kernel that packs
  ``x`` into ``NCHW{xb}c`` (padded, :func:`~tvmq.schedules.blocked_float.pack_activation`),
  runs the register-tiled conv with weights packed *now*, at compile time, and unpacks to
  NCHW; in the float blocked layout (``data_layout = out_layout = NCHW{b}c``, see
  :class:`BlockedFloatLayout`) it reads and writes that layout directly;
* depthwise ``conv2d`` (groups = C = O, ``C`` a multiple of the block) likewise, and grouped
  ones whose groups hold whole output blocks (and whole input blocks);
* ``matmul(x, W)`` (``x`` 2-D float32, ``W`` a ``[K, N]`` weight) into a dense kernel.

The kernels return what the op they replace returns and are marked
``op_pattern = kOutEWiseFusable``, so ``FuseOps`` fuses bias, BatchNorm scale/shift,
activations and residual adds into them and :class:`ScheduleFloatKernels` computes that
epilogue per register tile. A weight computed at run time (a codebook's ``take``, a
dequantize the integer lowering left) is packed inside the kernel, once a call, before the
conv. Anything else (groups of partial blocks, other dtypes and layouts) is left for
``LegalizeOps``.

Position: legalize phase, before ``LegalizeOps``, after :class:`BlockIntegerOps` (whose
float fallbacks between blocked integer layers are NCHW convs this pass then takes).
Hardware-specific (block sizes), hence in ``tvmq.schedules``.
"""
from __future__ import annotations

import re

import numpy as np

from tvmq._tvm import Constant, const_value, relax, struct_dtype, struct_shape, te, tvm
from tvmq.schedules import blocked_float as F
from tvmq.schedules.block_integer_ops import OUT_EWISE_FUSABLE
from tvmq.schedules.strategy import FloatStrategy

_BLOCKED = re.compile(r"^NCHW(\d+)c$")
#: ``out_dtype`` values meaning float32 out of float32 operands (unset prints "None" or "")
_SAME_DTYPE = ("float32", "", "None", "void")


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


def _kernel_func(args, out):
    # private (no global_symbol), so FuseOps may fuse the epilogue into it
    func = te.create_prim_func([*args, out]).with_attr("op_pattern", OUT_EWISE_FUSABLE)
    return func.without_attr("global_symbol") if "global_symbol" in (func.attrs or {}) else func


def _is_op(expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
        and expr.op.name == name


def _out_hw(x_shape, w_shape, strides, pads, dil) -> tuple[int, int]:
    from tvmq.schedules.float_kernels import out_hw

    return out_hw(x_shape[2], x_shape[3], w_shape[2:], strides, pads, dil)


class _Weight:
    """A conv/dense weight: a compile-time constant, packed now, or a tensor computed at run
    time (a codebook's ``take``), packed inside the kernel (block ``BLOCK_DECODE_W``)."""

    def __init__(self, value: np.ndarray | None, expr):
        self.value, self.expr = value, expr

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape) if self.value is not None else struct_shape(self.expr)

    def first_inputs(self, c: int) -> "_Weight":
        """The weight of the first ``c`` input channels (constants only)."""
        return _Weight(self.value[:, :c], None)

    def operand(self, pack_np, pack_te, *args):
        """``(placeholder, tensor the kernel reads, Relax argument)``."""
        if self.value is not None:
            packed = pack_np(self.value, *args)
            t = te.placeholder(F.i64(packed.shape), "float32", "w_packed")
            return t, t, relax.const(packed)
        t = te.placeholder(F.i64(self.shape), "float32", "w")
        return t, pack_te(t, *args), self.expr


def _weight(mut, expr, ndim: int) -> _Weight | None:
    value = _const(mut, expr)
    if value is not None:
        return _Weight(value, None) if value.dtype == np.float32 and value.ndim == ndim \
            else None
    if struct_dtype(expr) == "float32" and len(struct_shape(expr) or ()) == ndim:
        return _Weight(None, expr)
    return None


@relax.expr_functor.mutator
class _Mutator(relax.PyExprMutator):
    def __init__(self, mod, fs: FloatStrategy):
        super().__init__(mod)
        self.fs = fs
        self.count = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.attrs is None:
            return call
        new = None
        if call.op.name == "relax.nn.conv2d":
            new = self._conv(call)
        elif call.op.name == "relax.matmul":
            new = self._matmul(call)
        return call if new is None else new

    def _call(self, args, out, rargs, out_shape):
        self.count += 1
        gv = self.builder_.add_func(_kernel_func(args, out), f"tvmq_fkernel{self.count}")
        # returned, not emitted: the original binding keeps it (an alias would block FuseOps)
        return relax.call_tir(gv, rargs, relax.TensorType(out_shape, "float32"))

    def _conv(self, call):
        from tvmq.schedules.schedule_float_kernels import conv_tile, depthwise_tile

        a = call.attrs
        x, w_expr = call.args
        layout = str(a.data_layout)
        blk = _BLOCKED.match(layout)
        if struct_dtype(x) != "float32" or str(a.kernel_layout) != "OIHW" \
                or str(a.out_dtype) not in _SAME_DTYPE \
                or str(a.out_layout) not in (layout, "") \
                or not (layout == "NCHW" or blk):
            return None
        w = _weight(self, w_expr, 4)
        if w is None:
            return None
        x_shape = struct_shape(x)
        if blk:  # NCHW{b}c: the NCHW shape
            b = int(blk.group(1))
            x_shape = (x_shape[0], x_shape[1] * b, x_shape[2], x_shape[3])
        o, ci = w.shape[:2]
        groups = int(a.groups)
        geo = (tuple(int(s) for s in a.strides), _pads(a), tuple(int(d) for d in a.dilation))
        hw = _out_hw(x_shape, w.shape, *geo)
        fs = self.fs.with_block(int(blk.group(1))) if blk else self.fs
        in_place = bool(blk) and not any(geo[1])  # no padded copy of the input anyway
        if groups == 1 and ci == x_shape[1]:
            src = self._channel_padded_source(x) if blk and w.value is not None else None
            if src is not None:  # a stem padded to whole blocks: pack the real channels
                x, x_shape, in_place = src, struct_shape(src), False
                w = w.first_inputs(x_shape[1])
            tile = conv_tile(hw[1], -(-o // fs.block), fs, divisors_only=in_place)
            return self._dense_conv(call, x, x_shape, w, geo, hw, tile,
                                    fs.block if blk else None, nchw_in=src is not None)
        if groups == x_shape[1] == o and ci == 1 and o % fs.block == 0:
            tile = depthwise_tile(hw[1], fs, divisors_only=in_place)
            return self._depthwise(call, x, x_shape, w, geo, hw, tile, fs.block, bool(blk))
        if groups > 1 and ci * groups == x_shape[1] and (o // groups) % fs.block == 0 \
                and ci % F.input_block(ci, fs.block) == 0:
            tile = conv_tile(hw[1], o // groups // fs.block, fs, divisors_only=in_place)
            return self._dense_conv(call, x, x_shape, w, geo, hw, tile,
                                    fs.block if blk else None, groups=groups)
        return None

    def _channel_padded_source(self, x):
        """``x0`` if ``x = layout_transform(nn.pad(x0))`` with a zero pad after the channels
        only (a stem :class:`BlockedFloatLayout` padded to whole blocks), else None."""
        bound = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if not _is_op(bound, "relax.layout_transform"):
            return None
        pad = bound.args[0]
        pad = self.lookup_binding(pad) if isinstance(pad, relax.Var) else pad
        if not _is_op(pad, "relax.nn.pad") or float(pad.attrs.pad_value) != 0 \
                or str(pad.attrs.pad_mode) != "constant":
            return None
        pw = [int(v) for v in pad.attrs.pad_width]
        if len(pw) != 8 or pw[2] or any(pw[:2]) or any(pw[4:]):
            return None
        return pad.args[0]

    def _dense_conv(self, call, x, x_shape, w, geo, hw, tile, blk, nchw_in=False, groups=1):
        """Not depthwise; ``blk``: the output layout block (and the input's unless
        ``nchw_in``), or None (NCHW)."""
        strides, pads, dil = geo
        owp = F.padded(hw[1], tile[0])
        pads = F.right_pad(x_shape[3], pads, w.shape[3], strides[1], dil[1], owp)
        x_t = te.placeholder(F.i64(struct_shape(x)), "float32", "x")
        if blk and not nchw_in:
            if w.shape[0] % blk:
                return None
            xb, xp = blk, (F.pad_blocked(x_t, pads) if any(pads) else x_t)
        else:  # per group: w.shape[1] input channels
            xb = F.input_block(w.shape[1], blk or self.fs.block)
            xp = F.pack_activation(x_t, xb, pads)
        w_arg, wp, w_rel = w.operand(F.pack_conv_weight, F.pack_conv_weight_te,
                                     blk or self.fs.block, xb)
        acc = F.conv2d(xp, wp, strides, dil, (hw[0], owp), tile, groups=groups)
        out = F.unpack_blocked(acc, hw[1]) if blk else F.unpack_nchw(acc, w.shape[0], hw[1])
        return self._call([x_t, w_arg], out, [x, w_rel], struct_shape(call))

    def _depthwise(self, call, x, x_shape, w, geo, hw, tile, b, blocked):
        strides, pads, dil = geo
        owp = F.padded(hw[1], tile[0])
        pads = F.right_pad(x_shape[3], pads, w.shape[3], strides[1], dil[1], owp)
        x_t = te.placeholder(F.i64(struct_shape(x)), "float32", "x")
        if blocked:
            xp = F.pad_blocked(x_t, pads) if any(pads) else x_t
        else:
            xp = F.pack_activation(x_t, b, pads)
        w_arg, wt, w_rel = w.operand(F.pack_depthwise_weight, F.pack_depthwise_weight_te, b)
        acc = F.depthwise(xp, wt, strides, dil, (hw[0], owp), tile)
        out = F.unpack_blocked(acc, hw[1]) if blocked else F.unpack_nchw(acc, w.shape[0], hw[1])
        return self._call([x_t, w_arg], out, [x, w_rel], struct_shape(call))

    def _matmul(self, call):
        x, w_expr = call.args
        if struct_dtype(x) != "float32" or str(call.attrs.out_dtype) not in _SAME_DTYPE \
                or len(struct_shape(x)) != 2:
            return None
        w = _weight(self, w_expr, 2)
        if w is None:
            return None
        x_t = te.placeholder(F.i64(struct_shape(x)), "float32", "x")
        w_arg, wp, w_rel = w.operand(F.pack_dense_weight, F.pack_dense_weight_te, self.fs.block)
        out = F.unpack_rows(F.dense(x_t, wp), w.shape[1], None)
        return self._call([x_t, w_arg], out, [x, w_rel], struct_shape(call))


def BlockFloatOps(strategy: FloatStrategy | None) -> tvm.transform.Pass:  # noqa: N802
    """The pass for ``strategy`` (see the module docstring); identity when it is None."""

    @tvm.transform.module_pass(opt_level=0, name="tvmq.BlockFloatOps")
    def _pass(mod, _ctx):
        if strategy is None:
            return mod
        mut = _Mutator(mod, strategy)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mut.builder_.update_func(gv, mut.visit_expr(func))
        return relax.transform.DeadCodeElimination()(mut.builder_.get())

    return _pass
