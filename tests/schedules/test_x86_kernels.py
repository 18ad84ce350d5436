"""x86 int8 kernels (VNNI and AVX2 16x4 intrinsics) against tvmq.qref, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import HOST_FLAGS, ZNVER4, to_blocked
from tvmq import qref
from tvmq._tvm import tensor, tvm
from tvmq.schedules import blocked, kernels, tiling
from tvmq.schedules.strategy import strategy_for
from tvmq.schedules.x86 import AVX2_16x4, VNNI_16x4, select_intrin
from tvmq.schedules.x86.intrin import DW_VNNI_16x4

pytestmark = pytest.mark.build

CASCADELAKE = {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}  # VNNI, no VBMI
HASWELL = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}


needs_vnni = pytest.mark.skipif("avx512_vnni" not in HOST_FLAGS, reason="host lacks AVX-512 VNNI")
needs_avx2 = pytest.mark.skipif("avx2" not in HOST_FLAGS, reason="host lacks AVX2")
# znver4 builds of depthwise convs use vpermb (AVX-512 VBMI)
needs_vbmi = pytest.mark.skipif("avx512vbmi" not in HOST_FLAGS, reason="host lacks AVX-512 VBMI")


def _rand(rng, shape, dtype):
    """Random values over ``dtype``'s whole range (``int4``/``int2``: held in int8)."""
    lo, hi = qref.dtype_range(dtype)
    return rng.integers(lo, hi + 1, shape).astype(dtype if dtype[-1] in "68" else "int8")


def _run(lib, *arrays, out_shape):
    args = [tensor(a) for a in arrays if a is not None] + [tensor(np.zeros(out_shape, "int32"))]
    lib(*args)
    return args[-1].numpy()


def _check_conv(rng, target, n, c, h, w, o, k, stride, pad, in_dtype, dilation=1, bits=8):
    x, wt = _rand(rng, (n, c, h, w), in_dtype), _rand(rng, (o, c, k, k), f"int{bits}")
    pads = (pad,) * 4
    lib, wp, corr = kernels.build_conv_kernel(x.shape, wt, in_dtype, tvm.target.Target(target),
                                              strides=(stride, stride), padding=pads,
                                              dilation=(dilation, dilation), bits=bits)
    # sub-byte weights are stored 8 // bits per byte
    assert wp.nbytes == blocked.pack_weight(wt, 16, 4).nbytes * bits // 8
    ref = qref.conv2d_int(x, wt, strides=(stride, stride), padding=pads,
                          dilation=(dilation, dilation))
    got = _run(lib, x, wp, corr, out_shape=ref.shape)
    assert np.array_equal(got, ref), f"max |diff| {np.abs(got - ref).max()}"
    return lib


def test_select_intrin_follows_target_features():
    assert select_intrin(tvm.target.Target(ZNVER4)) == VNNI_16x4
    assert select_intrin(tvm.target.Target(HASWELL)) == AVX2_16x4
    assert select_intrin(tvm.target.Target({"kind": "llvm", "mcpu": "core2"})) is None


def test_depthwise_dot_needs_vbmi():
    """The byte transpose of the 4-tap depthwise kernel is one vpermb only with VBMI."""
    assert strategy_for(tvm.target.Target(ZNVER4)).dw_intrin == DW_VNNI_16x4
    assert strategy_for(tvm.target.Target(CASCADELAKE)).dw_intrin is None
    assert strategy_for(tvm.target.Target(HASWELL)).dw_intrin is None


@pytest.mark.parametrize("kw,stride,pads,out_w", [(3, 1, (1, 1, 1, 1), 12), (3, 2, (0, 0, 1, 1), 6),
                                                  (5, 1, (2, 2, 2, 2), 9), (7, 2, (3, 3, 3, 3), 4)])
def test_depthwise_dot_padding_covers_every_tap_group(kw, stride, pads, out_w):
    """The last output pixel's 4-tap groups read inside the widened row; nothing else moves."""
    in_w = (out_w - 1) * stride + kw - pads[1] - pads[3]
    pt, pl, pb, pr = blocked.depthwise_dot_padding(pads, in_w, kw, stride, out_w)
    assert (pt, pl, pb) == pads[:3] and pr >= pads[3]
    groups = blocked.depthwise_dot_groups(kw)
    assert in_w + pl + pr == max(in_w + sum(pads[1::2]), (out_w - 1) * stride + 4 * groups)


def test_pack_depthwise_weight_dot_zero_fills_missing_taps(rng):
    w = _rand(rng, (32, 1, 3, 5), "int8")
    p = blocked.pack_depthwise_weight_dot(w, 16)
    assert p.shape == (2, 3, 2, 16, 4)
    # [cb, kh, g, ci, k] holds tap 4g + k of channel 16cb + ci
    np.testing.assert_array_equal(p[1, 2, 0, 3, :], w[19, 0, 2, 0:4])
    np.testing.assert_array_equal(p[1, 2, 1, 3, :], [w[19, 0, 2, 4], 0, 0, 0])


@needs_vnni
@pytest.mark.parametrize("n,c,h,w,o,k,stride,pad,in_dtype", [
    (1, 16, 8, 8, 16, 3, 1, 1, "uint8"),       # whole blocks
    (1, 3, 11, 13, 20, 3, 2, 1, "int8"),       # odd channels, stride 2, signed input
    (2, 13, 9, 9, 33, 1, 1, 0, "uint8"),       # batch 2, 1x1, partial blocks
    (1, 5, 15, 15, 16, 7, 2, 3, "uint8"),      # 7x7 stem-like
    (1, 32, 7, 7, 48, 3, 1, 0, "int8"),        # no padding, OW=5
])
def test_conv_vnni_exact(rng, n, c, h, w, o, k, stride, pad, in_dtype):
    lib = _check_conv(rng, ZNVER4, n, c, h, w, o, k, stride, pad, in_dtype)
    assert "vpdpbusd" in lib.mod.inspect_source("asm")


@needs_vnni
def test_conv_dilated_exact(rng):
    _check_conv(rng, ZNVER4, 1, 8, 12, 12, 16, 3, 1, 2, "uint8", dilation=2)


@needs_avx2
@pytest.mark.parametrize("in_dtype", ["uint8", "int8"])
def test_conv_avx2_exact(rng, in_dtype):
    lib = _check_conv(rng, HASWELL, 1, 7, 9, 9, 18, 3, 1, 1, in_dtype)
    asm = lib.mod.inspect_source("asm")
    assert "vpmaddwd" in asm and "vpdpbusd" not in asm


@needs_vnni
@pytest.mark.parametrize("m,k,n,in_dtype", [(1, 64, 16, "uint8"), (7, 37, 40, "int8"),
                                            (16, 256, 100, "uint8")])
def test_dense_vnni_exact(rng, m, k, n, in_dtype):
    x, wt = _rand(rng, (m, k), in_dtype), _rand(rng, (k, n), "int8")
    lib, wp, corr = kernels.build_dense_kernel(m, wt, in_dtype, tvm.target.Target(ZNVER4))
    got = _run(lib, x, wp, corr, out_shape=(m, n))
    assert np.array_equal(got, x.astype(np.int64) @ wt.astype(np.int64))


@needs_vnni
@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("n,c,h,w,o,k,stride,pad,in_dtype", [
    (1, 16, 8, 8, 16, 3, 1, 1, "uint8"),
    (2, 13, 9, 9, 33, 1, 2, 0, "int8"),        # batch 2, partial blocks, stride 2
    (1, 5, 15, 15, 20, 7, 2, 3, "uint8"),      # 7x7, OW=8
])
def test_conv_subbyte_weights_decoded_in_kernel_exact(rng, bits, n, c, h, w, o, k, stride, pad,
                                                      in_dtype):
    lib = _check_conv(rng, ZNVER4, n, c, h, w, o, k, stride, pad, in_dtype, bits=bits)
    assert "vpdpbusd" in lib.mod.inspect_source("asm")


@needs_vnni
@pytest.mark.parametrize("level,c,h,o,k", [
    ("block", 64, 14, 64, 3),  # 4 output-channel blocks of 9 KiB: decoded once per block
    ("row", 8, 20, 16, 3),     # one block, two 10-pixel tiles a row: decoded once per row
    ("tile", 16, 6, 16, 1),    # one tile a row: decoded inside the reduction loop
])
def test_subbyte_decode_levels_exact(rng, monkeypatch, level, c, h, o, k):
    """Each place the int4 decode can be hoisted to gives the reference result."""
    seen = []
    choose = tiling._decode_level
    monkeypatch.setattr(tiling, "_decode_level", lambda *a: seen.append(choose(*a)) or seen[-1])
    _check_conv(rng, ZNVER4, 1, c, h, h, o, k, 1, k // 2, "uint8", bits=4)
    assert seen == [level]


@needs_avx2
def test_conv_int4_avx2_exact(rng):
    _check_conv(rng, HASWELL, 1, 7, 9, 9, 18, 3, 1, 1, "int8", bits=4)


def test_pair_sum_max_takes_same_sign_pairs():
    """``vpmaddubsw`` adds neighbouring products (2j, 2j+1) in int16: with u8 activations the
    extreme sum of a pair is 255 x the larger same-sign sum of magnitudes."""
    wp = np.zeros((1, 1, 1, 1, 16, 4), np.int8)
    assert blocked.pair_sum_max(wp) == 0
    wp[0, 0, 0, 0, 3] = [64, 64, -64, -64]          # 255 * 128 = 32640 fits
    assert blocked.pair_sum_max(wp) == 128 and blocked.pairs_fit_int16(wp)
    wp[0, 0, 0, 0, 5] = [127, -128, 0, 0]           # opposite signs: 255 * 128 at most
    assert blocked.pairs_fit_int16(wp)
    wp[0, 0, 0, 0, 7] = [0, 0, -65, -64]            # 255 * 129 = 32895 saturates
    assert blocked.pair_sum_max(wp) == 129 and not blocked.pairs_fit_int16(wp)
    assert blocked.pairs_fit_int16(wp, act_max=127)  # any int8 pair with 7-bit activations
    assert blocked.pair_sum_max(np.full((2, 4), -128, np.int8)) == 256
    assert not blocked.pairs_fit_int16(np.full((2, 4), -128, np.int8), act_max=128)
    # only the strategies that use the annotation get it (others' kernels stay as they were)
    assert blocked.weight_attrs(np.ones((1, 4), np.int8)) is None
    assert blocked.weight_attrs(np.ones((1, 4), np.int8), pairs=True) == {
        blocked.WEIGHT_PAIRS_ATTR: 1}


def _pairs_extreme_weights(rng, o, c, k):
    """7-bit weights with every pair at the int16 limit's edge: neighbouring input channels
    (the pairs ``vpmaddubsw`` adds) both +64 or both -64 in some places, random elsewhere."""
    w = rng.integers(-64, 65, (o, c, k, k)).astype(np.int8)
    w[0::3, 0::4] = 64
    w[0::3, 1::4] = 64
    w[1::3, 2::4] = -64
    w[1::3, 3::4] = -64
    return w


@needs_avx2
@pytest.mark.parametrize("n,c,h,o,k,stride,pad,in_dtype", [
    (1, 16, 9, 32, 3, 1, 1, "uint8"),
    (1, 7, 11, 18, 3, 2, 1, "int8"),       # partial blocks, stride 2
    (2, 13, 8, 33, 1, 1, 0, "uint8"),      # 1x1, batch 2
])
def test_conv_avx2_pairs_exact_at_int16_edge(rng, n, c, h, o, k, stride, pad, in_dtype):
    """7-bit weights run ``vpmaddubsw``; with activations at 255 (uint8) or 127 (int8 +128)
    and same-sign pairs of 64, a pair sums to exactly 255 * 128 = 32640: still no
    saturation, the result equals tvmq.qref's bit for bit."""
    wt = _pairs_extreme_weights(rng, o, c, k)
    x = _rand(rng, (n, c, h, h), in_dtype)
    x[..., ::2, :] = np.iinfo(in_dtype).max  # half the rows at the top of the range
    pads = (pad,) * 4
    lib, wp, corr = kernels.build_conv_kernel(x.shape, wt, in_dtype, tvm.target.Target(HASWELL),
                                              strides=(stride, stride), padding=pads)
    ref = qref.conv2d_int(x, wt, strides=(stride, stride), padding=pads)
    got = _run(lib, x, wp, corr, out_shape=ref.shape)
    assert np.array_equal(got, ref), f"max |diff| {np.abs(got - ref).max()}"
    asm = lib.mod.inspect_source("asm")
    assert "vpmaddubsw" in asm


@needs_avx2
def test_conv_avx2_full_range_weights_keep_vpmaddwd(rng):
    """Weights whose pairs can saturate int16 (here 127 next to 127, and -128 next to -128)
    take the exact ``vpmaddwd`` kernel; ``vpmaddubsw`` would clip those sums at 32767."""
    wt = _rand(rng, (16, 8, 3, 3), "int8")
    wt[0, 0:2] = 127
    wt[1, 2:4] = -128
    x = np.full((1, 8, 6, 6), 255, np.uint8)
    lib, wp, corr = kernels.build_conv_kernel(x.shape, wt, "uint8", tvm.target.Target(HASWELL),
                                              padding=(1, 1, 1, 1))
    ref = qref.conv2d_int(x, wt, padding=(1, 1, 1, 1))
    assert np.array_equal(_run(lib, x, wp, corr, out_shape=ref.shape), ref)
    asm = lib.mod.inspect_source("asm")
    assert "vpmaddwd" in asm and "vpmaddubsw" not in asm


@needs_avx2
@pytest.mark.parametrize("m,k,n,lo,hi", [(1, 64, 16, -64, 64), (7, 37, 40, -64, 64),
                                         (5, 100, 33, -128, 127)])
def test_dense_avx2_exact(rng, m, k, n, lo, hi):
    x = np.full((m, k), 255, np.uint8)
    x[1::2] = rng.integers(0, 256, x[1::2].shape)
    wt = rng.integers(lo, hi + 1, (k, n)).astype(np.int8)
    wt[0:2, 0] = hi
    lib, wp, corr = kernels.build_dense_kernel(m, wt, "uint8", tvm.target.Target(HASWELL))
    got = _run(lib, x, wp, corr, out_shape=(m, n))
    assert np.array_equal(got, x.astype(np.int64) @ wt.astype(np.int64))
    assert ("vpmaddubsw" in lib.mod.inspect_source("asm")) == (hi <= 64)


@needs_vnni
@pytest.mark.parametrize("bits,m,k,n", [(4, 1, 64, 16), (4, 7, 37, 40), (2, 3, 100, 33)])
def test_dense_subbyte_exact(rng, bits, m, k, n):
    x, wt = _rand(rng, (m, k), "uint8"), _rand(rng, (k, n), f"int{bits}")
    lib, wp, corr = kernels.build_dense_kernel(m, wt, "uint8", tvm.target.Target(ZNVER4),
                                               bits=bits)
    got = _run(lib, x, wp, corr, out_shape=(m, n))
    assert np.array_equal(got, x.astype(np.int64) @ wt.astype(np.int64))


def _narrow(rng, shape, bits):
    """``bits``-bit values held in int8, both range ends included."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = rng.integers(lo, hi + 1, shape).astype(np.int8)
    w.flat[0], w.flat[-1] = lo, hi
    return w


@needs_avx2
@pytest.mark.parametrize("bits,level,c,h,o,k", [
    (3, "block", 64, 14, 64, 3),   # each place the decode can be hoisted to (see above)
    (6, "row", 8, 20, 16, 3),
    (5, "tile", 16, 6, 16, 1),
    (7, "tile", 13, 7, 33, 3),     # partial channel blocks
])
def test_conv_planar_weights_decoded_in_kernel_exact(rng, monkeypatch, bits, level, c, h, o,
                                                     k):
    """3/5/6/7-bit weights in byte planes (``bits / 8`` of the int8 bytes) decoded inside
    the kernel, at each decode level: exact."""
    seen = []
    choose = tiling._decode_level
    monkeypatch.setattr(tiling, "_decode_level", lambda *a: seen.append(choose(*a)) or seen[-1])
    x, wt = _rand(rng, (1, c, h, h), "uint8"), _narrow(rng, (o, c, k, k), bits)
    pads = (k // 2,) * 4
    lib, wp, corr = kernels.build_conv_kernel(x.shape, wt, "uint8", tvm.target.Target(HASWELL),
                                              padding=pads, bits=bits)
    assert wp.nbytes == blocked.pack_weight(wt, 16, 4).nbytes * bits // 8
    ref = qref.conv2d_int(x, wt, padding=pads)
    np.testing.assert_array_equal(_run(lib, x, wp, corr, out_shape=ref.shape), ref)
    assert seen == [level]


@needs_avx2
@pytest.mark.parametrize("bits,m,k,n", [(3, 1, 64, 16), (6, 7, 37, 40), (7, 3, 100, 33)])
def test_dense_planar_exact(rng, bits, m, k, n):
    x, wt = _rand(rng, (m, k), "uint8"), _narrow(rng, (k, n), bits)
    lib, wp, corr = kernels.build_dense_kernel(m, wt, "uint8", tvm.target.Target(HASWELL),
                                               bits=bits)
    got = _run(lib, x, wp, corr, out_shape=(m, n))
    assert np.array_equal(got, x.astype(np.int64) @ wt.astype(np.int64))


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
@pytest.mark.parametrize("ob,ib", [(16, 4), (4, 4)])
def test_pack_planar_blocked_round_trips(rng, bits, ob, ib):
    """NumPy decode of the byte planes (the rule the kernel implements) gives back W."""
    from tvmq.schedules.blocked_planar import pack_planar_blocked

    wp = _narrow(rng, (3, 2, ob, ib), bits)
    stored = pack_planar_blocked(wp, bits)
    g = ob * ib // 8
    assert stored.shape == (3, 2, bits, g) and stored.dtype == np.int8
    word = sum(stored.view(np.uint8).astype(np.int64)[..., k, :] << (8 * k) for k in range(bits))
    fields = np.stack([(word >> (bits * h)) & ((1 << bits) - 1) for h in range(8)], axis=-2)
    got = fields.reshape(3, 2, ob, ib)  # value h * G + j of the block, row-major (oi, ci)
    got = np.where(got >= 1 << (bits - 1), got - (1 << bits), got)
    np.testing.assert_array_equal(got, wp)


@pytest.mark.parametrize("bits", [3, 7])
@pytest.mark.parametrize("ob,ib", [(16, 4), (4, 4)])
def test_planar_decode_compute_exact(rng, bits, ob, ib):
    """The TE decode of byte planes (unscheduled, Arm's ob = 4 too) gives back W."""
    from tvmq._tvm import te
    from tvmq.schedules.blocked_planar import decode_planar_weight, pack_planar_blocked

    wp = _narrow(rng, (2, 3, ob, ib), bits)
    stored = pack_planar_blocked(wp, bits)
    wq = te.placeholder(stored.shape, "int8", "wq")
    out = decode_planar_weight(wq, bits, ob, ib, "decode")
    lib = tvm.compile(te.create_prim_func([wq, out]), target="llvm")
    got = tensor(np.zeros(wp.shape, np.int8))
    lib(tensor(stored), got)
    np.testing.assert_array_equal(got.numpy(), wp)


def _to_blocked(a):
    return to_blocked(a, 16)


@needs_vnni
@needs_vbmi
@pytest.mark.parametrize("kind,n,c,h,o,k,stride,pad", [
    ("conv", 1, 32, 9, 48, 3, 1, 1),
    ("conv", 2, 16, 10, 32, 1, 2, 0),     # 1x1 stride 2, batch 2
    ("conv", 1, 64, 7, 16, 3, 1, 1),
    ("dw", 1, 32, 11, 32, 3, 1, 1),
    ("dw", 1, 48, 12, 48, 3, 2, 1),       # stride 2
    ("dw", 2, 16, 9, 16, 5, 2, 2),        # two 4-tap groups per row, batch 2
    ("dw", 1, 16, 10, 16, 3, 2, 0),       # no padding: the row is widened for the last group
    ("dw", 1, 32, 7, 32, 7, 1, 3),        # 7x7, 7-wide rows (one register tile a row)
])
def test_blocked_layout_kernels_exact(rng, kind, n, c, h, o, k, stride, pad):
    """NCHW16c in, NCHW16c out (the layout integer layers exchange inside a model)."""
    x = _rand(rng, (n, c, h, h), "uint8")
    conv = dict(strides=(stride, stride), padding=(pad,) * 4, layout="blocked")
    target = tvm.target.Target(ZNVER4)
    if kind == "conv":
        wt = _rand(rng, (o, c, k, k), "int8")
        lib, wp, corr = kernels.build_conv_kernel(x.shape, wt, "uint8", target, **conv)
        ref = qref.conv2d_int(x, wt, strides=(stride, stride), padding=(pad,) * 4)
    else:
        wt = _rand(rng, (c, 1, k, k), "int8")
        lib, wp, corr = kernels.build_depthwise_kernel(x.shape, wt, "uint8", target, **conv)
        assert wp.shape == (c // 16, k, blocked.depthwise_dot_groups(k), 16, 4)  # dot kernel
        ref = qref.conv2d_int(x, wt, strides=(stride, stride), padding=(pad,) * 4, groups=c)
    got = _run(lib, _to_blocked(x), wp, corr, out_shape=_to_blocked(ref).shape)
    np.testing.assert_array_equal(got, _to_blocked(ref))


@needs_vnni
@needs_vbmi
@pytest.mark.parametrize("target,dilation,stride", [(CASCADELAKE, 1, 1), (CASCADELAKE, 1, 2),
                                                    (ZNVER4, 2, 1)])
def test_blocked_depthwise_without_dot_kernel_exact(rng, target, dilation, stride):
    """Per-tap multiply-adds: targets without VBMI, and dilated kernels on targets with it."""
    x, wt = _rand(rng, (1, 32, 13, 13), "uint8"), _rand(rng, (32, 1, 3, 3), "int8")
    conv = dict(strides=(stride, stride), padding=(2,) * 4, dilation=(dilation, dilation))
    lib, wp, corr = kernels.build_depthwise_kernel(x.shape, wt, "uint8", tvm.target.Target(target),
                                                   layout="blocked", **conv)
    assert wp.ndim == 4  # [C/16, KH, KW, pixels * 16]: not the dot kernel's [.., G, 16, 4]
    ref = qref.conv2d_int(x, wt, groups=32, **conv)
    got = _run(lib, _to_blocked(x), wp, corr, out_shape=_to_blocked(ref).shape)
    np.testing.assert_array_equal(got, _to_blocked(ref))


@pytest.mark.parametrize("bits,ob", [(4, 16), (2, 16), (4, 4), (2, 4)])
def test_pack_subbyte_blocked_round_trips(rng, bits, ob):
    """NumPy decode of the stored bytes (the rule the kernel implements) gives back W."""
    wp = _rand(rng, (3, 2, ob, 4), f"int{bits}")
    stored = blocked.pack_subbyte_blocked(wp, bits)
    per, g = 8 // bits, ob // (8 // bits)
    assert stored.shape == (3, 2, g, 4) and stored.dtype == np.int8
    u = stored.view(np.uint8).astype(np.int16)
    got = np.concatenate([((u >> (bits * h)) & ((1 << bits) - 1)) for h in range(per)], axis=-2)
    got = np.where(got >= 1 << (bits - 1), got - (1 << bits), got)
    np.testing.assert_array_equal(got, wp)


def test_pack_subbyte_blocked_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"outside the int4 range \[-8, 7\]"):
        blocked.pack_subbyte_blocked(np.full((1, 16, 4), 8, np.int8), 4)


@needs_vnni
@pytest.mark.parametrize("c,h,k,stride,pad,in_dtype", [(16, 12, 3, 1, 1, "uint8"),
                                                       (13, 9, 3, 2, 1, "int8"),
                                                       (8, 11, 5, 1, 2, "uint8")])
def test_depthwise_exact(rng, c, h, k, stride, pad, in_dtype):
    x, wt = _rand(rng, (2, c, h, h), in_dtype), _rand(rng, (c, 1, k, k), "int8")
    pads = (pad,) * 4
    lib, w_, corr = kernels.build_depthwise_kernel(x.shape, wt, in_dtype,
                                                   tvm.target.Target(ZNVER4),
                                                   strides=(stride, stride), padding=pads)
    ref = qref.conv2d_int(x, wt, strides=(stride, stride), padding=pads, groups=c)
    assert np.array_equal(_run(lib, x, w_, corr, out_shape=ref.shape), ref)


@needs_vnni
@pytest.mark.slow
@pytest.mark.parametrize("c,h,o,k,stride", [(64, 56, 64, 3, 1), (128, 56, 128, 3, 2),
                                            (256, 14, 256, 1, 1), (512, 7, 512, 3, 1),
                                            (3, 224, 64, 7, 2)])
def test_resnet_convs_exact(rng, c, h, o, k, stride):
    _check_conv(rng, ZNVER4, 1, c, h, h, o, k, stride, k // 2, "uint8")


@needs_avx2
def test_model_7bit_layers_run_vpmaddubsw_same_outputs_as_vpmaddwd(tmp_path, monkeypatch):
    """Inside a compiled model (AVX2 target): the layer with 7-bit weights runs
    ``vpmaddubsw``, the 8-bit one ``vpmaddwd``, and the outputs equal those of the build with
    ``vpmaddwd`` everywhere, bit for bit, on inputs that drive the activations to 255."""
    import dataclasses

    import onnx
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    import tvmq
    from tvmq.boards import get_board

    rng = np.random.default_rng(0)
    w7 = rng.integers(-64, 65, (16, 8, 3, 3)).astype(np.int8)
    w7[:, 0:2] = 64  # same-sign pairs at the edge: 255 * 128 = 32640
    w8 = rng.integers(-127, 128, (16, 16, 3, 3)).astype(np.int8)
    consts = {"w7": w7, "w8": w8, "ws": np.float32(0.01), "wz": np.int8(0),
              "xs": np.float32(0.02), "xz": np.uint8(0), "ys": np.float32(0.05),
              "yz": np.uint8(0)}
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             h.make_node("DequantizeLinear", ["w7", "ws", "wz"], ["w7d"]),
             h.make_node("Conv", ["xd", "w7d"], ["c1"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("QuantizeLinear", ["r1", "ys", "yz"], ["r1q"]),
             h.make_node("DequantizeLinear", ["r1q", "ys", "yz"], ["r1d"]),
             h.make_node("DequantizeLinear", ["w8", "ws", "wz"], ["w8d"]),
             h.make_node("Conv", ["r1d", "w8d"], ["c2"], pads=[1, 1, 1, 1]),
             h.make_node("QuantizeLinear", ["c2", "ys", "yz"], ["yq"]),
             h.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, 8, 10, 10])],
                         [h.make_tensor_value_info("y", TP.FLOAT, [1, 16, 10, 10])],
                         [nh.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    host = get_board("host")
    board = dataclasses.replace(host, target={**dict(host.target), "mcpu": "haswell"})
    x = rng.uniform(0, 6, (1, 8, 10, 10)).astype(np.float32)
    x[..., ::2, :] = 100.0  # quantizes to 255

    def build():
        art = tvmq.compile(str(tmp_path / "m.onnx"), board=board)
        asm = art.executable.mod.imports[0].inspect_source("asm")
        return art.run([x])[0], asm.count("vpmaddubsw"), asm.count("vpmaddwd")

    fast, ubs, wd = build()
    assert ubs and wd  # the 7-bit layer on vpmaddubsw, the 8-bit one on vpmaddwd
    monkeypatch.setattr(blocked, "pairs_fit_int16", lambda wp, act_max=255: False)
    exact, ubs_off, _ = build()
    assert ubs_off == 0
    np.testing.assert_array_equal(fast, exact)
