"""PackSubByteWeights: narrow int8 weights -> the ``packed`` codec's mark, bit-exact."""
from __future__ import annotations

import numpy as np
import pytest

from tvmq import qref
from tvmq._tvm import relax, tvm
from tvmq.ir import encode_weight, find_encoded, get_codec
from tvmq.passes import PackSubByteWeights

from tests._relax import constants

from .conftest import apply, function, run_relax


def _conv_mod(w, encoded_bits=None):
    """``conv2d(x, W)``; with ``encoded_bits``, ``W`` as the pass should leave it (Expected)."""
    def build(bb, x):
        weight = relax.const(w.astype("int8"), "int8")
        if encoded_bits is not None:
            weight = bb.emit(encode_weight(bb, get_codec("packed", encoded_bits),
                                           w.astype("int8")))
        return relax.op.nn.conv2d(x, weight, out_dtype="int32")
    return function([("x", (1, w.shape[1], 4, 4), "int8")], build)


def _weight_of(mod):
    bound = {b.var: b.value for blk in mod["main"].body.blocks for b in blk.bindings}
    conv = [v for v in bound.values() if isinstance(v, relax.Call)
            and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.nn.conv2d"][0]
    return find_encoded(mod, conv.args[1], bound.get)


def _ranged(rng, bits, shape):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = rng.randint(lo, hi + 1, shape)
    w.flat[0], w.flat[1] = lo, hi
    return w


@pytest.mark.parametrize("bits", [2, 3, 6])
def test_structure(bits, rng):
    """Before: conv2d on an int8 constant. Expected: conv2d on the decode function's call."""
    w = _ranged(rng, bits, (8, 4, 3, 3))
    tvm.ir.assert_structural_equal(apply(PackSubByteWeights(), _conv_mod(w)),
                                   _conv_mod(w, encoded_bits=bits))


@pytest.mark.parametrize("bits", range(2, 8))
def test_picks_the_smallest_width(bits, rng):
    """The boundary values -2**(b-1) and 2**(b-1)-1 need exactly ``b`` bits."""
    w = _ranged(rng, bits, (8, 4, 3, 3))
    enc = _weight_of(apply(PackSubByteWeights(), _conv_mod(w)))
    assert enc.codec == get_codec("packed", bits)
    np.testing.assert_array_equal(enc.decode(), w)


@pytest.mark.build
@pytest.mark.parametrize("bits", [4, 2, 3, 5, 6, 7])
def test_packs_and_runs_exactly(bits, rng):
    w = _ranged(rng, bits, (8, 4, 3, 3))
    mod = apply(PackSubByteWeights(), _conv_mod(w))
    sizes = {c.dtype.name: c.size for c in constants(mod) if c.size > 8}
    assert sizes == {"uint8": w.size * bits // 8}  # the int8 weight is gone
    x = rng.randint(-128, 128, (1, 4, 4, 4)).astype("int8")
    np.testing.assert_array_equal(run_relax(mod, x), qref.conv2d_int(x, w))


def test_int8_weights_untouched(rng):
    mod = _conv_mod(rng.randint(-128, 128, (8, 4, 3, 3)))
    assert apply(PackSubByteWeights(), mod).script() == mod.script()


def test_max_bits_and_min_elements(rng):
    w6 = _ranged(rng, 6, (8, 4, 3, 3))
    mod = _conv_mod(w6)
    assert apply(PackSubByteWeights(max_bits=4), mod).script() == mod.script()
    assert apply(PackSubByteWeights(min_elements=1000), mod).script() == mod.script()
    with pytest.raises(ValueError, match=r"PackSubByteWeights\(max_bits=7\)"):
        PackSubByteWeights(max_bits=8)


def test_pack_layout_matches_reference():
    packed = qref.pack_subbyte([1, -1, 7, -8, 3], 4)
    np.testing.assert_array_equal(packed, [0xF1, 0x87, 0x03])
    parts = get_codec("packed", 4).encode(np.array([1, -1, 7, -8, 3]))
    np.testing.assert_array_equal(parts["data"], packed)
