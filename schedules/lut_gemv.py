"""Activation-table GEMV (T-MAC's form, made exact) for batch-1 integer dense layers with few
distinct weight values (a codebook of K <= 16 entries).

T-MAC (microsoft/T-MAC, ``python/t_mac/ops/qgemm.py``, ``intrins/lut_ctor.cc``, ``tbl.cc``)
splits *uniform* b-bit weights into b bit planes; for each group of ``g = 4`` activations it
precomputes the 16 sums of every subset of the group (one table per group, built once per
call), and a plane's 4 weight bits of a group index that table with one byte shuffle
(``pshufb``/``tbl``), for a vector of output channels at a time. Its tables are quantized
to int8 with a per-call scale (lossy), which an integer path cannot accept.

A DGMS codebook is not uniform: ``w = table[i]`` is no linear function of the bits of ``i``,
so T-MAC's per-bit-plane sums cannot be weighted by powers of two. What does apply, exactly,
is one plane per *nonzero codebook value* ``v`` (at most K planes, K-1 when the table holds
0)::

    y[n] = sum_m a[m] w[m, n] = sum_v v * sum_m a[m] [w[m, n] == v]

and ``sum_m a[m] [w[m, n] == v]`` is T-MAC's one-plane sum: per group ``q`` of 4
activations, ``S_q[pattern]``, the 4-bit ``pattern`` being which of the group's 4 weights
have ``v``'s index. The weight is stored as T-MAC stores it, the ``b = log2 K`` bit planes
of the indices, 4 weights a nibble (``b`` bits a weight, as the direct kernel's codebook);
a value's pattern is the AND of the index bit planes, each complemented where the value's
index has a 0 bit (one ``vpternlog`` a bit), computed once per group for every plane.
(T-MAC's bit planes taken over the int8 *values* would be exact too, with up to 8 planes
weighted by powers of two, but need 8 bits a weight stored and more planes for K <= 8.)
To stay exact with byte tables, each uint8 activation is split into nibbles,
``a = 16 a_hi + a_lo``: a subset sum of 4 nibbles is at most 60 and fits a byte, so each
group has two 16-byte tables (``lo``, ``hi``) and nothing is rounded. The sums are
accumulated in uint8 over 4 groups (<= 240), in uint16 over up to 256 such chunks
(<= 61440), then in int32 with the plane's value and 1 or 16: every step provably in range,
so the result equals the direct kernel's bit for bit. Activations are shifted to uint8
like the x86 kernels' (``+128`` for int8 inputs) and the same ``-128 * sum(W)`` correction
is added back.

The lookups are written as loads of a per-group 16-entry local table at an index masked to
``[0, 16)``; :class:`tvmq.schedules.lookup.LowerByteLookups` (tvmq's TIR pipeline) turns
each into one ``vpshufb`` over 64 output channels (16 or 32 for narrower layers; ``tbl``
on aarch64). Work per 4 activations and 64 output channels: ``2 P`` shuffles and byte adds
and about ``b`` bitwise ops for each of ``P`` planes, versus 4 ``vpdpbusd`` for the direct
kernel, whose decode of the indices is itself a shuffle. Which is faster depends on ``P``
and the layer shape: :mod:`tvmq.schedules.gemv_select` chooses per shape from a table
measured per CPU.
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import te, tir
from tvmq.schedules import blocked as B
from tvmq.schedules.common import inline_epilogue, schedule_injective

#: as :data:`tvmq.layermap._graph.LAYER_MACS_ATTR` (not imported: schedules do not depend
#: on the layer map)
LAYER_MACS_ATTR = "tvmq.layer_macs"
GROUP = 4  # activations per table (T-MAC's g): 16 subset sums
ENTRIES = 1 << GROUP
LANES = 64  # output channels per lookup vector: one zmm of bytes (fewer for narrow layers)
L1_GROUPS = 4  # groups summed in uint8: 4 * 60 = 240 <= 255
MAX_L2 = 256  # uint8 chunks summed in uint16: 256 * 240 = 61440 <= 65535
MAX_PLANES = 16  # a codebook of up to 16 entries

BLOCK_TABLE = "tvmq_lut_table"
BLOCK_B8 = "tvmq_lut_sum8"
BLOCK_B16 = "tvmq_lut_sum16"
BLOCK_GEMV = "tvmq_lut_gemv"
#: blocks of this kernel that the generic epilogue inlining must leave alone
OWN_BLOCKS = (BLOCK_TABLE, BLOCK_B8, BLOCK_B16, BLOCK_GEMV)


def codebook_of(w_kn: np.ndarray) -> np.ndarray:
    """The distinct values of int8 weights ``w_kn``, sorted (int32): their codebook."""
    return np.unique(w_kn.astype(np.int32))


def eligible(w_kn: np.ndarray) -> bool:
    """Whether the LUT kernel applies: a 2-D weight of at most 16 distinct values (indices
    of at most 4 bits), not all 0."""
    if w_kn.ndim != 2:
        return False
    book = codebook_of(w_kn)
    return len(book) <= MAX_PLANES and bool(book.any())


def vector_lanes(n: int) -> int:
    """Output channels a lookup vector covers: 64, or 16/32 for a layer that narrow (the
    patterns are padded to it: a 10-class classifier stores 16 channels, not 64)."""
    return next(w for w in (16, 32, LANES) if n <= w or w == LANES)


def _plan(k: int) -> tuple[int, int, int]:
    """``(R, C, groups)``: uint8 chunks per uint16 chunk, uint16 chunks, padded groups."""
    l1 = B.ceil_div(B.ceil_div(k, GROUP), L1_GROUPS)  # uint8 chunks needed
    r = min(MAX_L2, l1)
    c = B.ceil_div(l1, r)
    return r, c, c * r * L1_GROUPS


def encode_planes(w_kn: np.ndarray):
    """``(bit planes, masks, coefficients)`` of int8 weights ``w_kn`` ``[K, N]``, at compile
    time (the weight's ``b = ceil(log2 K)``-bit codebook indices, T-MAC's layout).

    ``bit_planes[j, q2, n]`` (uint8) holds, in its low nibble, bit ``j`` of the indices of
    the 4 weights ``w[4 * (2 q2) + i, n]`` (``i`` = bit position), in its high nibble the
    same for group ``2 q2 + 1``: ``b`` bits a weight. Plane ``p`` (one per nonzero codebook
    value ``v_p``, index ``k_p``) is the pattern ``AND_j (bit_planes[j] ^ masks[p, j])``,
    ``masks[p, j] = 0`` where bit ``j`` of ``k_p`` is set, else ``0xFF``: the 4-bit pattern
    of which weights have index ``k_p``. Padding (groups past ``K``, channels past ``N``)
    holds index 0: its activations are 0 and its outputs dropped. ``coefficients[t, p]``
    (int32) is ``v_p * 16**t``, the weight of the low (``t = 0``) and high (``t = 1``)
    nibble tables' sums.
    """
    k, n = w_kn.shape
    book = codebook_of(w_kn)
    bits = max(1, int(len(book) - 1).bit_length())
    codes = np.nonzero(book)[0]  # the indices of the nonzero values: one plane each
    _, _, groups = _plan(k)
    lanes = vector_lanes(n)
    np_ = B.ceil_div(n, lanes) * lanes
    idx = np.zeros((groups * GROUP, np_), np.int64)
    idx[:k, :n] = np.searchsorted(book, w_kn.astype(np.int32))
    quad = idx.reshape(groups, GROUP, np_)
    nib = np.stack([sum(((quad[:, i] >> j) & 1) << i for i in range(GROUP))
                    for j in range(bits)]).astype(np.uint8)  # [bits, groups, Np]
    planes = (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)
    masks = np.array([[0 if (c >> j) & 1 else 0xFF for j in range(bits)] for c in codes],
                     np.uint8)
    vals = book[codes]
    coef = np.stack([vals, vals * 16]).astype(np.int32)
    return np.ascontiguousarray(planes), masks, coef


def lut_gemv(x: te.Tensor, bit_planes: te.Tensor, masks: te.Tensor, coef: te.Tensor, n: int,
             corr: te.Tensor | None):
    """``[1, n]`` int32 ``x @ W`` of a ``[1, K]`` int8/uint8 ``x`` and weights given as
    :func:`encode_planes` placeholders; ``corr[n]`` (int32) is added (the
    ``-128 * sum(W)`` of an int8 input's shift to uint8)."""
    k = int(x.shape[1])
    planes, bits = (int(d) for d in masks.shape)
    r, c, groups = _plan(k)
    np_ = int(bit_planes.shape[2])
    shift = B.shift_for(str(x.dtype), "uint8")

    def act(m):  # uint8 activation (shifted), 0 past K
        v = x[0, tir.min(m, k - 1)].astype("int32") + shift
        return tir.if_then_else(m < k, v, 0)

    def table(t, q, e):  # sum of the nibbles t of the group's activations selected by e
        terms = [((e >> j) & 1) * ((act(q * GROUP + j) >> (4 * t)) & 15) for j in range(GROUP)]
        return (terms[0] + terms[1] + terms[2] + terms[3]).astype("uint8")

    tab = te.compute(B.i64((2, groups, ENTRIES)), table, name=BLOCK_TABLE)
    g = te.reduce_axis((0, tir.IntImm("int64", L1_GROUPS)), "g")

    def lookup(t, p, ci, ri, j):
        q = (ci * r + ri) * L1_GROUPS + g
        byte = bit_planes[0, q // 2, j] ^ masks[p, 0]
        for b in range(1, bits):  # the pattern of index k_p: one AND a further index bit
            byte = byte & (bit_planes[b, q // 2, j] ^ masks[p, b])
        # (byte >> 0|4) & 15: an index provably in [0, 16), one byte shuffle
        idx = tir.bitwise_and(tir.shift_right(byte, ((q % 2) * 4).astype("uint8")),
                              tir.const(ENTRIES - 1, "uint8"))
        return te.sum(tab[t, q, idx.astype("int64")], axis=g)

    b8 = te.compute(B.i64((2, planes, c, r, np_)), lookup, name=BLOCK_B8)
    ri = te.reduce_axis((0, tir.IntImm("int64", r)), "ri")
    b16 = te.compute(B.i64((2, planes, c, np_)),
                     lambda t, p, ci, j: te.sum(b8[t, p, ci, ri, j].astype("uint16"), axis=ri),
                     name=BLOCK_B16)
    t_ = te.reduce_axis((0, tir.IntImm("int64", 2)), "t")
    p_ = te.reduce_axis((0, tir.IntImm("int64", planes)), "p")
    c_ = te.reduce_axis((0, tir.IntImm("int64", c)), "c")
    acc = te.compute(
        B.i64((np_,)),
        lambda j: te.sum(b16[t_, p_, c_, j].astype("int32") * coef[t_, p_], axis=[t_, p_, c_]),
        name=BLOCK_GEMV, attrs={LAYER_MACS_ATTR: k * n})  # the layer map's kernel matching

    def out(i, j):
        return acc[j] + corr[j] if corr is not None else acc[j]

    return te.compute(B.i64((1, n)), out, name=B.BLOCK_UNPACK)


def gemv_operand(w_kn: np.ndarray, in_dtype: str):
    """``(constants, placeholders)`` the LUT kernel takes for weights ``w_kn``: bit planes,
    masks, coefficients (:func:`encode_planes`), and the shift correction (None for uint8
    input)."""
    planes_np, masks_np, coef_np = encode_planes(w_kn)
    corr_np = B.shift_correction(w_kn, B.shift_for(in_dtype, "uint8"), out_axis=1)
    holders = [te.placeholder(B.i64(planes_np.shape), "uint8", "lut_bit_planes"),
               te.placeholder(B.i64(masks_np.shape), "uint8", "lut_masks"),
               te.placeholder(B.i64(coef_np.shape), "int32", "lut_coef"),
               None if corr_np is None else te.placeholder(B.i64(corr_np.shape), "int32", "corr")]
    return [planes_np, masks_np, coef_np, corr_np], holders


def gemv_parts(w_kn: np.ndarray, in_dtype: str):
    """``(placeholders, output tensor, constants)`` of the LUT GEMV ``x[1, K] @ w_kn``
    (int32 out): the placeholders are ``x`` and then one per constant, in order."""
    k, n = w_kn.shape
    consts, holders = gemv_operand(w_kn, in_dtype)
    x = te.placeholder(B.i64((1, k)), in_dtype, "x")
    out = lut_gemv(x, *holders[:3], n, holders[3])
    keep = [i for i, c in enumerate(consts) if c is not None]
    return [x] + [holders[i] for i in keep], out, [consts[i] for i in keep]


def gemv_func(w_kn: np.ndarray, in_dtype: str):
    """``(PrimFunc, constants)`` of the standalone LUT GEMV (:func:`gemv_parts`); the
    PrimFunc's arguments are ``x``, the constants in order, and the output."""
    args, out, consts = gemv_parts(w_kn, in_dtype)
    return te.create_prim_func([*args, out]), consts


def schedule(sch) -> None:
    """Schedule the LUT GEMV (and the elementwise epilogue fused after it) in ``sch``.

    64 output channels a task (parallel; 16 or 32 for narrower layers). Per group, every
    plane's pattern is made from the same loaded index bit planes (planes and nibble tables
    unrolled); the uint8 and uint16 partial sums of each (plane, nibble table) live in
    registers (``local``), and each group's 16-byte table is copied to a local buffer the
    lookups index (what ``LowerByteLookups`` needs: a 1-D table, an index bounded by it).
    Measured (Zen 4) against one stored pattern per plane with planes outermost: 1-3 planes
    run alike (at 2 instead of 3 bits a weight for K = 4); 15 planes spill (512 x 1000 1.6x
    slower, 4096 x 4096 1.3x faster), where the direct kernel is 5-16x faster anyway."""
    outs = inline_epilogue(sch, OWN_BLOCKS)
    gemv = sch.get_sblock(BLOCK_GEMV)
    b16, b8 = sch.get_sblock(BLOCK_B16), sch.get_sblock(BLOCK_B8)
    j, t, p, c = sch.get_loops(gemv)
    jo, ji = sch.split(j, [None, vector_lanes(int(sch.get(j).extent))])
    sch.reorder(jo, c, p, t, ji)
    sch.parallel(jo)
    # every plane and both nibble tables of a group under one loop: the group's index bit
    # planes are loaded once, each plane's pattern is a few bitwise ops on them
    sch.compute_at(b16, c, preserve_unit_loops=True)
    t16, p16, _, j16, r16 = sch.get_loops(b16)[-5:]
    sch.reorder(r16, p16, t16, j16)
    sch.compute_at(b8, r16, preserve_unit_loops=True)
    t8, p8, _, _, j8, g8 = sch.get_loops(b8)[-6:]
    sch.reorder(g8, p8, t8, j8)
    reads = [str(r.source.name) for r in sch.get(b8).reads]
    local = sch.cache_read(b8, reads.index(BLOCK_TABLE), "local")
    sch.compute_at(local, t8, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(local)[-1])
    for blk, at in ((b8, g8), (b16, r16)):
        sch.set_scope(blk, 0, "local")
        sch.vectorize(sch.get_loops(blk)[-1])
        init = sch.decompose_reduction(blk, at)
        sch.vectorize(sch.get_loops(init)[-1])
    for lp in (g8, p8, t8, p16, t16):
        sch.unroll(lp)
    sch.vectorize(ji)
    init = sch.decompose_reduction(gemv, c)
    sch.vectorize(sch.get_loops(init)[-1])
    _schedule_table(sch)
    for blk in outs:  # the unpack and the requantization fused after it
        schedule_injective(sch, blk)


def _schedule_table(sch) -> None:
    """The tables (``2 x groups x 16`` bytes, built once a call): vectorized over entries."""
    *_, e = sch.get_loops(sch.get_sblock(BLOCK_TABLE))
    sch.vectorize(e)
