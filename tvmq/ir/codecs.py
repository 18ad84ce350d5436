"""Weight codecs: how a constant integer weight is stored in the artifact and decoded.

A codec turns a weight's integer values into *stored parts* (NumPy arrays that become the
artifact's constants), decodes them back exactly (:meth:`Codec.decode_np`, the reference)
and provides the same decode as a TE compute (:meth:`Codec.decode_te`) that runs in the
compiled program. Codecs are small frozen dataclasses registered by name
(:func:`register_codec`, :func:`get_codec`):

``int8``
    Plain: one ``int8`` part ``data`` of the weight's shape.
``packed`` (``bits`` 2..8)
    Signed two's-complement values, ``bits`` each, in one ``uint8`` part ``data``: an
    LSB-first bitstream. Element ``i`` (row-major order) occupies stream bits
    ``[i*bits, (i+1)*bits)``, its least significant bit first; stream bit ``t`` is bit
    ``t % 8`` of byte ``t // 8``; the last byte is zero-padded. ``ceil(n*bits/8)`` bytes.
    For 2 and 4 bits this is exactly :func:`tvmq.qref.pack_subbyte` (``8 // bits``
    values a byte, the first in the low bits). Decoding sign-extends: ``(u ^ 2**(b-1)) -
    2**(b-1)``.
``codebook`` (``bits`` 1..8, ``K = 2**bits`` entries)
    Indices into a ``K``-entry ``int8`` part ``table``, packed unsigned at ``bits`` bits
    in part ``indices`` (the ``packed`` bitstream, no sign extension).
``codebook_f32`` (``bits`` 1..8)
    The same with a ``float32`` table: decodes to ``float32`` (weight-only codebooks that
    feed float kernels).

Encoding never rounds: a value that does not fit the codec raises ``ValueError``.

>>> from tvmq.ir import get_codec
>>> codec = get_codec("packed", bits=3)
>>> parts = codec.encode(np.array([-4, 3, 1], np.int8))
>>> parts["data"].tolist(), codec.decode_np(parts, (3,)).tolist()
([92, 0], [-4, 3, 1])
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from tvmq._tvm import te, tir

CODECS: dict[str, type["Codec"]] = {}


def register_codec(name: str):
    """Class decorator: register a :class:`Codec` subclass under ``name``."""
    def wrap(cls):
        cls.name = name
        CODECS[name] = cls
        return cls

    return wrap


def get_codec(name: str, bits: int = 8) -> "Codec":
    """The codec registered as ``name`` at ``bits`` bits (``get_codec("packed", bits=3)``)."""
    if name not in CODECS:
        raise KeyError(f"unknown weight codec {name!r}; registered: {sorted(CODECS)}")
    return CODECS[name](bits=int(bits))


@dataclasses.dataclass(frozen=True)
class Codec:
    """Base of the weight codecs.

    Parameters
    ----------
    bits : int
        Bits one stored value occupies (an index, for a codebook).
    """

    bits: int = 8
    name: ClassVar[str] = ""
    #: names of the stored parts, in the order the decode takes them
    part_names: ClassVar[tuple[str, ...]] = ("data",)
    #: dtype of the decoded tensor
    out_dtype: ClassVar[str] = "int8"

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Stored parts of integer ``values`` (raises ``ValueError`` if they do not fit)."""
        raise NotImplementedError

    def decode_np(self, parts: dict[str, np.ndarray], shape) -> np.ndarray:
        """NumPy reference decode: the :attr:`out_dtype` tensor of ``shape``."""
        raise NotImplementedError

    def decode_te(self, parts: dict[str, te.Tensor], shape) -> te.Tensor:
        """The decode as a TE compute over placeholders of the parts (``int8``, ``shape``)."""
        raise NotImplementedError

    def stored_bytes(self, parts: dict[str, np.ndarray]) -> int:
        """Bytes the parts occupy in the artifact."""
        return sum(int(np.asarray(parts[n]).nbytes) for n in self.part_names)

    @property
    def value_range(self) -> tuple[int, int]:
        """Smallest and largest value a signed ``bits``-bit field holds."""
        return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1

    def fits(self, values: np.ndarray) -> bool:
        """Whether every value is storable (in :attr:`value_range`)."""
        lo, hi = self.value_range
        v = np.asarray(values)
        return v.size == 0 or (int(v.min()) >= lo and int(v.max()) <= hi)

    def _check_bits(self, lo: int, hi: int) -> None:
        if not isinstance(self.bits, int) or not lo <= self.bits <= hi:
            raise ValueError(f"the {self.name} codec stores {lo}..{hi} bits, got "
                             f"bits={self.bits!r}: use get_codec({self.name!r}, bits={hi})")

    def _check_fits(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values)
        if not np.issubdtype(v.dtype, np.integer):
            raise ValueError(f"{self.name} codec: integer values expected, got {v.dtype}")
        if not self.fits(v):
            lo, hi = self.value_range
            raise ValueError(f"{self.name} codec ({self.bits} bits): values in "
                             f"[{v.min()}, {v.max()}] outside [{lo}, {hi}]")
        return v


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Low ``bits`` bits of each value as the LSB-first bitstream (``uint8``, zero-padded)."""
    u = np.asarray(values, np.int64).reshape(-1) & ((1 << bits) - 1)
    stream = ((u[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(stream, bitorder="little")


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` unsigned ``bits``-bit fields (``int64``)."""
    stream = np.unpackbits(np.asarray(data, np.uint8).reshape(-1), bitorder="little")
    fields = stream[:count * bits].reshape(count, bits).astype(np.int64)
    return fields @ (np.int64(1) << np.arange(bits, dtype=np.int64))


def _sign_extend(u: np.ndarray, bits: int) -> np.ndarray:
    sign = 1 << (bits - 1)
    return (u ^ sign) - sign


def _i64(shape) -> list:
    return [tir.IntImm("int64", int(d)) for d in shape]


def _flat_index(idx, shape):
    flat = idx[0]
    for i, d in zip(idx[1:], shape[1:]):
        flat = flat * tir.IntImm("int64", int(d)) + i
    return flat


def bitstream_field_te(data: te.Tensor, bits: int, index, signed: bool):
    """Field ``index`` (an ``int64`` PrimExpr) of a :func:`pack_bits` stream, as ``int16``.

    A field spans at most two bytes: the 16-bit little-endian word at its first byte,
    shifted and masked (``uint16``: no signed overflow), then sign-extended when ``signed``.
    """
    nbytes = int(data.shape[0])
    bit = index * tir.IntImm("int64", bits)
    byte = tir.floordiv(bit, tir.IntImm("int64", 8))
    shift = tir.floormod(bit, tir.IntImm("int64", 8)).astype("uint16")
    lo = data[byte].astype("uint16")
    hi = data[tir.min(byte + tir.IntImm("int64", 1), tir.IntImm("int64", nbytes - 1))]
    word = lo | (hi.astype("uint16") << tir.const(8, "uint16"))
    u = ((word >> shift) & tir.const((1 << bits) - 1, "uint16")).astype("int16")
    if not signed:
        return u
    sign = tir.const(1 << (bits - 1), "int16")
    return (u ^ sign) - sign


@register_codec("int8")
@dataclasses.dataclass(frozen=True)
class Int8(Codec):
    """Plain ``int8`` (stored as is)."""

    bits: int = 8

    def __post_init__(self):
        self._check_bits(8, 8)

    def encode(self, values):
        return {"data": np.ascontiguousarray(self._check_fits(values).astype(np.int8))}

    def decode_np(self, parts, shape):
        return np.asarray(parts["data"], np.int8).reshape(tuple(shape))

    def decode_te(self, parts, shape):
        data = parts["data"]
        return te.compute(_i64(shape), lambda *i: data[i], name="tvmq_codec_decode")


@register_codec("packed")
@dataclasses.dataclass(frozen=True)
class Packed(Codec):
    """Signed ``bits``-bit values in an LSB-first bitstream (see the module docstring)."""

    bits: int = 4

    def __post_init__(self):
        self._check_bits(2, 8)

    def encode(self, values):
        return {"data": pack_bits(self._check_fits(values), self.bits)}

    def decode_np(self, parts, shape):
        n = int(np.prod(shape, dtype=np.int64))
        u = unpack_bits(parts["data"], self.bits, n)
        return _sign_extend(u, self.bits).astype(np.int8).reshape(tuple(shape))

    def decode_te(self, parts, shape):
        data, bits = parts["data"], self.bits
        return te.compute(
            _i64(shape),
            lambda *i: bitstream_field_te(data, bits, _flat_index(i, shape), True).astype("int8"),
            name="tvmq_codec_decode")


@register_codec("codebook")
@dataclasses.dataclass(frozen=True)
class Codebook(Codec):
    """``int8`` table of ``2**bits`` entries, indices packed unsigned at ``bits`` bits."""

    bits: int = 4
    part_names: ClassVar[tuple[str, ...]] = ("indices", "table")

    def __post_init__(self):
        self._check_bits(1, 8)

    @property
    def entries(self) -> int:
        """Table size ``K = 2**bits``."""
        return 1 << self.bits

    @property
    def value_range(self) -> tuple[int, int]:
        return -128, 127

    def fits(self, values):
        return super().fits(values) and np.unique(np.asarray(values)).size <= self.entries

    def encode(self, values):
        """Table = the distinct values (sorted, zero-filled to ``K``); raises if more than K."""
        v = np.asarray(values)
        if np.unique(v).size > self.entries:
            raise ValueError(f"codebook codec ({self.bits} bits): {np.unique(v).size} distinct "
                             f"values, the table holds {self.entries}: use bits="
                             f"{int(np.ceil(np.log2(max(2, np.unique(v).size))))}")
        table = np.unique(self._check_fits(v)).astype(np.int8)
        indices = np.searchsorted(table, v.reshape(-1))
        return self.from_indices(indices, np.pad(table, (0, self.entries - table.size)))

    def from_indices(self, indices: np.ndarray, table: np.ndarray) -> dict[str, np.ndarray]:
        """Parts of given ``indices`` (``0 <= i < K``) into a ``K``-entry ``int8`` ``table``."""
        idx, tab = np.asarray(indices).reshape(-1), np.asarray(table).reshape(-1)
        if tab.size != self.entries or (idx.size and (idx.min() < 0 or idx.max() >= tab.size)):
            raise ValueError(f"codebook codec ({self.bits} bits): table of {self.entries} "
                             f"entries and indices in [0, {self.entries}) expected")
        return {"indices": pack_bits(idx, self.bits), "table": tab.astype(np.int8)}

    def decode_np(self, parts, shape):
        n = int(np.prod(shape, dtype=np.int64))
        idx = unpack_bits(parts["indices"], self.bits, n)
        return np.asarray(parts["table"], np.int8)[idx].reshape(tuple(shape))

    def decode_te(self, parts, shape):
        idx, table, bits = parts["indices"], parts["table"], self.bits
        return te.compute(
            _i64(shape),
            lambda *i: table[bitstream_field_te(idx, bits, _flat_index(i, shape), False)
                             .astype("int64")],
            name="tvmq_codec_decode")


@register_codec("codebook_f32")
@dataclasses.dataclass(frozen=True)
class CodebookF32(Codebook):
    """``float32`` table of ``2**bits`` entries, indices packed unsigned at ``bits`` bits."""

    out_dtype: ClassVar[str] = "float32"

    @property
    def value_range(self) -> tuple[float, float]:
        return -np.inf, np.inf

    def fits(self, values):
        v = np.asarray(values)
        return bool(np.isfinite(v).all()) and np.unique(v).size <= self.entries

    def encode(self, values):
        v = np.asarray(values, np.float32)
        if not self.fits(v):
            raise ValueError(f"codebook_f32 codec ({self.bits} bits): more than "
                             f"{self.entries} distinct values, or NaN/inf")
        table = np.unique(v)
        return self.from_indices(np.searchsorted(table, v.reshape(-1)),
                                 np.pad(table, (0, self.entries - table.size)))

    def from_indices(self, indices, table):
        parts = super().from_indices(indices, np.zeros(self.entries, np.int8))
        tab = np.asarray(table, np.float32).reshape(-1)
        if tab.size != self.entries or not np.isfinite(tab).all():
            raise ValueError(f"codebook_f32 codec ({self.bits} bits): a finite table of "
                             f"{self.entries} entries expected")
        return {"indices": parts["indices"], "table": tab}

    def decode_np(self, parts, shape):
        n = int(np.prod(shape, dtype=np.int64))
        idx = unpack_bits(parts["indices"], self.bits, n)
        return np.asarray(parts["table"], np.float32)[idx].reshape(tuple(shape))
