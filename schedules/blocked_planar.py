"""Blocked weights stored 3, 5, 6 or 7 bits wide in byte planes, decoded inside the kernels.

The kernels read weights ``[..., ob, ib]`` (:func:`tvmq.schedules.blocked.pack_weight`).
Widths that divide 8 keep :func:`~tvmq.schedules.blocked.pack_subbyte_blocked` (several
values a byte). The others are stored per block of ``n = ob * ib`` values (flat index
``p = oi * ib + ci``) as ``bits`` *planes* of ``G = n / 8`` bytes: value ``p = h * G + j``
(``h < 8``) sits at bits ``[bits*h, bits*(h+1))`` of the ``8*bits``-bit little-endian word
``j`` whose byte ``k`` is plane ``k``. Stored ``[..., bits, G]`` int8: ``bits / 8`` of the
int8 bytes. The decode of one ``h`` reads ``G`` contiguous bytes of one or two planes and
applies the same shifts to all of them (:func:`decode_planar_weight`), so the schedules
vectorize it over ``j`` with ``h`` unrolled (:func:`tvmq.schedules.tiling.schedule_decode`).
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import te, tir

#: block annotation of the decode block of this layout (read by the schedules)
LAYOUT_KEY = "tvmq.weight_layout"
LAYOUT = "planar"


def _check(ob: int, ib: int, bits: int) -> int:
    if bits not in (3, 5, 6, 7):
        raise ValueError(f"byte planes store 3, 5, 6 or 7 bits, got {bits}")
    if (ob * ib) % 8:
        raise ValueError(f"{bits}-bit blocked weights need ob * ib % 8 == 0, got {ob} * {ib}")
    return ob * ib // 8


def pack_planar_blocked(wp: np.ndarray, bits: int) -> np.ndarray:
    """Blocked int8 weights ``[..., ob, ib]`` holding ``bits``-wide values -> ``[..., bits, G]``."""
    *lead, ob, ib = wp.shape
    g = _check(ob, ib, bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if wp.min(initial=0) < lo or wp.max(initial=0) > hi:
        raise ValueError(f"weights outside the int{bits} range [{lo}, {hi}]")
    u = (wp.astype(np.int64) & ((1 << bits) - 1)).reshape(*lead, 8, g)
    word = np.zeros((*lead, g), np.int64)
    for h in range(8):
        word |= u[..., h, :] << (bits * h)
    planes = np.stack([(word >> (8 * k)) & 0xFF for k in range(bits)], axis=-2)
    return np.ascontiguousarray(planes.astype(np.uint8).view(np.int8))


def decode_planar_weight(wq: te.Tensor, bits: int, ob: int, ib: int, name: str) -> te.Tensor:
    """``[..., bits, G]`` planes (:func:`pack_planar_blocked`) -> ``[..., ob, ib]`` int8.

    The 16-bit word of planes ``k, k+1`` (``k = bits*h // 8``; the last plane pairs with
    itself: its fields never reach the next byte) is shifted and masked as ``uint16``, then
    sign-extended by ``(u ^ 2**(b-1)) - 2**(b-1)``.
    """
    *lead, planes, g = (int(d) for d in wq.shape)
    if planes != bits or g != _check(ob, ib, bits):
        raise ValueError(f"{bits}-bit planes of ob={ob}, ib={ib}: got shape {wq.shape}")

    def f(*idx):
        *outer, oi, ci = idx
        return planar_field(wq, bits, ib, g, outer, oi, ci)

    return te.compute([tir.IntImm("int64", d) for d in (*lead, ob, ib)], f, name=name,
                      attrs={LAYOUT_KEY: LAYOUT})


def planar_field(wq: te.Tensor, bits: int, ib: int, g: int, outer, oi, ci):
    """The sign-extended ``int8`` value ``(oi, ci)`` of block ``outer`` (see
    :func:`decode_planar_weight`)."""
    u = planar_bits(wq, bits, ib, g, outer, oi, ci).astype("int16")
    sign = tir.const(1 << (bits - 1), "int16")
    return ((u ^ sign) - sign).astype("int8")


def planar_bits(wq: te.Tensor, bits: int, ib: int, g: int, outer, oi, ci):
    """The ``bits`` stored bits of value ``(oi, ci)`` of block ``outer``, unsigned
    (``uint16`` in ``[0, 2**bits)``)."""
    i64 = lambda v: tir.IntImm("int64", v)  # noqa: E731
    p = oi * i64(ib) + ci
    bit = i64(bits) * tir.floordiv(p, i64(g))
    k, j = tir.floordiv(bit, i64(8)), tir.floormod(p, i64(g))
    lo = wq[(*outer, k, j)].astype("uint8").astype("uint16")
    hi = wq[(*outer, tir.min(k + i64(1), i64(bits - 1)), j)].astype("uint8")
    word = lo | (hi.astype("uint16") << tir.const(8, "uint16"))
    return ((word >> tir.floormod(bit, i64(8)).astype("uint16"))
            & tir.const((1 << bits) - 1, "uint16"))
