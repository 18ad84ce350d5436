"""LowerIntegerAdd / Concat / Pool, SinkDequantize and IntegerRequantize vs tvmq.qref."""
from __future__ import annotations

import numpy as np
import pytest

from tvmq import qref
from tvmq._tvm import relax, tvm
from tvmq.passes import (IntegerRequantize, LowerIntegerAdd, LowerIntegerConcat,
                         LowerIntegerPool, SinkDequantize)

from .conftest import apply, function, run_relax


def _c(v, dtype):
    return relax.const(np.asarray(v).astype(dtype), dtype)


def _dq(bb, x, s, z):
    return bb.emit(relax.op.dequantize(x, _c(s, "float32"), _c(z, "uint8"), axis=1))


def _q(y, s, z):
    return relax.op.quantize(y, _c(s, "float32"), _c(z, "uint8"), axis=1, out_dtype="uint8")


def _lower_all(mod):
    for p in (LowerIntegerAdd(), LowerIntegerConcat(), LowerIntegerPool(), SinkDequantize(),
              IntegerRequantize()):
        mod = apply(p, mod)
    assert "dequantize" not in mod.script() and "quantize(" not in mod.script()
    return mod


S_A, Z_A, S_B, Z_B, S_Y, Z_Y = 0.02, 120, 0.035, 7, 0.04, 100


@pytest.mark.build
def test_residual_add_relu(rng):
    def build(bb, a, b):
        y = bb.emit(relax.op.add(_dq(bb, a, S_A, Z_A), _dq(bb, b, S_B, Z_B)))
        return _q(bb.emit(relax.op.nn.relu(y)), S_Y, Z_Y)

    mod = _lower_all(function([("a", (1, 4, 5, 5), "uint8"), ("b", (1, 4, 5, 5), "uint8")],
                              build))
    a, b = (rng.randint(0, 256, (1, 4, 5, 5)).astype("uint8") for _ in range(2))
    ref = qref.add_int(a, b, np.float32(S_A), Z_A, np.float32(S_B), Z_B, np.float32(S_Y), Z_Y,
                       "uint8", lo=Z_Y)
    np.testing.assert_array_equal(run_relax(mod, a, b), ref)


@pytest.mark.build
def test_add_onnxruntime_table(rng):
    """``match_onnxruntime``: add -> quantize becomes one lookup in onnxruntime's QLinearAdd
    table (structure: a ``take`` of a 65,536-entry uint8 constant, no float op)."""
    def build(bb, a, b):
        return _q(bb.emit(relax.op.add(_dq(bb, a, S_A, Z_A), _dq(bb, b, S_B, Z_B))), S_Y, Z_Y)

    mod = function([("a", (1, 4, 5, 5), "uint8"), ("b", (1, 4, 5, 5), "uint8")], build)
    mod = apply(LowerIntegerAdd(match_onnxruntime=True), mod)
    text = mod.script(show_meta=False)
    assert "R.take(" in text and "float32" not in text and "quantize" not in text
    a, b = (rng.randint(0, 256, (1, 4, 5, 5)).astype("uint8") for _ in range(2))
    table = qref.ort_add_table(S_A, Z_A, S_B, Z_B, S_Y, Z_Y, "uint8")
    np.testing.assert_array_equal(run_relax(mod, a, b), table[a, b])


@pytest.mark.build
def test_concat_mixed_scales(rng):
    def build(bb, a, b):
        y = bb.emit(relax.op.concat([_dq(bb, a, S_A, Z_A), _dq(bb, b, S_B, Z_B)], axis=1))
        return _q(y, S_Y, Z_Y)

    mod = _lower_all(function([("a", (1, 2, 3, 3), "uint8"), ("b", (1, 3, 3, 3), "uint8")],
                              build))
    a = rng.randint(0, 256, (1, 2, 3, 3)).astype("uint8")
    b = rng.randint(0, 256, (1, 3, 3, 3)).astype("uint8")
    ref = qref.concat_int([(a, np.float32(S_A), Z_A), (b, np.float32(S_B), Z_B)], 1,
                          np.float32(S_Y), Z_Y, "uint8")
    np.testing.assert_array_equal(run_relax(mod, a, b), ref)


@pytest.mark.build
@pytest.mark.parametrize("kind", ["avg", "avg_pad", "global", "max_reshape"])
def test_pools(kind, rng):
    def build(bb, x):
        d = _dq(bb, x, S_A, Z_A)
        if kind == "avg":
            y = relax.op.nn.avg_pool2d(d, [2, 2], strides=[2, 2])
        elif kind == "avg_pad":
            y = relax.op.nn.avg_pool2d(d, [3, 3], strides=[1, 1], padding=[1, 1, 1, 1],
                                       count_include_pad=True)
        elif kind == "global":
            y = relax.op.mean(d, axis=[2, 3], keepdims=True)
        else:
            m = bb.emit(relax.op.nn.max_pool2d(d, [2, 2], strides=[2, 2]))
            y = relax.op.reshape(m, [1, 8])
        return _q(bb.emit(y), S_Y if kind != "max_reshape" else S_A,
                  Z_Y if kind != "max_reshape" else Z_A)

    mod = _lower_all(function([("x", (1, 2, 4, 4), "uint8")], build))
    x = rng.randint(0, 256, (1, 2, 4, 4)).astype("uint8")
    s_a, s_y = np.float32(S_A), np.float32(S_Y)
    if kind == "avg":
        ref = qref.avg_pool2d_int(x, s_a, Z_A, s_y, Z_Y, (2, 2), (2, 2), dtype="uint8")
    elif kind == "avg_pad":
        ref = qref.avg_pool2d_int(x, s_a, Z_A, s_y, Z_Y, (3, 3), (1, 1), (1, 1, 1, 1), "uint8")
    elif kind == "global":
        ref = qref.global_avg_pool_int(x, s_a, Z_A, s_y, Z_Y, "uint8")
    else:
        ref = qref.max_pool2d_int(x, (2, 2)).reshape(1, 8)
    np.testing.assert_array_equal(run_relax(mod, x), ref)


@pytest.mark.build
def test_requantize_ties_bit_exact():
    """Accumulators on exact .5 ties round half to even (M = 0.5 is exact)."""
    def build(bb, acc):
        d = bb.emit(relax.op.dequantize(acc, _c(0.5, "float32"), _c(0, "int32"), axis=1))
        return relax.op.quantize(d, _c(1.0, "float32"), _c(0, "int8"), axis=1, out_dtype="int8")

    mod = apply(IntegerRequantize(), function([("acc", (1, 8), "int32")], build))
    acc = np.array([[1, 3, 5, -1, -3, 255, 256, -300]], np.int32)
    out = run_relax(mod, acc)
    np.testing.assert_array_equal(out, [[0, 2, 2, 0, -2, 127, 127, -128]])
    np.testing.assert_array_equal(out, qref.requantize(acc, 0.5, 0, 0, "int8"))


def test_requantize_structure_identity():
    """quantize(dequantize(x)) with the same parameters is x."""
    def build(bb, x):
        return _q(_dq(bb, x, S_A, Z_A), S_A, Z_A)

    mod = apply(IntegerRequantize(), function([("x", (1, 4), "uint8")], build))
    expected = function([("x", (1, 4), "uint8")], lambda bb, x: x)
    tvm.ir.assert_structural_equal(mod, expected)


def test_sink_structure():
    def before(bb, x):
        return relax.op.reshape(_dq(bb, x, S_A, Z_A), [4])

    def after(bb, x):
        r = bb.emit(relax.op.reshape(x, [4]))
        return relax.op.dequantize(r, _c(S_A, "float32"), _c(Z_A, "uint8"), axis=0)

    got = apply(SinkDequantize(), function([("x", (2, 2), "uint8")], before))
    tvm.ir.assert_structural_equal(got, function([("x", (2, 2), "uint8")], after))
