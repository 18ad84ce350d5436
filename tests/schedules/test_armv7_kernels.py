"""armv7 (32-bit Arm, NEON) int8 kernels: vmull/vmlal/vpadal tensorization, exact under qemu-arm.

The kernels are cross-compiled for the ``rasp4b-armv7`` board and run by a small C harness
under ``qemu-arm-static`` (:mod:`tvmq.device.qemu_arm`; there is no TVM runtime for armv7),
compared with :mod:`tvmq.qref` bit for bit.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import warnings

import numpy as np
import pytest
import torch

import tvmq
from tests.conftest import to_blocked
from tvmq import models, qref
from tvmq._tvm import s_tir, tvm
from tvmq.boards import Board, get_board
from tvmq.device import qemu_arm
from tvmq.pipeline import PipelineOptions, legalize_passes
from tvmq.schedules import kernels, strategy_for
from tvmq.schedules.armv7 import NEON_4x4, NEON_4x4_FULL

pytestmark = pytest.mark.build
BOARD = "rasp4b-armv7"
FALLBACK = "generic scalar TIR"


@pytest.fixture(scope="module")
def target():
    return get_board(BOARD).tvm_target()


def _needs_qemu():
    reason = qemu_arm.unavailable()
    if reason is not None:
        pytest.skip(reason)


def _x(rng, shape, dtype):
    lo, hi = qref.dtype_range(dtype)
    return rng.integers(lo, hi + 1, shape).astype(dtype)


def _w(rng, shape, lo=-127, hi=127):
    """int8 weights in [lo, hi] (default: symmetric, the fast intrinsic's range)."""
    w = rng.integers(lo, hi + 1, shape).astype(np.int8)
    if lo == -128:
        w.flat[::7] = -128  # surely reaches -128: the kernel takes the full intrinsic
    return w


def _conv(x, w, **kw):
    conv = {k: v for k, v in kw.items() if k in ("strides", "padding")}
    return ("conv", x, w, kw), qref.conv2d_int(x, w, **conv)


def _dw(x, w, **kw):
    conv = {k: v for k, v in kw.items() if k in ("strides", "padding")}
    return ("dw", x, w, kw), qref.conv2d_int(x, w, groups=x.shape[1], **conv)


def _dense(x, w, **kw):
    return ("dense", x, w, kw), x.astype(np.int64) @ w.astype(np.int64)


def _case(name: str, rng):
    """(builder spec, reference) of one named case."""
    p1, s2 = dict(padding=(1,) * 4), dict(strides=(2, 2))
    cases = {
        "conv3x3_s2_u8": lambda: _conv(_x(rng, (2, 13, 9, 9), "uint8"),
                                       _w(rng, (20, 13, 3, 3)), **p1, **s2),
        "conv1x1_s8": lambda: _conv(_x(rng, (1, 6, 7, 7), "int8"), _w(rng, (9, 6, 1, 1))),
        # the stem: 3 input channels (one 4-channel block, zero padded), 7x7 stride 2
        "stem_u8": lambda: _conv(_x(rng, (1, 3, 16, 16), "uint8"), _w(rng, (8, 3, 7, 7)),
                                 padding=(3,) * 4, **s2),
        "dw_u8": lambda: _dw(_x(rng, (1, 12, 8, 8), "uint8"), _w(rng, (12, 1, 3, 3)), **p1),
        "dw_blocked_s2_u8": lambda: _dw(_x(rng, (1, 8, 9, 9), "uint8"), _w(rng, (8, 1, 3, 3)),
                                        layout="blocked", **p1, **s2),
        "dw_blocked_s8": lambda: _dw(_x(rng, (1, 8, 10, 10), "int8"),
                                     _w(rng, (8, 1, 3, 3), -128), layout="blocked", **p1),
        "dense_u8": lambda: _dense(_x(rng, (5, 37), "uint8"), _w(rng, (37, 11))),
        "conv_blocked_s8": lambda: _conv(_x(rng, (1, 8, 7, 7), "int8"), _w(rng, (12, 8, 3, 3)),
                                         layout="blocked", **p1),
        # ResNet-18's 3x3 64->64 at 56x56, the kernel measured with llvm-mca (2x2 tiles)
        "conv_resnet_blocked_s8": lambda: _conv(_x(rng, (1, 64, 56, 56), "int8"),
                                                _w(rng, (64, 64, 3, 3)), layout="blocked", **p1),
        # sub-byte weights decoded inside the kernel
        "conv_int4_s8": lambda: _conv(_x(rng, (1, 10, 7, 7), "int8"),
                                      _w(rng, (12, 10, 3, 3), -8, 7), bits=4, **p1),
        "dense_int2_u8": lambda: _dense(_x(rng, (3, 21), "uint8"), _w(rng, (21, 9), -2, 1),
                                        bits=2),
        # weights reaching -128: the full intrinsic
        "conv_full_s8": lambda: _conv(_x(rng, (1, 9, 6, 6), "int8"),
                                      _w(rng, (8, 9, 3, 3), -128), **p1),
        "conv_full_blocked_u8": lambda: _conv(_x(rng, (1, 8, 6, 6), "uint8"),
                                              _w(rng, (8, 8, 3, 3), -128), layout="blocked",
                                              **p1),
        "dense_full_s8": lambda: _dense(_x(rng, (4, 24), "int8"), _w(rng, (24, 8), -128)),
        # the int16 pair sums at their extremes: (-128 * -127) * 2 = 32512 (fast) and
        # (-128 * -128) * 2 = 32768 (full; would wrap in int16)
        "conv_fast_extreme": lambda: _conv(np.full((1, 4, 4, 4), -128, np.int8),
                                           np.full((4, 4, 1, 1), -127, np.int8)),
        "conv_full_extreme": lambda: _conv(np.full((1, 4, 4, 4), -128, np.int8),
                                           np.full((4, 4, 1, 1), -128, np.int8)),
        "conv_u8_extreme": lambda: _conv(np.where(np.arange(64).reshape(1, 4, 4, 4) % 2, 255,
                                                  0).astype(np.uint8),
                                         np.where(np.arange(16).reshape(4, 4, 1, 1) % 3, 127,
                                                  -127).astype(np.int8)),
    }
    return cases[name]()


CASES = ["conv3x3_s2_u8", "conv1x1_s8", "stem_u8", "dw_u8", "dw_blocked_s2_u8", "dw_blocked_s8",
         "dense_u8", "conv_blocked_s8", "conv_resnet_blocked_s8", "conv_int4_s8",
         "dense_int2_u8", "conv_full_s8", "conv_full_blocked_u8", "dense_full_s8",
         "conv_fast_extreme", "conv_full_extreme", "conv_u8_extreme"]


def _build(spec, target, st=None):
    """(compiled kernel, argument arrays with a zero output last) of a builder spec."""
    kind, x, w, kw = spec
    st = st or strategy_for(target)
    if kind == "conv":
        func, wp, corr = kernels.conv_func(x.shape, w, str(x.dtype), st, **kw)
    elif kind == "dw":
        func, wp, corr = kernels.depthwise_func(x.shape, w, str(x.dtype), st, **kw)
    else:
        func, wp, corr = kernels.dense_func(x.shape[0], w, str(x.dtype), st, **kw)
    if kw.get("layout") == "blocked":  # the builders take the NCHW shape
        x = to_blocked(x, st.ob)
    return kernels.build(func, target, st), [x, wp] + ([corr] if corr is not None else [])


def _run(lib, args, ref_shape):
    args = args + [np.zeros(ref_shape, "int32")]
    return qemu_arm.run_kernel(lib, args, outputs=[len(args) - 1])[0]


def _expected(spec, ref):
    return to_blocked(ref, 4) if spec[3].get("layout") == "blocked" else ref


def test_board_strategy_is_armv7_neon(target):
    st = strategy_for(target)
    assert (st.name, st.intrin, st.intrin_full, st.act_dtype) == (
        "armv7-neon", NEON_4x4, NEON_4x4_FULL, "int8")
    no_neon = {**get_board(BOARD).target, "mattr": ["-neon"]}
    assert strategy_for(tvm.target.Target(no_neon)) is None


@pytest.mark.parametrize("name", [NEON_4x4, NEON_4x4_FULL])
def test_intrinsic_impl_allocates_nothing(name):
    impl = s_tir().TensorIntrin.get(name).impl.script()
    assert "alloc" not in impl and "T.let" in impl, impl


@pytest.mark.parametrize("name", CASES)
def test_kernel_exact_under_qemu_arm(rng, target, name):
    _needs_qemu()
    spec, ref = _case(name, rng)
    lib, args = _build(spec, target)
    got = _run(lib, args, _expected(spec, ref).shape)
    want = _expected(spec, ref)
    assert np.array_equal(got, want), f"{name}: max |diff| {np.abs(got - want).max()}"


def test_fast_intrinsic_wraps_at_minus_128(target):
    """The harness sees a wrong kernel: the fast intrinsic forced onto weights of -128 sums
    ``2 * 16384`` in int16 and wraps, which is why such kernels take ``intrin_full``."""
    _needs_qemu()
    spec, ref = _case("conv_full_extreme", None)
    fast_only = dataclasses.replace(strategy_for(target), intrin_full=None)
    lib, args = _build(spec, target, fast_only)
    assert not np.array_equal(_run(lib, args, ref.shape), ref)


def _mnemonics(asm: str) -> set[str]:
    return set(re.findall(r"^\s+([a-z][\w.]*)\s", asm, re.M))


def _scalar_mac_loops(asm: str) -> list[str]:
    """Loops (label to its backward branch) that multiply-accumulate sign-extended bytes in
    core registers: ``ldrsb`` + ``smlabb``, the generic TIR's conv loop (0.5 MACs/cycle)."""
    lines = asm.splitlines()
    at = {ln.strip()[:-1]: i for i, ln in enumerate(lines) if re.match(r"\.LBB\w+:$", ln)}
    found = []
    for i, ln in enumerate(lines):
        m = re.match(r"\s+b\w*\s+(\.LBB\w+)$", ln)
        if m and at.get(m.group(1), i) < i:
            ops = [o for o in (re.match(r"\s+([a-z]\w*)", x) for x in lines[at[m.group(1)]:i])
                   if o]
            names = [o.group(1) for o in ops]
            macs = sum(n.startswith(("smla", "smul")) for n in names)
            if names.count("ldrsb") >= 2 and macs >= 2:
                found.append(m.group(1))
    return found


@pytest.mark.parametrize("name,want,absent", [
    ("conv3x3_s2_u8", {"vmull.s8", "vmlal.s8", "vpadal.s16", "vld2.16"}, set()),
    ("conv_full_s8", {"vmull.s8", "vpadal.s16"}, {"vmlal.s8"}),
    ("stem_u8", {"vmull.s8", "vmlal.s8", "vpadal.s16"}, set()),
    ("dense_u8", {"vmull.s8", "vmlal.s8", "vpadal.s16"}, set()),
    ("dw_u8", {"vmlal.s16"}, set()),
    ("dw_blocked_s2_u8", {"vmlal.s16"}, set()),
])
def test_kernels_are_neon_not_scalar(rng, target, name, want, absent):
    spec, _ = _case(name, rng)
    lib, _ = _build(spec, target)
    asm = lib.mod.inspect_source("asm")
    ops = _mnemonics(asm)
    assert want <= ops and not ops & absent, sorted(ops)
    assert not _scalar_mac_loops(asm)


def test_scalar_loop_check_sees_generic_tir(target):
    """:func:`_scalar_mac_loops` finds the loop of an unscheduled int8 conv (what armv7 got
    before it had a strategy), so its silence above means something."""
    from tvmq._tvm import te, topi

    x = te.placeholder((1, 8, 6, 6), "int8", "x")
    w = te.placeholder((8, 8, 3, 3), "int8", "w")
    y = topi.nn.conv2d_nchw(x, w, 1, 1, 1, out_dtype="int32")
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([x, w, y])}), target=target)
    assert _scalar_mac_loops(lib.mod.inspect_source("asm"))


def test_board_without_strategy_warns_once_naming_it():
    bare = Board("armv7-noneon", {**get_board(BOARD).target, "mattr": ["-neon"]},
                 "arm-linux-gnueabihf-gcc", "armv7-noneon", 4, "armv7")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("default")
        for _ in range(2):
            legalize_passes(bare, PipelineOptions())
    msgs = [str(w.message) for w in rec if FALLBACK in str(w.message)]
    assert len(msgs) == 1 and "'armv7-noneon'" in msgs[0] and "armv7l" in msgs[0], msgs


def test_model_compiles_for_armv7_with_neon_kernels(tmp_path):
    """A quantized model compiles for rasp4b-armv7 without the fallback warning, and its
    library holds the NEON kernels."""
    from tvmq.quant import PTQConfig, export, get_preset, quantize_

    model = models.create("digits_cnn")
    calib = [torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(i))
             for i in range(2)]
    quantize_(model, PTQConfig(get_preset("w8a8"), calibration=calib, progress=False))
    path = export(model, torch.randn(1, 1, 8, 8), tmp_path / "q.onnx")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        art = tvmq.compile(path, board=BOARD)
    assert not [w for w in rec if FALLBACK in str(w.message)]
    lib = art.save(tmp_path / "art") / "lib.so"
    dis = subprocess.run(["arm-linux-gnueabihf-objdump", "-d", str(lib)], capture_output=True,
                         text=True, check=True).stdout
    assert {"vmull.s8", "vpadal.s16"} <= set(re.findall(r"\t([a-z][\w.]*)\t", dis))
