"""Codebook weights in the blocked kernels: indices stored narrow, the table looked up in the loop.

A codebook-encoded weight (:mod:`tvmq.ir.codecs` ``codebook``: ``K = 2**bits`` int8 entries,
``bits``-bit indices) reaches the conv/dense kernels as the blocked *indices*
``[..., ob, ib]`` plus the ``K``-entry table. The indices are stored like sub-byte weights
(as signed fields ``i - K/2`` of ``sb = max(2, bits)`` bits): 2 and 4 bits
``8 // sb`` a byte (:func:`~tvmq.schedules.blocked.pack_subbyte_blocked`), 3, 5, 6 and 7 in
byte planes (:mod:`tvmq.schedules.blocked_planar`). 8-bit indices (K > 128) are no smaller
than the int8 weights they select: those layers store the weights. The decode block
(``BLOCK_DECODE_W``, placed by :func:`tvmq.schedules.tiling.schedule_decode` like any
sub-byte decode: once per output-channel block group, a row, or a register tile) extracts
the field and reads ``table[field + K/2]``, so the dense int8 weights never exist whole and
the artifact holds ``bits`` bits a weight plus ``K`` bytes. Fields are read
unsigned (``((byte >> s) + K/2) & (K - 1)``, the same index): no sign extension, and an
index provably in ``[0, K)``, which :mod:`tvmq.schedules.lookup` turns into one byte
shuffle (``vpshufb`` / ``tbl``) for a whole vector of weights.
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import te, tir
from tvmq.schedules import blocked as B
from tvmq.schedules import blocked_planar as P


def storage_bits(bits: int) -> int:
    """Bits one stored index occupies in the blocked layout (1-bit indices use 2)."""
    return max(2, bits)


def indices_of(values: np.ndarray, table: np.ndarray) -> np.ndarray | None:
    """Index of each int8 value in ``table`` (its first occurrence), or None if some value
    is not in the table (then the weight is stored as int8)."""
    inv = np.full(256, -1, np.int64)
    for i in range(len(table) - 1, -1, -1):
        inv[int(table[i]) + 128] = i
    idx = inv[values.astype(np.int64) + 128]
    return None if (idx < 0).any() else idx


def codebook_operand(wp_np: np.ndarray, table: np.ndarray, bits: int, ob: int):
    """``(stored arrays, placeholders, int8 tensor the kernel reads)`` of blocked codebook
    weights ``wp_np`` (``[..., ob, ib]`` int8 values, all in ``table``), or None when a value
    (e.g. the zero padding of partial blocks) is not in the table or the indices take 8 bits
    (then the caller stores the int8 weights)."""
    sb = storage_bits(bits)
    if sb == 8:
        # an 8-bit index into an int8 table is as large as the weight it selects: the
        # kernel stores that weight (no per-call lookup; 256 table bytes fewer)
        return None
    idx = indices_of(wp_np, table)
    if idx is None:
        return None
    k = 1 << sb
    tab = np.zeros(k, np.int8)
    tab[:len(table)] = table
    off = k // 2
    signed = (idx - off).astype(np.int8)
    ib = int(wp_np.shape[-1])
    t = te.placeholder([tir.IntImm("int64", k)], "int8", "codebook")
    if 8 % sb == 0:
        stored = B.pack_subbyte_blocked(signed, sb)
        wq = te.placeholder(B.i64(stored.shape), "int8", f"w_index{sb}")
        g = int(stored.shape[-2])

        def index(outer, oi, ci):
            # the stored field is (i - K/2) mod K = i ^ K/2: read it unsigned (a logical
            # shift, no sign extension) and add K/2 back; the mask keeps the index provably
            # in [0, K), so tvmq.schedules.lookup makes the lookup one byte shuffle
            byte = wq[(*outer, tir.floormod(oi, g), ci)].astype("uint8")
            shift = (tir.const(sb, "int64") * tir.floordiv(oi, g)).astype("uint8")
            return tir.bitwise_and(tir.shift_right(byte, shift) + tir.const(off, "uint8"),
                                   tir.const(k - 1, "uint8"))
        attrs = {}
    else:
        stored = P.pack_planar_blocked(signed, sb)
        wq = te.placeholder(B.i64(stored.shape), "int8", f"w_index{sb}")
        g = int(stored.shape[-1])

        def index(outer, oi, ci):  # unsigned, as the packed fields above
            u = P.planar_bits(wq, sb, ib, g, outer, oi, ci)
            return tir.bitwise_and(u + tir.const(off, "uint16"), tir.const(k - 1, "uint16"))
        attrs = {P.LAYOUT_KEY: P.LAYOUT}

    *lead, _, _ = (int(d) for d in wp_np.shape)

    def f(*i):
        *outer, oi, ci = i
        return t[index(outer, oi, ci).astype("int64")]

    dec = te.compute(B.i64((*lead, ob, ib)), f, name=B.BLOCK_DECODE_W, attrs=attrs)
    return [stored, tab], [wq, t], dec
