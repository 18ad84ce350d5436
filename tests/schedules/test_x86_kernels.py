"""x86 int8 kernels (VNNI and AVX2 16x4 intrinsics) against tvmq.qref, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from tvmq import qref
from tvmq._tvm import tensor, tvm
from tvmq.schedules import kernels
from tvmq.schedules.x86 import AVX2_16x4, VNNI_16x4, select_intrin

pytestmark = pytest.mark.build

ZNVER4 = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}
HASWELL = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}


def _host_has(flag: str) -> bool:
    try:
        return flag in open("/proc/cpuinfo").read()
    except OSError:
        return False


needs_vnni = pytest.mark.skipif(not _host_has("avx512_vnni"), reason="host lacks AVX-512 VNNI")
needs_avx2 = pytest.mark.skipif(not _host_has("avx2"), reason="host lacks AVX2")


def _rand(rng, shape, dtype):
    lo, hi = qref.dtype_range(dtype)
    return rng.integers(lo, hi + 1, shape).astype(dtype)


def _run(lib, *arrays, out_shape):
    args = [tensor(a) for a in arrays if a is not None] + [tensor(np.zeros(out_shape, "int32"))]
    lib(*args)
    return args[-1].numpy()


def _check_conv(rng, target, n, c, h, w, o, k, stride, pad, in_dtype, dilation=1):
    x, wt = _rand(rng, (n, c, h, w), in_dtype), _rand(rng, (o, c, k, k), "int8")
    pads = (pad,) * 4
    lib, wp, corr = kernels.build_conv_kernel(x.shape, wt, in_dtype, tvm.target.Target(target),
                                              strides=(stride, stride), padding=pads,
                                              dilation=(dilation, dilation))
    ref = qref.conv2d_int(x, wt, strides=(stride, stride), padding=pads,
                          dilation=(dilation, dilation))
    got = _run(lib, x, wp, corr, out_shape=ref.shape)
    assert np.array_equal(got, ref), f"max |diff| {np.abs(got - ref).max()}"
    return lib


def test_select_intrin_follows_target_features():
    assert select_intrin(tvm.target.Target(ZNVER4)) == VNNI_16x4
    assert select_intrin(tvm.target.Target(HASWELL)) == AVX2_16x4
    assert select_intrin(tvm.target.Target({"kind": "llvm", "mcpu": "core2"})) is None


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
