"""PackSubByteWeights: packed uint8 constants, unpacked in the program, bit-exact."""
from __future__ import annotations

import numpy as np
import pytest

from tvmq import qref
from tvmq._tvm import const_value, relax
from tvmq.passes import PackSubByteWeights

from .conftest import apply, function, run_relax


def _conv_mod(w):
    def build(bb, x):
        return relax.op.nn.conv2d(x, relax.const(w.astype("int8"), "int8"), out_dtype="int32")
    return function([("x", (1, w.shape[1], 4, 4), "int8")], build)


def _weight_consts(mod):
    consts = []

    @relax.expr_functor.visitor
    class _V(relax.PyExprVisitor):
        def visit_constant_(self, c):
            consts.append(const_value(c).numpy())

        visit_generic_const_ = visit_constant_  # TVM 0.27 name

    _V().visit_expr(mod["main"])
    return consts


@pytest.mark.build
@pytest.mark.parametrize("bits", [4, 2])
def test_packs_and_runs_exactly(bits, rng):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = rng.randint(lo, hi + 1, (8, 4, 3, 3))
    w[0, 0, 0, 0], w[0, 0, 0, 1] = lo, hi
    mod = apply(PackSubByteWeights(), _conv_mod(w))
    sizes = {c.dtype.name: c.size for c in _weight_consts(mod) if c.size > 8}
    assert sizes == {"uint8": w.size * bits // 8}  # the int8 weight is gone
    x = rng.randint(-128, 128, (1, 4, 4, 4)).astype("int8")
    np.testing.assert_array_equal(run_relax(mod, x), qref.conv2d_int(x, w))


def test_int8_weights_untouched(rng):
    mod = _conv_mod(rng.randint(-128, 128, (8, 4, 3, 3)))
    assert apply(PackSubByteWeights(), mod).script() == mod.script()


def test_pack_layout_matches_reference():
    packed = qref.pack_subbyte([1, -1, 7, -8, 3], 4)
    np.testing.assert_array_equal(packed, [0xF1, 0x87, 0x03])
