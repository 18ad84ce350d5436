"""Standalone float32 kernels (one PrimFunc each), for tests, benchmarks and tuning tasks.

The same computes :class:`tvmq.schedules.BlockFloatOps` emits inside a model, built alone:
NCHW (or ``NCHW{block}c``) input, weights packed now, an optional fused epilogue (bias,
ReLU, residual add), scheduled by :mod:`tvmq.schedules.schedule_float_kernels`.
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import te, tir, tvm
from tvmq.schedules import blocked_float as F
from tvmq.schedules.strategy import FloatStrategy, float_strategy_for


def out_hw(h, w, k, strides, padding, dilation) -> tuple[int, int]:
    (kh, kw), (sh, sw), (dh, dw) = k, strides, dilation
    pt, pl, pb, pr = padding
    return ((h + pt + pb - dh * (kh - 1) - 1) // sh + 1,
            (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def _epilogue(out, channel_of, bias, relu: bool, residual: bool):
    """``out (+ bias[c]) (+ residual) (relu)`` as separate TE stages, like FuseOps fuses
    them after the kernel; returns ``(tensor, extra placeholders)``."""
    extra = []
    if bias is not None:
        bt = te.placeholder(F.i64(bias.shape), "float32", "bias")
        extra.append(bt)
        out = te.compute(out.shape, lambda *i: out(*i) + bt[channel_of(i)], name="bias_add")
    if residual:
        rt = te.placeholder(out.shape, "float32", "residual")
        extra.append(rt)
        out = te.compute(out.shape, lambda *i: out(*i) + rt(*i), name="residual_add")
    if relu:
        out = te.compute(out.shape, lambda *i: tir.max(out(*i), tir.const(0.0, "float32")),
                         name="relu")
    return out, extra


def _channel_fn(blocked: bool, block: int):
    return (lambda i: i[1] * block + i[4]) if blocked else (lambda i: i[1])


def conv_func(x_shape, w: np.ndarray, fs: FloatStrategy, strides=(1, 1), padding=(0,) * 4,
              dilation=(1, 1), layout: str = "NCHW", bias=None, relu=False, residual=False,
              tile=None, groups: int = 1):
    """(PrimFunc, packed weight) of a groups=1 float conv; ``layout="blocked"``: input and
    output ``NCHW{fs.block}c`` (``x_shape`` still NCHW). Arguments: ``x, w, [bias],
    [residual], out``. ``tile``: ``(ow, ob_tile)`` register tile (default: chosen for ``fs``)."""
    from tvmq.schedules.schedule_float_kernels import conv_tile

    n, c, h, wd = x_shape
    blocked = layout != "NCHW"
    hw = out_hw(h, wd, w.shape[2:], strides, padding, dilation)
    # an input copied anyway (packed or padded) takes extra columns for whole tiles
    tile = tile or conv_tile(hw[1], -(-w.shape[0] // groups // fs.block), fs,
                             divisors_only=blocked and not any(padding))
    owp = F.padded(hw[1], tile[0])
    padding = F.right_pad(wd, padding, w.shape[3], strides[1], dilation[1], owp)
    if blocked:
        x = te.placeholder(F.i64((n, c // fs.block, h, wd, fs.block)), "float32", "x")
        xp, xb = (F.pad_blocked(x, padding) if any(padding) else x), fs.block
    else:
        x = te.placeholder(F.i64(x_shape), "float32", "x")
        xb = F.input_block(w.shape[1], fs.block)  # a group's input channels
        xp = F.pack_activation(x, xb, padding)
    wp_np = F.pack_conv_weight(w, fs.block, xb)
    wp = te.placeholder(F.i64(wp_np.shape), "float32", "w_packed")
    acc = F.conv2d(xp, wp, strides, dilation, (hw[0], owp), tile, groups=groups)
    out = F.unpack_blocked(acc, hw[1]) if blocked else F.unpack_nchw(acc, w.shape[0], hw[1])
    out, extra = _epilogue(out, _channel_fn(blocked, fs.block), bias, relu, residual)
    return te.create_prim_func([x, wp, *extra, out]), wp_np


def depthwise_func(x_shape, w: np.ndarray, fs: FloatStrategy, strides=(1, 1),
                   padding=(0,) * 4, dilation=(1, 1), layout: str = "NCHW", bias=None,
                   relu=False, residual=False, tile=None):
    """(PrimFunc, packed weight) of a depthwise (multiplier 1) float conv, ``C % block == 0``."""
    from tvmq.schedules.schedule_float_kernels import depthwise_tile

    n, c, h, wd = x_shape
    blocked = layout != "NCHW"
    hw = out_hw(h, wd, w.shape[2:], strides, padding, dilation)
    tile = tile or depthwise_tile(hw[1], fs, divisors_only=blocked and not any(padding))
    owp = F.padded(hw[1], tile[0])
    padding = F.right_pad(wd, padding, w.shape[3], strides[1], dilation[1], owp)
    if blocked:
        x = te.placeholder(F.i64((n, c // fs.block, h, wd, fs.block)), "float32", "x")
        xp = F.pad_blocked(x, padding) if any(padding) else x
    else:
        x = te.placeholder(F.i64(x_shape), "float32", "x")
        xp = F.pack_activation(x, fs.block, padding)
    w_np = F.pack_depthwise_weight(w, fs.block)
    wt = te.placeholder(F.i64(w_np.shape), "float32", "w_packed")
    acc = F.depthwise(xp, wt, strides, dilation, (hw[0], owp), tile)
    out = F.unpack_blocked(acc, hw[1]) if blocked else F.unpack_nchw(acc, c, hw[1])
    out, extra = _epilogue(out, _channel_fn(blocked, fs.block), bias, relu, residual)
    return te.create_prim_func([x, wt, *extra, out]), w_np


def dense_func(m: int, w_kn: np.ndarray, fs: FloatStrategy, bias=None, relu=False):
    """(PrimFunc, packed weight) of ``x[m, K] @ w_kn`` (+ bias, ReLU)."""
    k, n = w_kn.shape
    x = te.placeholder(F.i64((m, k)), "float32", "x")
    wp_np = F.pack_dense_weight(w_kn, fs.block)
    wp = te.placeholder(F.i64(wp_np.shape), "float32", "w_packed")
    out = F.unpack_rows(F.dense(x, wp), n, None)
    out, extra = _epilogue(out, lambda i: i[1], bias, relu, False)
    return te.create_prim_func([x, wp, *extra, out]), wp_np


def build(func, target, fs: FloatStrategy | None = None):
    """Schedule and compile one float kernel PrimFunc for ``target``."""
    from tvmq.schedules.schedule_float_kernels import schedule

    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    fs = fs or float_strategy_for(target)
    return tvm.compile(tvm.IRModule({"main": schedule(func, fs)}), target=target)
