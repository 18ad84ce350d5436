"""Weight codecs: exact round trips, the documented layouts, sizes, and the TE decodes."""
from __future__ import annotations

import numpy as np
import pytest

from tvmq import qref
from tvmq._tvm import te, tensor, tvm
from tvmq.ir import CODECS, get_codec
from tvmq.ir.codecs import pack_bits, unpack_bits

SIZES = [1, 7, 63, 101]  # odd element counts: the last byte is partly padding


def _values(rng, bits, size):
    """Random ``bits``-bit values with both boundaries ``-2**(b-1)``, ``2**(b-1) - 1``."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v = rng.integers(lo, hi + 1, size).astype(np.int8)
    v[0] = lo
    v[-1] = hi if size > 1 else v[-1]
    return v


def test_registry_holds_the_three_codecs():
    assert {"int8", "packed", "codebook"} <= set(CODECS)
    assert get_codec("packed", bits=3) == get_codec("packed", 3)
    with pytest.raises(KeyError, match="registered"):
        get_codec("nf4")


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("size", SIZES)
def test_packed_round_trips_exactly(rng, bits, size):
    codec = get_codec("packed", bits)
    v = _values(rng, bits, size)
    parts = codec.encode(v)
    assert parts["data"].dtype == np.uint8 and parts["data"].size == -(-size * bits // 8)
    assert codec.stored_bytes(parts) == -(-size * bits // 8)
    np.testing.assert_array_equal(codec.decode_np(parts, (size,)), v)


@pytest.mark.parametrize("bits", [2, 4])
def test_packed_keeps_the_int4_int2_layout(rng, bits):
    """2 and 4 bits: byte for byte :func:`tvmq.qref.pack_subbyte` (today's artifacts)."""
    v = _values(rng, bits, 101)
    np.testing.assert_array_equal(get_codec("packed", bits).encode(v)["data"],
                                  qref.pack_subbyte(v, bits))


def test_packed_layout_is_an_lsb_first_bitstream():
    """3 bits, [-4, 3, 1] -> fields 100, 011, 001 -> stream bits (LSB first)
    0,0,1 | 1,1,0 | 1,0,0 -> byte 0 = 0b01011100, byte 1 = 0 (padding)."""
    parts = get_codec("packed", 3).encode(np.array([-4, 3, 1], np.int8))
    assert parts["data"].tolist() == [0b01011100, 0]
    # 6 bits: a field straddles the byte boundary: -1 -> 111111, 5 -> 000101
    parts = get_codec("packed", 6).encode(np.array([-1, 5], np.int8))
    assert parts["data"].tolist() == [0b0111_1111, 0b0000_0001]


@pytest.mark.parametrize("bits", range(1, 9))
def test_bitstream_helpers_invert(rng, bits):
    u = rng.integers(0, 1 << bits, 37)
    np.testing.assert_array_equal(unpack_bits(pack_bits(u, bits), bits, 37), u)


def test_int8_is_plain(rng):
    v = _values(rng, 8, 63).reshape(7, 9)
    parts = get_codec("int8").encode(v)
    assert parts["data"].dtype == np.int8 and get_codec("int8").stored_bytes(parts) == 63
    np.testing.assert_array_equal(get_codec("int8").decode_np(parts, (7, 9)), v)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("size", [7, 101])
def test_codebook_round_trips_exactly(rng, bits, size):
    codec = get_codec("codebook", bits)
    table = np.sort(rng.choice(np.arange(-128, 128), codec.entries, replace=False))
    table[0], table[-1] = -128, 127
    idx = rng.integers(0, codec.entries, size)
    idx[0], idx[-1] = 0, codec.entries - 1
    parts = codec.from_indices(idx, table)
    assert parts["table"].dtype == np.int8 and parts["table"].size == codec.entries
    assert codec.stored_bytes(parts) == -(-size * bits // 8) + codec.entries
    np.testing.assert_array_equal(codec.decode_np(parts, (size,)), table[idx])
    # encode() builds the table from the distinct values
    again = codec.encode(table[idx])
    np.testing.assert_array_equal(codec.decode_np(again, (size,)), table[idx])


def test_codecs_refuse_what_they_cannot_store():
    with pytest.raises(ValueError, match=r"outside \[-4, 3\]"):
        get_codec("packed", 3).encode(np.array([4], np.int8))
    with pytest.raises(ValueError, match="3 distinct values, the table holds 2: use bits=2"):
        get_codec("codebook", 1).encode(np.array([1, 2, 3], np.int8))
    with pytest.raises(ValueError, match="stores 2..8 bits"):
        get_codec("packed", 9)
    with pytest.raises(ValueError, match="integer values"):
        get_codec("packed", 4).encode(np.array([0.5]))


def _run_decode(codec, parts, shape):
    holders = {n: te.placeholder([int(d) for d in parts[n].shape], str(parts[n].dtype), n)
               for n in codec.part_names}
    out = codec.decode_te(holders, shape)
    lib = tvm.compile(te.create_prim_func([*holders.values(), out]), target="llvm")
    args = [tensor(parts[n]) for n in codec.part_names] + [tensor(np.zeros(shape, np.int8))]
    lib(*args)
    return args[-1].numpy()


@pytest.mark.build
@pytest.mark.parametrize("name,bits", [("packed", b) for b in range(2, 9)]
                         + [("int8", 8), ("codebook", 3), ("codebook", 8)])
def test_te_decode_matches_numpy(rng, name, bits):
    """The compiled decode (what runs when no kernel reads the mark) is the reference's."""
    codec = get_codec(name, bits)
    shape = (3, 5, 7)  # 105 elements: fields straddle bytes, padded last byte
    if name == "codebook":
        parts = codec.from_indices(rng.integers(0, codec.entries, 105),
                                   rng.integers(-128, 128, codec.entries))
    else:
        parts = codec.encode(_values(rng, bits, 105).reshape(shape))
    np.testing.assert_array_equal(_run_decode(codec, parts, shape), codec.decode_np(parts, shape))
