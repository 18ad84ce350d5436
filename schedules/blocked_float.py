"""Blocked-layout float32 conv/dense computes (TE) and compile-time weight packing (NumPy).

A float register tile computes ``acc[pixel, oc] += x[pixel, ci] * W[ci, oc]`` with one
FMA per ``(pixel, vector of output channels)``: ``x`` is broadcast, ``W``'s output
channels are one contiguous vector. The layouts that feed it without shuffles:

* activations ``[N, C/xb, H, W, xb]`` (NCHW{xb}c): between float layers ``xb`` is the
  layout block (:attr:`~tvmq.schedules.strategy.FloatStrategy.block`); packed from NCHW by
  :func:`pack_activation`, where a small ``C`` (an RGB stem) is one block of ``C``;
* conv weights ``[O/ob, C/xb, KH, KW, xb, ob]`` (:func:`pack_conv_weight`): for one input
  channel, the ``ob`` output channels are contiguous (unlike the integer kernels'
  ``[.., ob, ib]``, whose dot products reduce along the last axis);
* depthwise weights ``[C/b, KH, KW, b]``, dense weights ``[N/ob, K, ob]``;
* outputs ``[N, O/ob, OH, OW, ob]``, unpacked to NCHW in the epilogue block, or kept blocked.

Block names are the contract with :mod:`tvmq.schedules.schedule_float_kernels`; packs and
unpacks share the integer kernels' names (``tvmq_pack_act``, ``tvmq_pad``, ``tvmq_unpack``),
so the epilogue helpers of :mod:`tvmq.schedules.common` treat them alike. Reduction axes of
extent 1 are left out (TVM 0.27's ``compute_at`` binds them to an int32 constant).
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import te, tir
from tvmq.schedules.blocked import (BLOCK_DECODE_W, BLOCK_PACK, BLOCK_PAD, BLOCK_UNPACK,
                                    ceil_div, i64, unpack_rows)

BLOCK_FCONV = "tvmq_fconv"
BLOCK_FDWCONV = "tvmq_fdwconv"
BLOCK_FDENSE = "tvmq_fdense"
FLOAT_KERNEL_BLOCKS = (BLOCK_FCONV, BLOCK_FDWCONV, BLOCK_FDENSE)
#: block annotation: the register tile a kernel's padded output width was computed for
TILE_ATTR = "tvmq.tile"

__all__ = ["BLOCK_FCONV", "BLOCK_FDWCONV", "BLOCK_FDENSE", "FLOAT_KERNEL_BLOCKS",
           "input_block", "pack_activation", "pad_blocked", "conv2d", "depthwise", "dense",
           "pack_conv_weight", "pack_depthwise_weight", "pack_dense_weight", "unpack_nchw",
           "unpack_blocked", "unpack_rows"]


def input_block(c: int, block: int) -> int:
    """Channel block ``xb`` to pack an NCHW input of ``c`` channels into: ``c`` itself when
    it fits one block (an RGB stem reduces over 3 channels, not 8 of which 5 are zero), else
    ``block`` (the tail block zero-padded)."""
    return c if c <= block else block


def padded(width: int, tile: int) -> int:
    """``width`` rounded up to whole tiles."""
    return ceil_div(width, tile) * tile


def _axis(extent: int, name: str):
    """A reduction axis, or the constant 0 for a unit one (see the module docstring)."""
    if extent == 1:
        return None, tir.IntImm("int64", 0)
    ax = te.reduce_axis((0, tir.IntImm("int64", extent)), name)
    return ax, ax


def pack_activation(x: te.Tensor, xb: int, padding, name: str = BLOCK_PACK):
    """NCHW ``x`` -> zero-padded ``[N, ceil(C/xb), H+pt+pb, W+pl+pr, xb]``."""
    n, c, h, w = (int(d) for d in x.shape)
    pt, pl, pb, pr = padding
    zero = tir.const(0.0, x.dtype)

    def f(b, cb, hh, ww, ci):
        ch = cb * xb + ci
        inside = tir.all(hh >= pt, hh < h + pt, ww >= pl, ww < w + pl, ch < c)
        return tir.if_then_else(inside, x[b, tir.min(ch, c - 1), hh - pt, ww - pl], zero)

    return te.compute(i64((n, ceil_div(c, xb), h + pt + pb, w + pl + pr, xb)), f, name=name)


def pad_blocked(x: te.Tensor, padding, name: str = BLOCK_PAD):
    """``[N, CB, H, W, b]`` -> spatially zero-padded copy (contiguous rows, no transpose)."""
    n, cb, h, w, b = (int(d) for d in x.shape)
    pt, pl, pb, pr = padding
    zero = tir.const(0.0, x.dtype)

    def f(bb, c, hh, ww, ci):
        inside = tir.all(hh >= pt, hh < h + pt, ww >= pl, ww < w + pl)
        return tir.if_then_else(inside, x[bb, c, hh - pt, ww - pl, ci], zero)

    return te.compute(i64((n, cb, h + pt + pb, w + pl + pr, b)), f, name=name)


def _tile_attrs(tile) -> dict:
    return {TILE_ATTR: [int(t) for t in tile]} if tile else {}


def right_pad(in_w: int, padding, kw: int, stride: int, dilation: int, out_w: int) -> tuple:
    """``padding`` widened on the right so that ``out_w`` output pixels (a whole number of
    register tiles, more than the real width) read inside the padded row."""
    pt, pl, pb, pr = padding
    need = (out_w - 1) * stride + (kw - 1) * dilation + 1
    return pt, pl, pb, pr + max(0, need - (in_w + pl + pr))


def _check_width(xp, out_w, kw, sw, dw) -> None:
    need = (out_w - 1) * sw + (kw - 1) * dw + 1
    if int(xp.shape[3]) < need:
        raise ValueError(f"padded input row of {int(xp.shape[3])} pixels, {need} needed "
                         f"for {out_w} output pixels (see right_pad)")


def conv2d(xp: te.Tensor, wp: te.Tensor, strides, dilation, out_hw, tile=None,
           groups: int = 1):
    """``[N, O/ob, OH, OWp, ob]`` of a conv over padded blocked ``xp``
    (block ``BLOCK_FCONV``; reduction ``cb, kh, kw, ci``, unit ones left out).

    ``groups > 1``: ``wp`` holds each group's ``C/groups`` input channels (packed from
    ``[O, C/groups, KH, KW]`` like a groups=1 weight), and output block ``o`` reads the
    input blocks of its group; needs ``O/groups`` a multiple of ``ob`` and ``C/groups``
    of the input block ``xb``.

    ``out_hw[1]`` may exceed the real output width: rows are then computed in whole
    register tiles (``tile = (ow, ob_tile)``, recorded on the block for the schedule) over
    an input padded for them (:func:`right_pad`), and the unpack reads the real pixels
    only (:func:`unpack_nchw`, :func:`unpack_blocked`).
    """
    n = int(xp.shape[0])
    ob_n, cb_n, kh_n, kw_n, xb, ob = (int(d) for d in wp.shape)
    (sh, sw), (dh, dw) = strides, dilation
    _check_width(xp, out_hw[1], kw_n, sw, dw)
    axes = [_axis(cb_n, "cb"), _axis(kh_n, "kh"), _axis(kw_n, "kw"), _axis(xb, "ci")]
    red = [a for a, _ in axes if a is not None]
    cb, kh, kw, ci = (v for _, v in axes)

    per_group = ob_n // groups  # output blocks of a group

    def f(b, o, y, x_, oi):
        xcb = cb if groups == 1 else o // per_group * cb_n + cb
        prod = xp[b, xcb, y * sh + kh * dh, x_ * sw + kw * dw, ci] * wp[o, cb, kh, kw, ci, oi]
        return te.sum(prod, axis=red) if red else prod

    return te.compute(i64((n, ob_n, *out_hw, ob)), f, name=BLOCK_FCONV,
                      attrs=_tile_attrs(tile))


def depthwise(xp: te.Tensor, w: te.Tensor, strides, dilation, out_hw, tile=None):
    """Depthwise conv (multiplier 1) on padded ``[N, C/b, Hp, Wp, b]`` with weights
    ``[C/b, KH, KW, b]``: ``[N, C/b, OH, OWp, b]`` (block ``BLOCK_FDWCONV``; ``OWp`` and
    ``tile = (ow,)`` as in :func:`conv2d`)."""
    n, cb_n = (int(d) for d in xp.shape[:2])
    b_n = int(xp.shape[-1])
    _, kh_n, kw_n, _ = (int(d) for d in w.shape)
    (sh, sw), (dh, dw) = strides, dilation
    _check_width(xp, out_hw[1], kw_n, sw, dw)
    axes = [_axis(kh_n, "kh"), _axis(kw_n, "kw")]
    red = [a for a, _ in axes if a is not None]
    kh, kw = (v for _, v in axes)

    def f(b, c, y, x_, ci):
        prod = xp[b, c, y * sh + kh * dh, x_ * sw + kw * dw, ci] * w[c, kh, kw, ci]
        return te.sum(prod, axis=red) if red else prod

    return te.compute(i64((n, cb_n, *out_hw, b_n)), f, name=BLOCK_FDWCONV,
                      attrs=_tile_attrs(tile))


def unpack_nchw(acc: te.Tensor, channels: int, width: int):
    """``[N, O/ob, OH, OWp, ob]`` -> NCHW ``[N, channels, OH, width]`` (``BLOCK_UNPACK``)."""
    n, _, oh, _, ob = (int(d) for d in acc.shape)
    return te.compute(i64((n, channels, oh, width)),
                      lambda b, o, y, x_: acc[b, o // ob, y, x_, o % ob], name=BLOCK_UNPACK)


def unpack_blocked(acc: te.Tensor, width: int):
    """``[N, O/ob, OH, OWp, ob]`` -> the blocked output ``[N, O/ob, OH, width, ob]``."""
    n, obn, oh, _, ob = (int(d) for d in acc.shape)
    return te.compute(i64((n, obn, oh, width, ob)),
                      lambda b, o, y, x_, oi: acc[b, o, y, x_, oi], name=BLOCK_UNPACK)


def dense(x: te.Tensor, wp: te.Tensor):
    """``[M, N/ob, ob]`` of ``x[M, K] @ W`` with ``wp = [N/ob, K, ob]`` (``BLOCK_FDENSE``)."""
    m = int(x.shape[0])
    nb_n, k_n, ob = (int(d) for d in wp.shape)
    k, kv = _axis(k_n, "k")

    def f(i, j, jj):
        prod = x[i, kv] * wp[j, kv, jj]
        return te.sum(prod, axis=[k]) if k is not None else prod

    return te.compute(i64((m, nb_n, ob)), f, name=BLOCK_FDENSE)


# ---- run-time weight packing (TE): weights computed at run time (a codebook's take) -------
def _weight_value(w: te.Tensor, idx, padded_axes):
    """``w[idx]``, zero past the end of the ``padded_axes`` (blocks padded to whole)."""
    limits = [int(w.shape[a]) for a in padded_axes]
    inside = tir.all(*[idx[a] < lim for a, lim in zip(padded_axes, limits)])
    clamped = list(idx)
    for a, lim in zip(padded_axes, limits):
        clamped[a] = tir.min(idx[a], lim - 1)
    return tir.if_then_else(inside, w[tuple(clamped)], tir.const(0.0, w.dtype))


def pack_conv_weight_te(w: te.Tensor, ob: int, xb: int):
    """:func:`pack_conv_weight` of a run-time OIHW tensor, in the kernel (block
    ``BLOCK_DECODE_W``, which the schedules run once, before the conv)."""
    o, c, kh, kw = (int(d) for d in w.shape)
    return te.compute(
        i64((ceil_div(o, ob), ceil_div(c, xb), kh, kw, xb, ob)),
        lambda a, cb, y, x_, ci, oi: _weight_value(w, (a * ob + oi, cb * xb + ci, y, x_),
                                                   (0, 1)),
        name=BLOCK_DECODE_W)


def pack_depthwise_weight_te(w: te.Tensor, b: int):
    """:func:`pack_depthwise_weight` of a run-time ``[C, 1, KH, KW]`` tensor."""
    c, _, kh, kw = (int(d) for d in w.shape)
    return te.compute(i64((c // b, kh, kw, b)),
                      lambda cb, y, x_, ci: w[cb * b + ci, 0, y, x_], name=BLOCK_DECODE_W)


def pack_dense_weight_te(w: te.Tensor, ob: int):
    """:func:`pack_dense_weight` of a run-time ``[K, N]`` tensor."""
    k, n = (int(d) for d in w.shape)
    return te.compute(i64((ceil_div(n, ob), k, ob)),
                      lambda j, kk, jj: _weight_value(w, (kk, j * ob + jj), (1,)),
                      name=BLOCK_DECODE_W)


# ---- compile-time weight packing (NumPy) --------------------------------------------------
def pack_conv_weight(w: np.ndarray, ob: int, xb: int) -> np.ndarray:
    """OIHW float -> ``[O/ob, C/xb, KH, KW, xb, ob]`` (zero-padded to whole blocks)."""
    o, c, kh, kw = w.shape
    op, cp = ceil_div(o, ob) * ob, ceil_div(c, xb) * xb
    full = np.zeros((op, cp, kh, kw), np.float32)
    full[:o, :c] = w
    return np.ascontiguousarray(
        full.reshape(op // ob, ob, cp // xb, xb, kh, kw).transpose(0, 2, 4, 5, 3, 1))


def pack_depthwise_weight(w: np.ndarray, b: int) -> np.ndarray:
    """``[C, 1, KH, KW]`` -> ``[C/b, KH, KW, b]`` (``C % b == 0``)."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(
        w[:, 0].astype(np.float32).reshape(c // b, b, kh, kw).transpose(0, 2, 3, 1))


def pack_dense_weight(w_kn: np.ndarray, ob: int) -> np.ndarray:
    """``[K, N]`` float -> ``[N/ob, K, ob]`` (zero-padded)."""
    k, n = w_kn.shape
    np_ = ceil_div(n, ob) * ob
    full = np.zeros((k, np_), np.float32)
    full[:, :n] = w_kn
    return np.ascontiguousarray(full.reshape(k, np_ // ob, ob).transpose(1, 0, 2))
