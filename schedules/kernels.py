"""Standalone integer kernels (one PrimFunc each), for tests, benchmarks and tuning tasks.

The same computes are what :class:`tvmq.schedules.BlockIntegerOps` emits inside a model;
here each is built alone with NCHW int8/uint8 input, compile-time packed weights and NCHW
int32 output, so it can be checked against :func:`tvmq.qref.conv2d_int` bit for bit.
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import s_tir, te, tvm
from tvmq.schedules import blocked as B
from tvmq.schedules import lut_gemv
from tvmq.schedules.strategy import Strategy, strategy_for


def _out_hw(h, w, k, strides, padding, dilation):
    (kh, kw), (sh, sw), (dh, dw) = k, strides, dilation
    pt, pl, pb, pr = padding
    return ((h + pt + pb - dh * (kh - 1) - 1) // sh + 1,
            (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def _blocked_shape(x_shape, ib: int) -> tuple[int, ...]:
    n, c, h, w = x_shape
    return (n, c // ib, h, w, ib)


def conv_func(x_shape, w: np.ndarray, in_dtype: str, st: Strategy, strides=(1, 1),
              padding=(0, 0, 0, 0), dilation=(1, 1), bits: int = 8, layout: str = "NCHW"):
    """(PrimFunc, packed weight, correction or None) of a dense (groups=1) int conv.

    ``bits`` (2..8): width the weights are stored at (decoded inside the kernel).
    ``layout``: ``"NCHW"``, or ``"blocked"`` for ``NCHW{ob}c`` input and output (the layout
    integer layers exchange inside a model; ``x_shape`` is still given as NCHW).
    """
    blocked = layout != "NCHW"
    x = te.placeholder(B.i64(_blocked_shape(x_shape, st.ob) if blocked else x_shape),
                       in_dtype, "x")
    packed = B.pack_weight(w, st.ob, st.ib)
    wp_np, wp_arg, wp = B.weight_operand(packed, st.ob, bits)
    corr_np = B.shift_correction(w, B.shift_for(in_dtype, st.act_dtype))
    corr = None if corr_np is None else te.placeholder(B.i64(corr_np.shape), "int32", "corr")
    if blocked:
        xp = B.pad_blocked(x, padding, st.act_dtype)
    else:
        xp = B.pack_activation(x, st.ib, padding, st.act_dtype)
    hw = _out_hw(x_shape[2], x_shape[3], w.shape[2:], strides, padding, dilation)
    acc = B.conv2d_blocked(xp, wp, strides, dilation, hw,
                           attrs=st.weight_attrs(packed))
    out = (B.unpack_blocked(acc, w.shape[0], corr) if blocked
           else B.unpack_nchw(acc, w.shape[0], corr))
    args = [x, wp_arg] + ([corr] if corr is not None else []) + [out]
    return te.create_prim_func(args), wp_np, corr_np


def depthwise_func(x_shape, w: np.ndarray, in_dtype: str, st: Strategy, strides=(1, 1),
                   padding=(0, 0, 0, 0), dilation=(1, 1), layout: str = "NCHW"):
    """(PrimFunc, weight, correction or None) of a depthwise (multiplier 1) int conv.

    ``layout="blocked"``: ``NCHW{ob}c`` input and output, weights packed for the strategy's
    kernel (:func:`tvmq.schedules.blocked.depthwise_blocked_plan`).
    """
    corr_np = B.shift_correction(w, B.shift_for(in_dtype, st.act_dtype))
    corr = None if corr_np is None else te.placeholder(B.i64(corr_np.shape), "int32", "corr")
    hw = _out_hw(x_shape[2], x_shape[3], w.shape[2:], strides, padding, dilation)
    split = B.dw_split(strides, dilation)
    if layout != "NCHW":
        x = te.placeholder(B.i64(_blocked_shape(x_shape, st.ob)), in_dtype, "x")
        pads, split, w_np, conv = B.depthwise_blocked_plan(
            w, st.ob, strides, dilation, padding, x_shape[3], hw[1], st.dw_pixels,
            st.dw_intrin is not None)
        wt = te.placeholder(B.i64(w_np.shape), "int8", "w")
        xp = B.pad_blocked(x, pads, st.act_dtype, split_w=split, name=B.BLOCK_PAD)
        out = conv(xp, wt, strides, dilation, hw, corr)
    else:
        x = te.placeholder(B.i64(x_shape), in_dtype, "x")
        w_np, wt = w, te.placeholder(B.i64(w.shape), "int8", "w")
        xp = B.pad_nchw(x, padding, st.act_dtype, split_w=split)
        out = B.depthwise_nchw(xp, wt, strides, dilation, hw, corr)
    args = [x, wt] + ([corr] if corr is not None else []) + [out]
    return te.create_prim_func(args), w_np, corr_np


def _dense(m: int, w_kn: np.ndarray, in_dtype: str, st: Strategy, operand):
    """(PrimFunc, stored weight arrays, correction or None) of ``x[m, K] @ w_kn`` in int32;
    ``operand(packed)`` -> ``(stored arrays, placeholders, int8 tensor the kernel reads)``."""
    k, n = w_kn.shape
    x = te.placeholder(B.i64((m, k)), in_dtype, "x")
    packed = B.pack_dense_weight(w_kn, st.ob, st.ib)
    stored, w_args, wp = operand(packed)
    corr_np = B.shift_correction(w_kn, B.shift_for(in_dtype, st.act_dtype), out_axis=1)
    corr = None if corr_np is None else te.placeholder(B.i64(corr_np.shape), "int32", "corr")
    acc = B.dense_blocked(B.pack_rows(x, st.ib, st.act_dtype), wp,
                          attrs=st.weight_attrs(packed))
    out = B.unpack_rows(acc, n, corr)
    args = [x, *w_args] + ([corr] if corr is not None else []) + [out]
    return te.create_prim_func(args), stored, corr_np


def dense_func(m: int, w_kn: np.ndarray, in_dtype: str, st: Strategy, bits: int = 8):
    """(PrimFunc, packed weight, correction or None) of ``x[m, K] @ w_kn`` in int32."""
    def operand(packed):
        wp_np, wp_arg, wp = B.weight_operand(packed, st.ob, bits)
        return [wp_np], [wp_arg], wp

    func, (wp_np,), corr_np = _dense(m, w_kn, in_dtype, st, operand)
    return func, wp_np, corr_np


def codebook_dense_func(w_kn: np.ndarray, table: np.ndarray, bits: int, in_dtype: str,
                        st: Strategy, m: int = 1):
    """(PrimFunc, constants) of ``x[m, K] @ w_kn`` in int32 with ``w_kn`` (int8 values, all
    in the codebook ``table`` of ``bits``-bit indices) stored as indices and decoded in the
    kernel, as :class:`BlockIntegerOps` builds it; arguments ``x``, the constants, output."""
    from tvmq.schedules.blocked_codebook import codebook_operand

    func, stored, corr_np = _dense(m, w_kn, in_dtype, st,
                                   lambda packed: codebook_operand(packed, table, bits, st.ob))
    return func, [*stored] + ([corr_np] if corr_np is not None else [])


def kernel_block(sch, name: str):
    """The ``tir.SBlock`` named ``name`` under the root block of ``sch``."""
    return sch.get(sch.get_sblock(name))


def schedule(func, st: Strategy):
    """Schedule a kernel PrimFunc built here (or by the Relax rewrite) with ``st``."""
    sch = s_tir().Schedule(func)
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    if B.BLOCK_CONV in names:
        st.schedule_conv(sch, st.kernel_intrin(kernel_block(sch, B.BLOCK_CONV)))
    elif B.BLOCK_DENSE in names:
        st.schedule_dense(sch, st.kernel_intrin(kernel_block(sch, B.BLOCK_DENSE)))
    elif B.BLOCK_DWCONV in names:
        st.schedule_depthwise(sch)
    elif lut_gemv.BLOCK_GEMV in names:
        lut_gemv.schedule(sch)
    return sch.mod["main"]


def build(func, target, st: Strategy | None = None, lookups: bool = False):
    """Schedule and compile one kernel PrimFunc for ``target``; ``lookups``: with tvmq's
    TIR pipeline (small-table gathers as byte shuffles, as :func:`tvmq.compile` builds)."""
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    st = st or strategy_for(target)
    mod = tvm.IRModule({"main": schedule(func, st)})
    if not lookups:
        return tvm.compile(mod, target=target)
    from tvmq.schedules.lookup import register_pipeline

    with target:
        return tvm.compile(mod, target=target, tir_pipeline=register_pipeline())


def build_conv_kernel(x_shape, w, in_dtype, target, **conv):
    """Compiled conv kernel plus its packed weight and correction (see :func:`conv_func`)."""
    st = strategy_for(target)
    func, wp, corr = conv_func(x_shape, w, in_dtype, st, **conv)
    return build(func, target, st), wp, corr


def build_depthwise_kernel(x_shape, w, in_dtype, target, **conv):
    st = strategy_for(target)
    func, wt, corr = depthwise_func(x_shape, w, in_dtype, st, **conv)
    return build(func, target, st), wt, corr


def build_dense_kernel(m, w_kn, in_dtype, target, bits: int = 8):
    st = strategy_for(target)
    func, wp, corr = dense_func(m, w_kn, in_dtype, st, bits=bits)
    return build(func, target, st), wp, corr
