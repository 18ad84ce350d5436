"""Blocked-layout integer conv/dense computes shared by every architecture (TE + NumPy packing).

A dot-product instruction computes ``C[ob] += sum_k A[k] * B[ob, k]`` over ``ib`` reduction
lanes. The layouts that feed it without shuffles are:

* activations ``[N, C/ib, H, W, ib]`` (NCHW{ib}c), padded spatially by :func:`pack_activation`;
* weights ``[O/ob, C/ib, KH, KW, ob, ib]``, packed once at compile time (:func:`pack_weight`);
* accumulators ``[N, O/ob, OH, OW, ob]`` (NCHW{ob}c), unpacked to NCHW in the epilogue
  block, where the requantization that follows gets inlined.

The operand signedness the instruction wants (x86: u8 activations; Arm sdot/smull: s8) may
differ from the graph's: :func:`pack_activation` then shifts by ``shift`` (+128 or -128) and the
epilogue adds ``-shift * sum(W[o])``, which is exact. Block names are the contract with the
schedules (``BLOCK_*``).
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import te, tir

BLOCK_PACK = "tvmq_pack_act"
BLOCK_CONV = "tvmq_conv_blocked"
BLOCK_DENSE = "tvmq_dense_blocked"
BLOCK_UNPACK = "tvmq_unpack"
BLOCK_DWCONV = "tvmq_dwconv"
BLOCK_PAD = "tvmq_pad"
BLOCK_DECODE_W = "tvmq_decode_w"


def i64(shape) -> list:
    """Shape as int64 immediates, like ``LegalizeOps`` writes them (``FuseTIR`` compares)."""
    return [tir.IntImm("int64", int(d)) for d in shape]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def shift_for(in_dtype: str, act_dtype: str) -> int:
    """Value added to activations so ``in_dtype`` values fit the instruction's ``act_dtype``."""
    if in_dtype == act_dtype:
        return 0
    return 128 if act_dtype == "uint8" else -128


def pack_activation(x: te.Tensor, ib: int, padding, act_dtype: str, pad_value: int = 0,
                    name: str = BLOCK_PACK):
    """NCHW ``x`` -> padded ``[N, ceil(C/ib), H+pt+pb, W+pl+pr, ib]`` in ``act_dtype``.

    Spatial padding holds ``pad_value`` (shifted like the data); channels past ``C`` meet zero
    weights, so their value does not matter.
    """
    n, c, h, w = (int(d) for d in x.shape)
    pt, pl, pb, pr = padding
    shift = shift_for(str(x.dtype), act_dtype)
    zero = tir.const(shift + int(pad_value), "int32")
    shift = tir.const(shift, "int32")

    def f(b, cb, hh, ww, ci):
        ch = cb * ib + ci
        inside = tir.all(hh >= pt, hh < h + pt, ww >= pl, ww < w + pl, ch < c)
        val = x[b, tir.min(ch, c - 1), hh - pt, ww - pl].astype("int32") + shift
        return tir.if_then_else(inside, val, zero).astype(act_dtype)

    return te.compute(i64((n, ceil_div(c, ib), h + pt + pb, w + pl + pr, ib)), f, name=name)


#: annotation of a conv/dense kernel block whose int8 weights reach -128: the schedule then
#: uses the strategy's ``intrin_full`` (:meth:`tvmq.schedules.strategy.Strategy.kernel_intrin`)
WEIGHT_MIN_ATTR = "tvmq.weight_reaches_min"
#: annotation of a conv/dense kernel block whose weight pairs fit an int16 sum with any u8
#: activations (:func:`pairs_fit_int16`): the schedule may use the strategy's
#: ``intrin_pairs`` (x86 ``vpmaddubsw``, which saturates pair sums at int16)
WEIGHT_PAIRS_ATTR = "tvmq.weight_pairs_fit_int16"
INT16_MAX = 32767


def pair_sum_max(wp: np.ndarray) -> int:
    """Largest ``|w0 * a0 + w1 * a1| / a_max`` of packed weights ``wp`` (``[..., ib]``, the
    reduction block last, ``ib`` even) over unsigned activations ``0 <= a <= a_max``: the
    larger same-sign sum of magnitudes of a pair of neighbouring reduction elements
    ``(2j, 2j+1)``, which ``vpmaddubsw`` adds in int16."""
    w = np.asarray(wp, np.int32)
    if w.size == 0 or w.shape[-1] % 2:
        return 0 if w.size == 0 else 1 << 16
    pos, neg = np.maximum(w, 0), np.maximum(-w, 0)
    return int(max((pos[..., 0::2] + pos[..., 1::2]).max(),
                   (neg[..., 0::2] + neg[..., 1::2]).max()))


def pairs_fit_int16(wp: np.ndarray, act_max: int = 255) -> bool:
    """Whether every pair sum of ``wp`` (see :func:`pair_sum_max`) with activations in
    ``[0, act_max]`` fits int16 without saturating: true for weights in [-64, 64] (7-bit
    weights, ``reduce_range``; ``2 * 255 * 64 = 32640``), for any int8 weights when
    ``act_max <= 127``, and for many layers in between."""
    return act_max * pair_sum_max(wp) <= INT16_MAX


def weight_attrs(wp, pairs: bool = False) -> dict | None:
    """Block annotations of a kernel over int8 weights ``wp`` (numpy, packed: the reduction
    block last). ``pairs``: also mark weights whose pairs fit int16
    (:data:`WEIGHT_PAIRS_ATTR`; only for strategies that use it, so that other targets'
    kernels, and the tuning records keyed by them, stay as they were)."""
    wp = np.asarray(wp)
    attrs = {}
    if wp.dtype == np.int8 and (wp == -128).any():
        attrs[WEIGHT_MIN_ATTR] = 1
    if pairs and pairs_fit_int16(wp):
        attrs[WEIGHT_PAIRS_ATTR] = 1
    return attrs or None


def conv2d_blocked(xp: te.Tensor, wp: te.Tensor, strides, dilation, out_hw, acc="int32",
                   attrs: dict | None = None):
    """``[N, OB, OH, OW, ob]`` accumulators of a blocked conv (block ``BLOCK_CONV``).

    ``xp`` is ``[N, C/xb, Hp, Wp, xb]`` with ``xb`` the intrinsic depth ``ib`` (packed from
    NCHW) or a multiple of it (the network's blocked layout, ``xb = ob``). Reduction axes
    ``cb[, kh, kw][, cs], ci``: ``kh, kw`` only for kernels larger than 1x1, ``cs`` (the
    ``xb / ib`` sub-blocks) only when ``xb > ib``; unit axes would trip TVM 0.27's
    ``compute_at`` (it binds them to an int32 constant).
    """
    n, cb_n, _, _, xb = (int(d) for d in xp.shape)
    ob_n, _, kh_n, kw_n, ob, ib = (int(d) for d in wp.shape)
    (sh, sw), (dh, dw) = strides, dilation
    i64c = lambda v: tir.IntImm("int64", v)  # noqa: E731
    cb = te.reduce_axis((0, i64c(cb_n)), "cb")
    ci = te.reduce_axis((0, i64c(ib)), "ci")
    axes = [cb]
    kh = kw = cs = i64c(0)
    if (kh_n, kw_n) != (1, 1):
        kh = te.reduce_axis((0, i64c(kh_n)), "kh")
        kw = te.reduce_axis((0, i64c(kw_n)), "kw")
        axes += [kh, kw]
    if xb > ib:
        cs = te.reduce_axis((0, i64c(xb // ib)), "cs")
        axes.append(cs)
    return te.compute(
        i64((n, ob_n, *out_hw, ob)),
        lambda b, o, y, x_, oi: te.sum(
            xp[b, cb, y * sh + kh * dh, x_ * sw + kw * dw, cs * ib + ci].astype(acc)
            * wp[o, cb * (xb // ib) + cs, kh, kw, oi, ci].astype(acc), axis=[*axes, ci]),
        name=BLOCK_CONV, attrs=attrs)


def decode_subbyte_weight(wq: te.Tensor, bits: int, ob: int):
    """Blocked weights stored ``bits`` wide (see :func:`pack_subbyte_blocked`) -> int8.

    ``wq`` is ``[..., ob/per, ib]`` int8 with ``per = 8 // bits`` values a byte; the result is
    the ``[..., ob, ib]`` tensor the dot-product kernels read (block ``BLOCK_DECODE_W``).
    Value ``oi`` sits in byte ``oi % g`` (``g = ob / per``) at bit ``bits * (oi // g)``;
    it is sign-extended by shifting it to the top of the byte and arithmetically back.
    The schedules compute this block per register tile, inside the reduction loop
    (:func:`tvmq.schedules.tiling.schedule_decode`), so the int8 weights never exist whole.
    """
    *lead, g, ib = (int(d) for d in wq.shape)
    if ob % (8 // bits) or g != ob // (8 // bits):
        raise ValueError(f"{bits}-bit blocked weights need ob % {8 // bits} == 0, got ob={ob}")

    def f(*idx):
        *outer, oi, ci = idx
        byte = wq[(*outer, tir.floormod(oi, g), ci)]
        left = (tir.const(8 - bits, "int64") - tir.const(bits, "int64") * tir.floordiv(oi, g))
        return tir.shift_right(tir.shift_left(byte, left.astype("int8")),
                               tir.const(8 - bits, "int8"))

    return te.compute(i64((*lead, ob, ib)), f, name=BLOCK_DECODE_W)


def weight_operand(wp_np: np.ndarray, ob: int, bits: int = 8):
    """(stored array, placeholder, int8 tensor the kernel reads) of blocked weights.

    ``bits < 8``: stored ``bits`` wide and decoded inside the kernel: 2 and 4 bits by
    :func:`pack_subbyte_blocked`, 3, 5, 6 and 7 in byte planes
    (:func:`tvmq.schedules.blocked_planar.pack_planar_blocked`); else stored as is.
    """
    if bits >= 8:
        wp = te.placeholder(i64(wp_np.shape), "int8", "w_packed")
        return wp_np, wp, wp
    if 8 % bits:
        from tvmq.schedules import blocked_planar as P

        ib = int(wp_np.shape[-1])
        stored = P.pack_planar_blocked(wp_np, bits)
        wq = te.placeholder(i64(stored.shape), "int8", f"w_int{bits}")
        return stored, wq, P.decode_planar_weight(wq, bits, ob, ib, BLOCK_DECODE_W)
    stored = pack_subbyte_blocked(wp_np, bits)
    wq = te.placeholder(i64(stored.shape), "int8", f"w_int{bits}")
    return stored, wq, decode_subbyte_weight(wq, bits, ob)


def unpack_nchw(acc: te.Tensor, channels: int, corr: te.Tensor | None):
    """NCHW{ob}c accumulators -> NCHW int32, plus the per-channel shift correction."""
    n, _, oh, ow, ob = (int(d) for d in acc.shape)

    def f(b, o, y, x_):
        v = acc[b, o // ob, y, x_, o % ob]
        return v + corr[o] if corr is not None else v

    return te.compute(i64((n, channels, oh, ow)), f, name=BLOCK_UNPACK)


def dense_blocked(xp: te.Tensor, wp: te.Tensor, acc="int32", attrs: dict | None = None):
    """``[M, NB, ob]`` accumulators of ``x[M, Kp] @ W`` with ``wp = [NB, Kp/ib, ob, ib]``."""
    m = int(xp.shape[0])
    nb_n, kb_n, ob, ib = (int(d) for d in wp.shape)
    kb = te.reduce_axis((0, tir.IntImm("int64", kb_n)), "kb")
    ki = te.reduce_axis((0, tir.IntImm("int64", ib)), "ki")
    return te.compute(
        i64((m, nb_n, ob)),
        lambda i, j, jj: te.sum(xp[i, kb * ib + ki].astype(acc) * wp[j, kb, jj, ki].astype(acc),
                                axis=[kb, ki]),
        name=BLOCK_DENSE, attrs=attrs)


def pack_rows(x: te.Tensor, ib: int, act_dtype: str):
    """``[M, K]`` -> ``[M, ceil(K/ib)*ib]`` in ``act_dtype`` (zero-padded, shifted)."""
    m, k = (int(d) for d in x.shape)
    shift = tir.const(shift_for(str(x.dtype), act_dtype), "int32")
    kp = ceil_div(k, ib) * ib
    return te.compute(
        i64((m, kp)),
        lambda i, j: tir.if_then_else(j < k, x[i, tir.min(j, k - 1)].astype("int32") + shift,
                                      shift).astype(act_dtype),
        name=BLOCK_PACK)


def unpack_rows(acc: te.Tensor, cols: int, corr: te.Tensor | None):
    m, _, ob = (int(d) for d in acc.shape)

    def f(i, j):
        v = acc[i, j // ob, j % ob]
        return v + corr[j] if corr is not None else v

    return te.compute(i64((m, cols)), f, name=BLOCK_UNPACK)


def dw_split(strides, dilation) -> int:
    """De-interleave factor of a depthwise input: the W stride when it is > 1 (undilated)."""
    return int(strides[1]) if int(strides[1]) > 1 and int(dilation[1]) == 1 else 1


def pad_nchw(x: te.Tensor, padding, act_dtype: str, pad_value: int = 0, split_w: int = 1):
    """Spatially padded NCHW copy in ``act_dtype`` (depthwise input), padding ``pad_value``.

    ``split_w > 1`` (the conv's horizontal stride) stores the padded rows de-interleaved,
    ``[N, C, Hp, split_w, ceil(Wp / split_w)]`` with ``[.., p, j] = row[j * split_w + p]``, so
    a strided conv reads each kernel tap's inputs contiguously (no gathers).
    """
    n, c, h, w = (int(d) for d in x.shape)
    pt, pl, pb, pr = padding
    shift = tir.const(shift_for(str(x.dtype), act_dtype), "int32")
    fill = tir.const(shift_for(str(x.dtype), act_dtype) + int(pad_value), "int32")
    wp = w + pl + pr

    def value(b, ch, hh, ww):
        inside = tir.all(hh >= pt, hh < h + pt, ww >= pl, ww < w + pl)
        val = x[b, ch, hh - pt, tir.min(ww, w + pl - 1) - pl].astype("int32") + shift
        return tir.if_then_else(inside, val, fill).astype(act_dtype)

    if split_w <= 1:
        return te.compute(i64((n, c, h + pt + pb, wp)), value, name=BLOCK_PAD)
    return te.compute(i64((n, c, h + pt + pb, split_w, ceil_div(wp, split_w))),
                      lambda b, ch, hh, p, j: value(b, ch, hh, j * split_w + p), name=BLOCK_PAD)


def depthwise_nchw(xp: te.Tensor, w: te.Tensor, strides, dilation, out_hw, corr=None):
    """Depthwise conv (multiplier 1) on a padded NCHW input, int32 (block ``BLOCK_DWCONV``).

    ``xp`` may be de-interleaved along W (5-D, see :func:`pad_nchw` ``split_w``; needs
    ``split_w`` equal to the stride and no horizontal dilation).
    """
    n, c = (int(d) for d in xp.shape[:2])
    _, _, kh_n, kw_n = (int(d) for d in w.shape)
    (sh, sw), (dh, dw) = strides, dilation
    kh = te.reduce_axis((0, tir.IntImm("int64", kh_n)), "kh")
    kw = te.reduce_axis((0, tir.IntImm("int64", kw_n)), "kw")
    if len(xp.shape) == 5:
        if int(xp.shape[3]) != sw or dw != 1:
            raise ValueError("a W-de-interleaved input needs split_w == stride and dilation 1")

        def tap(b, ch, y, x_):
            return xp[b, ch, y * sh + kh * dh, tir.floormod(kw, sw), x_ + tir.floordiv(kw, sw)]
    else:
        def tap(b, ch, y, x_):
            return xp[b, ch, y * sh + kh * dh, x_ * sw + kw * dw]
    out = te.compute(
        i64((n, c, *out_hw)),
        lambda b, ch, y, x_: te.sum(
            tap(b, ch, y, x_).astype("int32") * w[ch, 0, kh, kw].astype("int32"), axis=[kh, kw]),
        name=BLOCK_DWCONV)
    if corr is None:
        return out
    return te.compute(out.shape, lambda b, ch, y, x_: out[b, ch, y, x_] + corr[ch],
                      name=BLOCK_UNPACK)


# ---- whole-network blocked layout (NCHW{ob}c between layers) ------------------------------
def blocked_layout(ob: int) -> str:
    """The activation layout integer layers exchange: ``NCHW{ob}c``, ``ob`` the kernels'
    output block (one accumulator vector), so a conv's epilogue stores whole vectors."""
    return f"NCHW{ob}c"


def pad_blocked(x: te.Tensor, padding, act_dtype: str, pad_value: int = 0, split_w: int = 1,
                name: str = BLOCK_PACK):
    """``[N, CB, H, W, blk]`` -> spatially padded (and shifted to ``act_dtype``) copy.

    The cheap counterpart of :func:`pack_activation` when the activations are already
    blocked: contiguous rows, no transpose. ``split_w > 1`` de-interleaves W like
    :func:`pad_nchw` (``[N, CB, Hp, split_w, ceil(Wp / split_w), ib]``).
    """
    n, cb, h, w, ib = (int(d) for d in x.shape)
    pt, pl, pb, pr = padding
    shift = tir.const(shift_for(str(x.dtype), act_dtype), "int32")
    fill = tir.const(shift_for(str(x.dtype), act_dtype) + int(pad_value), "int32")
    wp = w + pl + pr

    def value(b, c, hh, ww, ci):
        inside = tir.all(hh >= pt, hh < h + pt, ww >= pl, ww < w + pl)
        val = x[b, c, hh - pt, tir.min(ww, w + pl - 1) - pl, ci].astype("int32") + shift
        return tir.if_then_else(inside, val, fill).astype(act_dtype)

    if split_w <= 1:
        return te.compute(i64((n, cb, h + pt + pb, wp, ib)), value, name=name)
    return te.compute(i64((n, cb, h + pt + pb, split_w, ceil_div(wp, split_w), ib)),
                      lambda b, c, hh, p, j, ci: value(b, c, hh, j * split_w + p, ci), name=name)


def unpack_blocked(acc: te.Tensor, channels: int, corr: te.Tensor | None):
    """Accumulators ``[N, O/ob, OH, OW, ob]`` as the blocked output (``O % ob == 0``), plus the
    per-channel shift correction: the requantization that follows reads them in place."""
    ob = int(acc.shape[-1])
    if channels % ob:
        raise ValueError(f"blocked output needs channels % {ob} == 0, got {channels}")

    def f(b, o, y, x_, oi):
        v = acc[b, o, y, x_, oi]
        return v + corr[o * ob + oi] if corr is not None else v

    return te.compute(acc.shape, f, name=BLOCK_UNPACK)


def depthwise_pixels(ow: int, cap: int) -> int:
    """Output pixels one depthwise vector covers: the largest divisor of ``ow`` up to ``cap``."""
    return max(d for d in range(1, min(ow, cap) + 1) if ow % d == 0)


def pack_depthwise_weight(w: np.ndarray, ib: int, pixels: int) -> np.ndarray:
    """``[C, 1, KH, KW]`` -> ``[C/blk, KH, KW, pixels * blk]`` (``ib`` here: the layout's
    channel block): each tap's channel weights repeated for ``pixels`` pixels, so one
    contiguous load feeds a ``(pixel, channel)`` vector."""
    c, _, kh, kw = w.shape
    blk = w[:, 0].reshape(c // ib, ib, kh, kw).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(np.tile(blk, (1, 1, 1, pixels)))


def depthwise_nchwc(xp: te.Tensor, w_rep: te.Tensor, strides, dilation, out_hw, corr=None):
    """Depthwise conv on padded ``[N, C/blk, Hp, Wp, blk]`` (or W-de-interleaved) activations.

    ``w_rep`` from :func:`pack_depthwise_weight`; block ``BLOCK_DWCONV`` with loops
    ``b, cb, y, x, ci, kh, kw``; its schedule vectorizes ``(x mod pixels, ci)``: every
    operand is then one contiguous vector (stride-2 inputs come de-interleaved).
    """
    n, cb_n = (int(d) for d in xp.shape[:2])
    ib = int(xp.shape[-1])
    _, kh_n, kw_n, lanes = (int(d) for d in w_rep.shape)
    pixels = lanes // ib
    (sh, sw), (dh, dw) = strides, dilation
    kh = te.reduce_axis((0, tir.IntImm("int64", kh_n)), "kh")
    kw = te.reduce_axis((0, tir.IntImm("int64", kw_n)), "kw")
    split = len(xp.shape) == 6

    def tap(b, c, y, x_, ci):
        if split:
            return xp[b, c, y * sh + kh * dh, tir.floormod(kw, sw), x_ + tir.floordiv(kw, sw), ci]
        return xp[b, c, y * sh + kh * dh, x_ * sw + kw * dw, ci]

    out = te.compute(
        i64((n, cb_n, *out_hw, ib)),
        lambda b, c, y, x_, ci: te.sum(
            tap(b, c, y, x_, ci).astype("int32")
            * w_rep[c, kh, kw, tir.floormod(x_, pixels) * ib + ci].astype("int32"),
            axis=[kh, kw]),
        name=BLOCK_DWCONV)
    if corr is None:
        return out
    return te.compute(out.shape, lambda b, c, y, x_, ci: out[b, c, y, x_, ci] + corr[c * ib + ci],
                      name=BLOCK_UNPACK)


#: taps one transposing dot product covers (``vpermb`` + ``vpdpbusd``: 4 pixels of a row)
DW_DOT_TAPS = 4


def depthwise_dot_groups(kw: int) -> int:
    """Groups of ``DW_DOT_TAPS`` horizontal taps a ``kw``-wide depthwise kernel takes."""
    return ceil_div(kw, DW_DOT_TAPS)


def depthwise_dot_padding(padding, in_w: int, kw: int, stride_w: int, out_w: int):
    """``padding`` with the right edge widened so every 4-tap group of the last output pixel
    reads inside the padded row (the extra taps have zero weights)."""
    pt, pl, pb, pr = padding
    need = (out_w - 1) * stride_w + DW_DOT_TAPS * depthwise_dot_groups(kw)
    return pt, pl, pb, pr + max(0, need - (in_w + pl + pr))


def pack_depthwise_weight_dot(w: np.ndarray, ib: int) -> np.ndarray:
    """``[C, 1, KH, KW]`` -> ``[C/ib, KH, G, ib, 4]``: per channel lane the 4 taps of one
    group, zero past ``KW`` (the operand of a 4-deep per-lane dot product)."""
    c, _, kh, kw = w.shape
    g = depthwise_dot_groups(kw)
    wz = np.zeros((c, kh, g * DW_DOT_TAPS), np.int8)
    wz[:, :, :kw] = w[:, 0]
    blk = wz.reshape(c // ib, ib, kh, g, DW_DOT_TAPS).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(blk)


def depthwise_nchwc_dot(xp: te.Tensor, w4: te.Tensor, strides, dilation, out_hw, corr=None):
    """Depthwise conv on padded ``[N, C/ib, Hp, Wp, ib]`` activations as 4-tap dot products.

    ``w4`` from :func:`pack_depthwise_weight_dot`; reduction loops ``kh, g, k`` (tap
    ``4g + k`` of a row). With ``(ci, k)`` innermost, one output pixel's 16 channels read the
    64 contiguous bytes of 4 input pixels: a byte transpose turns them into per-lane 4-tap
    operands of one ``u8 x s8`` dot product (block ``BLOCK_DWCONV``, 8 loops). Needs no
    horizontal dilation and a row padded by :func:`depthwise_dot_padding`.
    """
    n, cb_n = (int(d) for d in xp.shape[:2])
    ib = int(xp.shape[-1])
    _, kh_n, g_n, _, taps = (int(d) for d in w4.shape)
    (sh, sw), (dh, dw) = strides, dilation
    if int(dw) != 1:
        raise ValueError("4-tap depthwise dot products need horizontal dilation 1")
    kh = te.reduce_axis((0, tir.IntImm("int64", kh_n)), "kh")
    g = te.reduce_axis((0, tir.IntImm("int64", g_n)), "g")
    k = te.reduce_axis((0, tir.IntImm("int64", taps)), "k")
    out = te.compute(
        i64((n, cb_n, *out_hw, ib)),
        lambda b, c, y, x_, ci: te.sum(
            xp[b, c, y * sh + kh * dh, x_ * sw + g * taps + k, ci].astype("int32")
            * w4[c, kh, g, ci, k].astype("int32"),
            axis=[kh, g, k]),
        name=BLOCK_DWCONV)
    if corr is None:
        return out
    return te.compute(out.shape, lambda b, c, y, x_, ci: out[b, c, y, x_, ci] + corr[c * ib + ci],
                      name=BLOCK_UNPACK)


def depthwise_blocked_plan(w: np.ndarray, ib: int, strides, dilation, padding, in_w: int,
                           out_w: int, dw_pixels: int, dot: bool):
    """``(padding, split_w, packed weights, compute)`` of a blocked-layout depthwise conv:
    4-tap dot products (:func:`depthwise_nchwc_dot`) when ``dot`` and the kernel allows,
    else per-tap multiply-adds (:func:`depthwise_nchwc`)."""
    if dot and int(dilation[1]) == 1:
        pads = depthwise_dot_padding(padding, in_w, w.shape[3], int(strides[1]), out_w)
        return pads, 1, pack_depthwise_weight_dot(w, ib), depthwise_nchwc_dot
    return (padding, dw_split(strides, dilation),
            pack_depthwise_weight(w, ib, depthwise_pixels(out_w, dw_pixels)), depthwise_nchwc)


# ---- compile-time weight packing (NumPy) --------------------------------------------------
def pack_weight(w: np.ndarray, ob: int, ib: int) -> np.ndarray:
    """OIHW int8 -> ``[O/ob, C/ib, KH, KW, ob, ib]`` (zero-padded to whole blocks)."""
    o, c, kh, kw = w.shape
    op, cp = ceil_div(o, ob) * ob, ceil_div(c, ib) * ib
    full = np.zeros((op, cp, kh, kw), w.dtype)
    full[:o, :c] = w
    return np.ascontiguousarray(
        full.reshape(op // ob, ob, cp // ib, ib, kh, kw).transpose(0, 2, 4, 5, 1, 3))


def pack_subbyte_blocked(wp: np.ndarray, bits: int) -> np.ndarray:
    """Blocked int8 weights ``[..., ob, ib]`` holding ``bits``-wide values -> ``[..., ob/per, ib]``.

    Byte ``(j, ci)`` holds ``w[h * g + j, ci]`` in bits ``[bits*h, bits*(h+1))`` for
    ``h < per = 8 // bits``, ``g = ob / per``: a vector of ``g * ib`` bytes decodes into ``per``
    contiguous vectors with two shifts each (:func:`decode_subbyte_weight`).
    """
    per = 8 // bits
    *lead, ob, ib = wp.shape
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if ob % per:
        raise ValueError(f"{bits}-bit blocked weights need ob % {per} == 0, got ob={ob}")
    if wp.min(initial=0) < lo or wp.max(initial=0) > hi:
        raise ValueError(f"weights outside the int{bits} range [{lo}, {hi}]")
    g = ob // per
    u = (wp.astype(np.int16) & ((1 << bits) - 1)).reshape(*lead, per, g, ib)
    out = np.zeros((*lead, g, ib), np.int16)
    for h in range(per):
        out |= u[..., h, :, :] << (bits * h)
    return np.ascontiguousarray(out.astype(np.uint8).view(np.int8))


def pack_dense_weight(w_kn: np.ndarray, ob: int, ib: int) -> np.ndarray:
    """``[K, N]`` int8 -> ``[N/ob, K/ib, ob, ib]`` (zero-padded)."""
    k, n = w_kn.shape
    kp, np_ = ceil_div(k, ib) * ib, ceil_div(n, ob) * ob
    full = np.zeros((kp, np_), w_kn.dtype)
    full[:k, :n] = w_kn
    return np.ascontiguousarray(full.reshape(kp // ib, ib, np_ // ob, ob).transpose(2, 0, 3, 1))


def shift_correction(w: np.ndarray, shift: int, out_axis: int = 0) -> np.ndarray | None:
    """``-shift * sum(W)`` per output channel (int32), or None when ``shift == 0``."""
    if shift == 0:
        return None
    axes = tuple(i for i in range(w.ndim) if i != out_axis)
    return (-shift * w.astype(np.int64).sum(axis=axes)).astype(np.int32)
