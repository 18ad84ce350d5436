"""Property tests of the integer reference primitives (quantize / requantize)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tvmq import qref

_scales = st.floats(1e-6, 1e3, allow_nan=False, allow_infinity=False)


def _rne(frac: Fraction) -> int:
    floor = frac.numerator // frac.denominator
    rem = frac - floor
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and floor % 2):
        return floor + 1
    return floor


@given(st.floats(2.0 ** -40, 2.0 ** 29, allow_nan=False))
def test_multiplier_is_31_bit_and_close(real):
    m, n = qref.quantize_multiplier(real)
    if m[0] == 0:
        assert real < 2.0 ** -32
        return
    assert 2 ** 30 <= m[0] < 2 ** 31 and 1 <= n[0] <= 62
    assert abs(m[0] / 2.0 ** n[0] - real) <= real * 2.0 ** -31


@settings(max_examples=300)
@given(st.integers(-2 ** 31, 2 ** 31 - 1), st.floats(2.0 ** -30, 2.0 ** 8))
def test_fixed_point_multiply_is_exact_rne(acc, real):
    m, n = qref.quantize_multiplier(real)
    got = int(qref.fixed_point_multiply(acc, m[0], n[0]))
    assert got == _rne(Fraction(acc * int(m[0]), 2 ** int(n[0])))


@given(st.integers(-2 ** 20, 2 ** 20), st.integers(1, 20))
def test_ties_round_to_even(k, shift):
    # (2k+1) / 2 is an exact tie
    acc = 2 * k + 1
    got = int(qref.rounding_shift(np.int64(acc) << (shift - 1), shift))
    assert got == _rne(Fraction(acc, 2)) and got % 2 == 0


@settings(max_examples=200, deadline=None)
@given(st.floats(2.0 ** -30, 2.0 ** 8, width=32), st.integers(0, 2 ** 12))
def test_tie_free_bound_is_exact(real, offset):
    """Below ``tie_free_bound`` half-up equals RNE (brute force); ``bound + 1`` is a tie."""
    m, n = qref.quantize_multiplier(real)
    free = int(qref.tie_free_bound(m, n)[0])
    m, n = int(m[0]), int(n[0])
    if free < 0:  # m == 0 or 2**n | m: the product is always an integer
        assert m == 0 or m % (1 << n) == 0
        return
    tie = free + 1
    assert (tie * m) % (1 << n) == 1 << (n - 1)  # acc = 2**(n-1-t) lands on a half
    for acc in {free, -free, max(0, free - offset), -max(0, free - offset)} | \
            set(range(-min(free, 300), min(free, 300) + 1)):
        assert (acc * m + (1 << (n - 1))) >> n == _rne(Fraction(acc * m, 1 << n))


@given(st.integers(-2 ** 31, 2 ** 31 - 1), _scales, st.integers(0, 255))
def test_requantize_saturates(acc, real, zp):
    real = min(real, 2.0 ** 29)
    y = int(qref.requantize(np.int64(acc), real, 0, zp, "uint8"))
    assert 0 <= y <= 255
    m, n = qref.quantize_multiplier(float(np.float32(real)))
    exact = _rne(Fraction(acc * int(m[0]), 2 ** int(n[0]))) + zp
    assert abs(y - min(255, max(0, exact))) <= 1  # float32 rounding moves ties only


@settings(max_examples=300, deadline=None)
@given(st.integers(-2 ** 24 + 1, 2 ** 24 - 1), st.floats(2.0 ** -24, 2.0 ** 4),
       st.integers(-2, 2))
def test_requantize_rounds_like_float32(acc, real, nudge):
    """The integer rule equals onnxruntime's ``rint(float32(float32(acc) * float32(M)))``,
    also next to ties (``acc`` is moved onto the nearest half-integer product)."""
    M = np.float32(real)
    k = int(np.rint(acc * float(M)))
    acc = int(np.clip(np.rint((k + 0.5) / float(M)) + nudge, -2 ** 24 + 1, 2 ** 24 - 1)) \
        if nudge != 2 else acc
    ref = int(np.rint(np.float32(np.float32(acc) * M)))
    if abs(ref) >= 2 ** 21:
        return
    m, n = qref.quantize_multiplier(float(M))
    assert int(qref.fixed_point_multiply(acc, m[0], n[0], 21)) == ref


@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=16), _scales,
       st.integers(-128, 127))
def test_quantize_matches_onnx_rule(xs, scale, zp):
    x = np.array(xs, np.float32)
    got = qref.quantize(x, scale, zp, "int8", axis=0)
    expect = np.clip(np.rint(x / np.float32(scale)) + zp, -128, 127)
    np.testing.assert_array_equal(got, expect)


def test_quantize_ties_and_blocked():
    np.testing.assert_array_equal(qref.quantize([0.5, 1.5, 2.5, -0.5], 1.0, 0, "int8", axis=0),
                                  [0, 2, 2, 0])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    q = qref.quantize(x, np.array([[1.0, 2.0], [4.0, 8.0]]), 0, "int4", axis=1, block_size=2)
    np.testing.assert_array_equal(q, [[0, 1, 1, 2], [1, 1, 1, 1]])


@given(st.lists(st.integers(-8, 7), min_size=1, max_size=33))
def test_pack_roundtrip_int4(vals):
    packed = qref.pack_subbyte(vals, 4)
    assert packed.size == (len(vals) + 1) // 2
    np.testing.assert_array_equal(qref.unpack_subbyte(packed, 4, len(vals), True), vals)


@given(st.lists(st.integers(-2, 1), min_size=1, max_size=33))
def test_pack_roundtrip_int2(vals):
    packed = qref.pack_subbyte(vals, 2)
    np.testing.assert_array_equal(qref.unpack_subbyte(packed, 2, len(vals), True), vals)


def test_conv_reference_matches_float():
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, (1, 4, 5, 5))
    w = rng.randint(-128, 128, (4, 2, 3, 3))
    acc = qref.conv2d_int(x, w, 7, 0, (1, 1), (1, 1, 1, 1), (1, 1), groups=2)
    import torch

    ref = torch.nn.functional.conv2d(torch.tensor(x - 7.0, dtype=torch.float64),
                                     torch.tensor(w, dtype=torch.float64), padding=1, groups=2)
    np.testing.assert_array_equal(acc, ref.numpy().astype(np.int64))


def _ort_qlinear_add(dtype, a, b, sa, za, sb, zb, sc, zc):
    """onnxruntime's own QLinearAdd on ``a``, ``b`` (the fused form of DQ -> Add -> Q)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    t = TensorProto.UINT8 if dtype == "uint8" else TensorProto.INT8
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in
             (("sa", sa), ("sb", sb), ("sc", sc))]
    inits += [helper.make_tensor(n, t, [], [v]) for n, v in (("za", za), ("zb", zb), ("zc", zc))]
    node = helper.make_node("QLinearAdd", ["A", "sa", "za", "B", "sb", "zb", "sc", "zc"], ["C"],
                            domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", t, list(a.shape)),
                                            helper.make_tensor_value_info("B", t, list(b.shape))],
                              [helper.make_tensor_value_info("C", t, None)], inits)
    model = helper.make_model(graph, ir_version=9, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": a, "B": b})[0]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("seed", range(4))
def test_ort_add_table_matches_onnxruntime_on_every_pair(dtype, seed):
    rng = np.random.default_rng(seed)
    lo, hi = qref.dtype_range(dtype)
    sa, sb, sc = (float(np.float32(10 ** rng.uniform(-3, 0))) for _ in range(3))
    za, zb, zc = (int(rng.integers(lo, hi + 1)) for _ in range(3))
    vals = np.arange(lo, hi + 1).astype(dtype)
    a, b = np.repeat(vals, vals.size), np.tile(vals, vals.size)  # all 65,536 pairs
    got = qref.ort_add_table(sa, za, sb, zb, sc, zc, dtype)
    ref = _ort_qlinear_add(dtype, a, b, sa, za, sb, zb, sc, zc).reshape(got.shape)
    np.testing.assert_array_equal(got, ref)


def test_fma_f32_rounds_once():
    # 1 + 2**-24 is a float32 tie; the separately rounded product would lose the 2**-48 term
    a = np.float32(1 + 2 ** -23)
    b = np.float32(1 + 2 ** -23)  # a*b = 1 + 2**-22 + 2**-46
    c = np.float32(-1)
    assert qref.fma_f32(a, b, c) == np.float32(2 ** -22 + 2 ** -46)
    assert np.float32(a * b) + c == np.float32(2 ** -22)  # unfused: the 2**-46 term is lost


_DTYPES = st.sampled_from(["int8", "uint8", "int16"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(2.0 ** -12, 0.875, width=32), min_size=1, max_size=4),
       st.integers(-2 ** 18, 2 ** 18), _DTYPES, st.integers(0, 2 ** 30), st.booleans(),
       st.integers(-2 ** 31, 2 ** 31 - 1))
def test_int32_plan_equals_requantize(reals, offset, dtype, seed, relu, acc0):
    """The all-int32 form (``int32_requantize_plan``) equals RNE + clamp for every int32
    accumulator: its saturation points and their neighbours, the int32 extremes, random
    values across the unsaturated domain and anywhere; no int32 intermediate overflows
    (``apply_int32_plan`` checks). Per-channel multipliers and offsets."""
    m, n = qref.quantize_multiplier(qref.float32_multiplier(np.array(reals)))
    rng = np.random.default_rng(seed)
    offsets = offset + rng.integers(-1000, 1000, len(reals))
    qlo, qhi = qref.dtype_range(dtype)
    z = int(rng.integers(qlo, qhi + 1))
    lo, hi = (max(qlo, z), qhi) if relu else (qlo, qhi)
    plan = qref.int32_requantize_plan(m, n, offsets, z, lo, hi)
    if plan is None:  # a domain too wide for two int32 products, or one holding a tie
        free = qref.tie_free_bound(m, n)
        assert dtype == "int16" or np.min(reals) < 2.0 ** -9 or \
            np.any((free >= 0) & (free < 2 ** 17))
        return
    edges = np.concatenate([plan["a_lo"][None] + np.arange(-2, 3)[:, None],
                            plan["a_hi"][None] + np.arange(-2, 3)[:, None]])
    inside = rng.integers(plan["a_lo"], plan["a_hi"] + 1, (200, len(reals)))
    anywhere = rng.integers(-2 ** 31, 2 ** 31, (50, len(reals)))
    extremes = np.array([[-2 ** 31] * len(reals), [2 ** 31 - 1] * len(reals), [acc0] * len(reals)])
    acc = np.concatenate([edges, inside, anywhere, extremes])
    want = np.clip(qref.fixed_point_multiply(acc + offsets, m, n) + z, lo, hi)
    np.testing.assert_array_equal(qref.apply_int32_plan(acc, plan, axis=1), want)
    assert np.all(qref.fixed_point_multiply(plan["a_lo"] + offsets, m, n) + z == lo)
    assert np.all(qref.fixed_point_multiply(plan["a_hi"] + offsets, m, n) + z == hi)


def test_int32_plan_declines_ties_and_wide_domains():
    """M = 2**-6 with a wide unsaturated domain has exact halves (half-up would differ):
    no plan. A tiny multiplier's domain needs more than two int32 products: no plan.
    M = 0.3 on int8 applies, and its constants are int32."""
    for real in (2.0 ** -6, 0.5, 2.0 ** -20):
        m, n = qref.quantize_multiplier(np.float32(real))
        assert qref.int32_requantize_plan(m, n, 0, 0, -128, 127) is None
    m, n = qref.quantize_multiplier(np.float32(0.3))
    plan = qref.int32_requantize_plan(m, n, 0, 3, -128, 127)
    assert plan is not None and 1 <= plan["L"] <= 30
    for k in ("a_lo", "a_hi", "ml", "mh", "cl", "ch", "r"):
        assert np.all(np.abs(plan[k]) < 2 ** 31)
    acc = np.arange(-2000, 2000)
    np.testing.assert_array_equal(qref.apply_int32_plan(acc, plan, axis=0),
                                  qref.requantize(acc, np.float32(0.3), 0, 3, "int8"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(2.0 ** -12, 0.875, width=32), min_size=1, max_size=4),
       st.integers(-2 ** 18, 2 ** 18), _DTYPES, st.integers(0, 2 ** 30), st.booleans(),
       st.lists(st.floats(-0.5, 0.5), min_size=4, max_size=4))
def test_int32_plan_with_bias_residual(reals, offset, dtype, seed, relu, residuals):
    """With a float bias's residual (``qref.split_bias``) the product rounds half up at the
    fixed point's precision; the all-int32 form equals it for every int32 accumulator."""
    m, n = qref.quantize_multiplier(qref.float32_multiplier(np.array(reals)))
    rng = np.random.default_rng(seed)
    offsets = offset + rng.integers(-1000, 1000, len(reals))
    addend = qref.bias_addend(np.array(residuals[:len(reals)]), m)
    qlo, qhi = qref.dtype_range(dtype)
    z = int(rng.integers(qlo, qhi + 1))
    lo, hi = (max(qlo, z), qhi) if relu else (qlo, qhi)
    plan = qref.int32_requantize_plan(m, n, offsets, z, lo, hi, addend)
    if plan is None:
        return
    inside = rng.integers(plan["a_lo"], plan["a_hi"] + 1, (200, len(reals)))
    edges = np.concatenate([plan["a_lo"][None] + np.arange(-2, 3)[:, None],
                            plan["a_hi"][None] + np.arange(-2, 3)[:, None]])
    acc = np.concatenate([edges, inside, rng.integers(-2 ** 31, 2 ** 31, (50, len(reals)))])
    want = np.clip(qref.rounding_shift_half_up((acc + offsets) * m + addend, n) + z, lo, hi)
    np.testing.assert_array_equal(qref.apply_int32_plan(acc, plan, axis=1), want)
    res = np.array(residuals[:len(reals)]).reshape(1, -1)
    np.testing.assert_array_equal(
        qref.requantize(acc + offsets, np.array(reals), 0, z, dtype, lo=lo, hi=hi,
                        bias_residual=res), want)


def test_bias_residual_rounds_half_up_and_split():
    """An exact half of the fixed-point value rounds up (2.5 -> 3, -2.5 -> -2), unlike RNE;
    a bias on the accumulator grid up to float32 rounding has no residual, one off it keeps
    the rest (exactly: b_int * s + residual == bias in float64 up to float32 rounding)."""
    m, n = qref.quantize_multiplier(np.float32(0.5))
    y = qref.requantize(np.array([5, -5]), 0.5, bias_residual=np.array([0.0]))
    np.testing.assert_array_equal(y, [3, -2])
    np.testing.assert_array_equal(qref.requantize(np.array([5, -5]), 0.5), [2, -2])
    s = np.float32(0.0123)
    on = (np.array([3, -700, 123456]) * np.float64(s)).astype(np.float32)
    b, r = qref.split_bias(on, s)
    np.testing.assert_array_equal(b, [3, -700, 123456])
    assert not np.any(r)
    off = np.array([0.3 * s, -2.25 * s], np.float32)
    b, r = qref.split_bias(off, s)
    np.testing.assert_array_equal(b, [0, -2])
    np.testing.assert_allclose(b * np.float64(s) + r, off, rtol=1e-6)
    assert np.all(qref.bias_addend(np.array([0.5]), m) % (m & -m) == 0)
