"""LowerIntegerConv (+ IntegerRequantize): structure and bit-exactness vs tvmq.qref."""
from __future__ import annotations

import numpy as np
import pytest

from tvmq import qref
from tvmq._tvm import relax, tvm
from tvmq.passes import IntegerRequantize, LowerIntegerConv

from .conftest import apply, function, run_relax


def _c(v, dtype):
    return relax.const(np.asarray(v).astype(dtype), dtype)


def _qdq_conv(x_shape, w, sx, zx, sw, zw, sy, zy, bias=None, groups=1, act=None,
              x_dtype="uint8", padding=(1, 1, 1, 1), w_dtype="int8"):
    """quantize(act(conv(dequantize(x), dequantize(W)) + dequantize(b)))."""
    def build(bb, x):
        xd = bb.emit(relax.op.dequantize(x, _c(sx, "float32"), _c(zx, x_dtype), axis=1))
        wd = bb.emit(relax.op.dequantize(_c(w, w_dtype), _c(sw, "float32"), _c(zw, w_dtype),
                                         axis=0))
        y = bb.emit(relax.op.nn.conv2d(xd, wd, padding=list(padding), groups=groups))
        if bias is not None:
            bd = bb.emit(relax.op.dequantize(_c(bias, "int32"), _c(np.float32(sx) * sw,
                                                                   "float32"),
                                             _c(np.zeros_like(bias), "int32"), axis=0))
            y = bb.emit(relax.op.add(y, bb.emit(relax.op.reshape(bd, [1, -1, 1, 1]))))
        if act == "relu":
            y = bb.emit(relax.op.nn.relu(y))
        elif act == "relu6":
            y = bb.emit(relax.op.clip(y, 0.0, 6.0))
        return relax.op.quantize(y, _c(sy, "float32"), _c(zy, x_dtype), axis=1,
                                 out_dtype=x_dtype)
    return function([("x", x_shape, x_dtype)], build)


def _lower(mod):
    return apply(IntegerRequantize(), apply(LowerIntegerConv(), mod))


def _float_free(mod):
    text = mod.script(show_meta=False)
    return "float" not in text.split("R.func_attr")[-1] if "float" in text else True


@pytest.mark.build
@pytest.mark.parametrize("case", ["asym_uint8_relu", "int8_sym_relu6", "depthwise",
                                  "weight_zero_point"])
def test_conv_bit_exact_vs_reference(case, rng):
    c_in, c_out, groups, x_dtype, zx, act, w_dtype = 4, 6, 1, "uint8", 131, "relu", "int8"
    if case == "int8_sym_relu6":
        x_dtype, zx, act = "int8", 0, "relu6"
    if case == "depthwise":
        c_out, groups = 4, 4
    w = rng.randint(-127, 128, (c_out, c_in // groups, 3, 3))
    sw = rng.uniform(0.001, 0.01, c_out).astype(np.float32)
    zw = np.zeros(c_out, np.int64)
    if case == "weight_zero_point":
        w_dtype, w = "uint8", rng.randint(0, 256, (c_out, c_in, 3, 3))
        zw = rng.randint(100, 150, c_out)
    bias = rng.randint(-5000, 5000, c_out)
    sx, sy, zy = np.float32(0.02), np.float32(0.05), 3 if x_dtype == "uint8" else -2
    mod = _qdq_conv((1, c_in, 6, 6), w, sx, zx, sw, zw, sy, zy, bias, groups, act, x_dtype,
                    w_dtype=w_dtype)
    lowered = _lower(mod)
    assert "R.nn.conv2d" in lowered.script() and 'out_dtype="int32"' in lowered.script()
    assert "dequantize" not in lowered.script() and "quantize(" not in lowered.script()
    lo, hi = qref.dtype_range(x_dtype)
    x = rng.randint(lo, hi + 1, (1, c_in, 6, 6)).astype(x_dtype)
    acc = qref.conv2d_int(x, w, zx, zw, padding=(1, 1, 1, 1), groups=groups)
    acc = acc + bias.reshape(1, -1, 1, 1)
    bounds = qref.activation_bounds(act if act == "relu" else "clip", sy, zy, x_dtype,
                                    (0.0, 6.0))
    ref = qref.requantize(acc, (np.float32(sx) * sw).astype(np.float32).astype(np.float64)
                          / np.float64(sy), 0, zy, x_dtype, axis=1, lo=bounds[0],
                          hi=bounds[1])
    np.testing.assert_array_equal(run_relax(lowered, x), ref)


@pytest.mark.build
def test_matmul_bit_exact_vs_reference(rng):
    w = rng.randint(-127, 128, (5, 8))  # ONNX Gemm weight (N, K), transposed in the graph
    sw = rng.uniform(0.001, 0.01, 5).astype(np.float32)
    sx, zx, sy, zy = np.float32(0.03), 120, np.float32(0.04), 128

    def build(bb, x):
        xd = bb.emit(relax.op.dequantize(x, _c(sx, "float32"), _c(zx, "uint8"), axis=1))
        wd = bb.emit(relax.op.dequantize(_c(w, "int8"), _c(sw, "float32"),
                                         _c(np.zeros(5), "int8"), axis=0))
        y = bb.emit(relax.op.matmul(xd, bb.emit(relax.op.permute_dims(wd, [1, 0]))))
        return relax.op.quantize(y, _c(sy, "float32"), _c(zy, "uint8"), axis=1,
                                 out_dtype="uint8")

    lowered = _lower(function([("x", (2, 8), "uint8")], build))
    assert "matmul" in lowered.script() and "dequantize" not in lowered.script()
    x = rng.randint(0, 256, (2, 8)).astype("uint8")
    acc = qref.matmul_int(x, w.T, zx, 0)
    ref = qref.requantize(acc, (sx * sw).astype(np.float32) / np.float64(sy), 0, zy, "uint8",
                          axis=1)
    np.testing.assert_array_equal(run_relax(lowered, x), ref)


def test_structure_symmetric_int8_conv():
    """Before: dequantize -> conv2d -> quantize; Expected: int8 conv2d with int32 output."""
    w = np.ones((2, 1, 1, 1), np.int64)
    before = _qdq_conv((1, 1, 2, 2), w, 0.5, 0, np.float32([0.25, 0.25]), np.zeros(2), 0.5, 0,
                       x_dtype="int8", padding=(0, 0, 0, 0))
    got = apply(LowerIntegerConv(), before)

    def expected_body(bb, x):
        acc = bb.emit(relax.op.nn.conv2d(x, _c(w, "int8"), out_dtype="int32"))
        deq = bb.emit(relax.op.dequantize(acc, _c([0.125, 0.125], "float32"),
                                          _c([0, 0], "int32"), axis=1))
        return relax.op.quantize(deq, _c(0.5, "float32"), _c(0, "int8"), axis=1,
                                 out_dtype="int8")

    expected = function([("x", (1, 1, 2, 2), "int8")], expected_body)
    tvm.ir.assert_structural_equal(got, expected)


def test_non_quantized_conv_is_left_alone():
    def build(bb, x):
        return relax.op.nn.conv2d(x, _c(np.ones((2, 1, 1, 1)), "float32"))

    mod = function([("x", (1, 1, 2, 2), "float32")], build)
    tvm.ir.assert_structural_equal(apply(LowerIntegerConv(), mod), mod)
