"""Requantization rounding chosen by the accumulator's range (``_qcommon.int_range``).

Where the range proves that no accumulator lands on an exact half (``qref.tie_free_bound``),
IntegerRequantize emits round-half-up (no ``bitwise_and`` of the floor's parity); otherwise
the exact round-half-to-even form stays. Both must equal ``qref.requantize`` bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

from tvmq import qref
from tvmq._tvm import relax
from tvmq.passes import IntegerRequantize
from tvmq.passes import _qcommon as q

from .conftest import apply, function, run_relax


def _c(v, dtype):
    return relax.const(np.asarray(v).astype(dtype), dtype)


class _Bindings:
    """The ``lookup_binding`` part of a mutator, over one function's bindings."""

    def __init__(self, mod):
        self.table = {}
        for block in mod["main"].body.blocks:
            for b in block.bindings:
                self.table[hash(b.var)] = b.value

    def lookup_binding(self, var):
        return self.table.get(hash(var))


def _conv_graph(w, bias, zx, s_acc, s_y, z_y, dq_axis=1):
    """uint8 x (zero point ``zx``, padded with it) -> int32 conv + bias -> requantize."""
    corr = zx * w.astype(np.int64).sum(axis=(1, 2, 3))

    def build(bb, x):
        xp = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 1, 1, 1, 1], pad_value=float(zx)))
        acc = bb.emit(relax.op.nn.conv2d(xp, _c(w, "int8"), out_dtype="int32"))
        acc = bb.emit(relax.op.subtract(acc, _c(corr.reshape(1, -1, 1, 1), "int32")))
        acc = bb.emit(relax.op.add(acc, _c(bias.reshape(1, -1, 1, 1), "int32")))
        d = bb.emit(relax.op.dequantize(acc, _c(s_acc, "float32"),
                                        _c(np.zeros(len(s_acc)), "int32"), axis=dq_axis))
        return relax.op.quantize(d, _c(s_y, "float32"), _c(z_y, "uint8"), axis=1,
                                 out_dtype="uint8")

    return function([("x", (2, w.shape[1], 6, 6), "uint8")], build)


def _reference(x, w, bias, zx, s_acc, s_y, z_y):
    acc = qref.conv2d_int(x, w, zx, 0, padding=(1, 1, 1, 1)) + bias.reshape(1, -1, 1, 1)
    mult = (s_acc.astype(np.float32) / np.float32(s_y)).astype(np.float32)
    return qref.requantize(acc, mult, 0, z_y, "uint8", axis=1)


def test_int_range_of_a_conv_is_sound_and_tight(rng):
    w = rng.randint(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    bias = rng.randint(-5000, 5000, 4)
    zx = 100
    mod = _conv_graph(w, bias, zx, np.full(4, 1e-3), 0.05, 128)
    binds = _Bindings(mod)
    d = next(v for v in binds.table.values() if q.op_name(v) == "relax.dequantize")
    lo, hi = q.int_range(binds, d.args[0])
    lo, hi = (np.asarray(a, np.int64).reshape(-1) for a in (lo, hi))
    w64 = w.astype(np.int64)
    # the extremes: x - zx = 255 - zx where w > 0 and -zx where w < 0 (and the reverse)
    pos = np.where(w64 > 0, w64 * (255 - zx), w64 * -zx).sum(axis=(1, 2, 3))
    neg = np.where(w64 > 0, w64 * -zx, w64 * (255 - zx)).sum(axis=(1, 2, 3))
    np.testing.assert_array_equal(hi, pos + bias)
    np.testing.assert_array_equal(lo, neg + bias)
    x = rng.randint(0, 256, (2, 3, 6, 6)).astype(np.uint8)
    acc = qref.conv2d_int(x, w, zx, 0, padding=(1, 1, 1, 1)) + bias.reshape(1, -1, 1, 1)
    assert np.all(acc >= lo.reshape(1, -1, 1, 1)) and np.all(acc <= hi.reshape(1, -1, 1, 1))


@pytest.mark.build
@pytest.mark.parametrize("ties", [False, True])
def test_conv_requant_rounding_and_folded_offsets(rng, ties):
    """Per-channel multipliers with 24-bit mantissas: ties are impossible on the unsaturated
    domain, so the all-int32 half-up form is used (``qref.int32_requantize_plan``); with ``M = 2**-6`` an accumulator
    ``= 32 (mod 64)`` is a tie and the exact form stays. Either way the bias and the
    zero-point correction fold into the rounding constant (no int32 add/subtract is left
    per element), and outputs equal the reference, including the inputs that drive every
    channel to its extremes."""
    if ties:
        w = rng.randint(-3, 4, (5, 3, 3, 3)).astype(np.int8)
        bias = rng.randint(-300, 300, 5)
        s_acc, s_y = np.full(5, 2.0 ** -6), 1.0
    else:
        w = rng.randint(-128, 128, (5, 3, 3, 3)).astype(np.int8)
        bias = rng.randint(-20000, 20000, 5)
        s_acc, s_y = rng.uniform(1e-5, 4e-4, 5), 0.02
    zx, z_y = 37, 120
    mod = apply(IntegerRequantize(), _conv_graph(w, bias, zx, s_acc, s_y, z_y))
    text = mod.script()
    assert ("bitwise_and" in text) == ties
    assert "R.subtract" not in text
    adds = [ln for ln in text.splitlines() if "R.add(" in ln]
    if ties:  # the exact int64 form: no int32 bias add survives
        assert all("int64" in ln for ln in adds), adds
    else:  # the all-int32 form (qref.int32_requantize_plan): its three adds, no int64
        assert "int64" not in text and len(adds) == 3, adds
    xs = [rng.randint(0, 256, (2, 3, 6, 6)).astype(np.uint8),
          np.zeros((2, 3, 6, 6), np.uint8), np.full((2, 3, 6, 6), 255, np.uint8)]
    for x in xs:
        out = run_relax(mod, x)
        np.testing.assert_array_equal(out, _reference(x, w, bias, zx, s_acc, s_y, z_y))
    if ties:
        acc = qref.conv2d_int(xs[0], w, zx, 0, padding=(1, 1, 1, 1)) + bias.reshape(1, -1, 1, 1)
        on_tie = (acc % 64 == 32) & (np.abs(acc // 64 + z_y - 128) < 120)
        assert on_tie.sum() > 5  # unsaturated exact halves were exercised


@pytest.mark.build
@pytest.mark.parametrize("mult,half_up", [(0.5, False), (0.3, True), (1.75, False)])
def test_int8_requant_rounding_form(mult, half_up):
    """An int8 source (|x - z| <= 128): M = 0.5 and 1.75 put odd/even accumulators on exact
    halves (kept exact: ties to even), M = 0.3 cannot tie (half-up). All 256 inputs."""
    def build(bb, x):
        d = bb.emit(relax.op.dequantize(x, _c(mult, "float32"), _c(0, "int8"), axis=1))
        return relax.op.quantize(d, _c(1.0, "float32"), _c(3, "int8"), axis=1,
                                 out_dtype="int8")

    mod = apply(IntegerRequantize(), function([("x", (1, 256), "int8")], build))
    assert ("bitwise_and" not in mod.script()) == half_up
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, 256)
    ref = qref.requantize(x, np.float32(mult), 0, 3, "int8")
    np.testing.assert_array_equal(run_relax(mod, x), ref)
    if not half_up:  # the ties really are there, and go to even
        frac = (x.astype(np.float64) * mult) % 1
        assert np.any(frac == 0.5)


def test_int_range_counts_a_convs_zero_padding():
    """Inputs in [5, 260] (a shifted uint8), padded by the conv itself with 0: the border
    outputs sum fewer taps, so the lower bound must allow the padded zeros."""
    w = np.ones((2, 1, 3, 3), np.int16)

    def build(bb, x):
        x16 = bb.emit(relax.op.add(bb.emit(relax.op.astype(x, "int16")), _c(5, "int16")))
        return relax.op.nn.conv2d(x16, _c(w, "int16"), padding=[1, 1, 1, 1], out_dtype="int32")

    mod = function([("x", (1, 1, 4, 4), "uint8")], build)
    binds = _Bindings(mod)
    conv = next(v for v in binds.table.values() if q.op_name(v) == "relax.nn.conv2d")
    lo, hi = (np.asarray(a, np.int64).reshape(-1) for a in q.int_range(binds, conv))
    corner_min = 4 * 5  # x = 0: four real taps of value 5, five padded zeros
    assert np.all(lo <= corner_min) and np.all(hi == 9 * 260)


@pytest.mark.build
def test_per_tensor_requant_folds_the_bias_too(rng):
    """A per-tensor weight scale dequantizes along the last axis (as LowerIntegerConv writes
    it); the bias still varies along channels and still folds into the rounding constant."""
    w = rng.randint(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    bias = rng.randint(-20000, 20000, 4)
    s_acc, zx, s_y, z_y = np.array([2.5e-4]), 12, 0.03, 90
    mod = apply(IntegerRequantize(), _conv_graph(w, bias, zx, s_acc, s_y, z_y, dq_axis=3))
    text = mod.script()
    assert "R.subtract" not in text
    # the all-int32 form: bias and zero points in its constants (three adds, no int64)
    assert "int64" not in text and text.count("R.add(") == 3
    x = rng.randint(0, 256, (2, 3, 6, 6)).astype(np.uint8)
    ref = _reference(x, w, bias, zx, np.full(4, s_acc[0]), s_y, z_y)
    np.testing.assert_array_equal(run_relax(mod, x), ref)
