"""aarch64 int8 kernels: sdot / NEON smull tensorization, cross-compiled; exact under qemu."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests._qemu_board import CROSS, board_workdir, run_on_board
from tests.conftest import to_blocked
from tvmq import qref
from tvmq._tvm import cc
from tvmq.boards import get_board
from tvmq.schedules import kernels, strategy_for

pytestmark = pytest.mark.build


def _rand(rng, shape, dtype):
    """Random values over ``dtype``'s whole range (``int4``/``int2``: held in int8)."""
    lo, hi = qref.dtype_range(dtype)
    return rng.integers(lo, hi + 1, shape).astype(dtype if dtype[-1] in "68" else "int8")


def _narrow(rng, shape, bits):
    """``bits``-bit values held in int8."""
    return rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), shape).astype(np.int8)


def test_planar_kernels_cross_compile(rng, tmp_path):
    """3/6-bit weights decoded inside the Arm kernels build and link for aarch64 (they run
    in :func:`test_kernels_exact_under_qemu` when the emulated board exists)."""
    if shutil.which(CROSS) is None:
        pytest.skip(f"{CROSS} not installed")
    for name, board, spec, ref in _cases(rng):
        if name.endswith(("int3", "int6")):
            _export(tmp_path, name, board, spec, ref)
            assert (tmp_path / f"{name}.so").stat().st_size > 0


@pytest.mark.parametrize("wmin", [-127, -128])
def test_neon_kernel_picks_full_range_intrinsic_only_for_weights_reaching_min(rng, wmin):
    """A53/A72: symmetric weights get smull + smlal2 + sadalp (two products summed in int16,
    no per-call horizontal adds); a kernel whose weights reach -128 the exact full-range
    form (two smull, saddlp, addp)."""
    target = get_board("rasp4b").tvm_target()
    w = _symmetric(_rand(rng, (16, 16, 3, 3), "int8"))
    w.flat[5] = wmin
    lib, _, _ = kernels.build_conv_kernel((1, 16, 8, 8), w, "int8", target, padding=(1,) * 4)
    asm = lib.mod.inspect_source("asm")
    ops = {line.split()[0] for line in asm.splitlines() if line.startswith("\t")}
    if wmin == -127:
        assert {"smull", "smlal2", "sadalp"} <= ops and "addp" not in ops
    else:
        assert {"smull", "saddlp", "addp"} <= ops and "smlal2" not in ops


@pytest.mark.parametrize("ow,strides,lanes", [(8, (1, 1), 4), (6, (1, 1), 2), (7, (1, 1), 0),
                                              (8, (2, 2), 0)])
def test_sdot_by_element_over_pixel_groups(rng, ow, strides, lanes):
    """A55/A76: unit-stride convs whose rows split into groups of 4 (else 2) pixels load the
    group's inputs once and ``sdot`` by element (``v.4b[3]`` when 4 a group); strided convs
    and odd rows keep one broadcast load a pixel."""
    target = get_board("a55").tvm_target()
    w = _rand(rng, (16, 16, 3, 3), "int8")
    lib, _, _ = kernels.build_conv_kernel((1, 16, 6, ow * strides[1]), w, "int8", target,
                                          padding=(1,) * 4, strides=strides, layout="blocked")
    dots = [ln for ln in lib.mod.inspect_source("asm").splitlines() if "\tsdot\t" in ln]
    indexed = [ln for ln in dots if ".4b[" in ln]
    assert dots
    if lanes:
        assert len(indexed) == len(dots) and any(f".4b[{lanes - 1}]" in ln for ln in indexed)
        assert not any(f".4b[{lanes}]" in ln for ln in indexed)
    else:
        assert not indexed


@pytest.mark.parametrize("board,intrin,instr", [("rpi5", "tvmq_arm_sdot_4x4", "sdot"),
                                                ("a55", "tvmq_arm_sdot_4x4", "sdot"),
                                                ("rasp3b", "tvmq_arm_neon_4x4", "smull"),
                                                ("rasp4b", "tvmq_arm_neon_4x4", "smull")])
def test_board_picks_intrinsic_and_asm_has_it(rng, board, intrin, instr):
    target = get_board(board).tvm_target()
    assert strategy_for(target).intrin == intrin
    w = _rand(rng, (8, 8, 3, 3), "int8")
    lib, _, _ = kernels.build_conv_kernel((1, 8, 6, 6), w, "uint8", target, padding=(1,) * 4)
    asm = lib.mod.inspect_source("asm")
    assert instr in asm
    if instr == "smull":
        assert "sdot" not in asm  # A53/A72 have no dot product instructions


def _symmetric(w):
    """``w`` with -128 moved to -127: symmetric int8 weights (the fast NEON intrinsic)."""
    return np.maximum(w, -127).astype(np.int8)


def _cases(rng):
    """(name, board, builder args, reference) of a small exactness sweep."""
    out = []
    for board in ("rasp3b",):  # the fast A53/A72 intrinsic: weights in [-127, 127] ...
        for wmin in (-127, -128):  # ... and the full-range one on kernels reaching -128
            x = _rand(rng, (2, 13, 9, 9), "uint8")
            w = _rand(rng, (20, 13, 3, 3), "int8")
            w = _symmetric(w) if wmin == -127 else w
            w.flat[0] = wmin
            out.append((f"{board}_conv_w{-wmin}", board,
                        ("conv", x, w, dict(strides=(2, 2), padding=(1,) * 4)),
                        qref.conv2d_int(x, w, strides=(2, 2), padding=(1,) * 4)))
            # the activations' extremes against the weights' (the int16 pair sums' bound)
            x = np.full((1, 8, 4, 4), -128, np.int8)
            w = np.full((8, 8, 1, 1), 127, np.int8)
            w[::2] = wmin
            out.append((f"{board}_conv_extreme_w{-wmin}", board, ("conv", x, w, {}),
                        qref.conv2d_int(x, w)))
            x, w = _rand(rng, (3, 29), "int8"), _rand(rng, (29, 10), "int8")
            w = _symmetric(w) if wmin == -127 else w
            w.flat[0] = wmin
            out.append((f"{board}_dense_w{-wmin}", board, ("dense", x, w, {}),
                        x.astype(np.int64) @ w.astype(np.int64)))
    # sdot by element over 4 or 2 pixels: unit-stride convs whose rows split in such groups
    for ow, layout, bits in ((8, "NCHW", 8), (12, "blocked", 8), (6, "blocked", 8),
                             (8, "blocked", 4), (10, "NCHW", 4)):
        x = _rand(rng, (1, 8, 5, ow), "uint8" if layout == "NCHW" else "int8")
        w = _rand(rng, (16, 8, 3, 3), "int4" if bits == 4 else "int8")
        ref = qref.conv2d_int(x, w, padding=(1,) * 4)
        out.append((f"rpi5_conv_pixels_{ow}_{layout}_int{bits}", "rpi5",
                    ("conv", x, w, dict(padding=(1,) * 4, layout=layout, bits=bits)),
                    _to_blocked(ref) if layout == "blocked" else ref))
    for board in ("rpi5", "rasp3b"):
        x, w = _rand(rng, (2, 13, 9, 9), "uint8"), _rand(rng, (20, 13, 3, 3), "int8")
        out.append((f"{board}_conv", board, ("conv", x, w, dict(strides=(2, 2), padding=(1,) * 4)),
                    qref.conv2d_int(x, w, strides=(2, 2), padding=(1,) * 4)))
        x, w = _rand(rng, (1, 6, 7, 7), "int8"), _rand(rng, (9, 6, 1, 1), "int8")
        out.append((f"{board}_conv1x1", board, ("conv", x, w, {}), qref.conv2d_int(x, w)))
        x, w = _rand(rng, (1, 12, 8, 8), "uint8"), _rand(rng, (12, 1, 3, 3), "int8")
        out.append((f"{board}_dw", board, ("dw", x, w, dict(padding=(1,) * 4)),
                    qref.conv2d_int(x, w, padding=(1,) * 4, groups=12)))
        x, w = _rand(rng, (5, 37), "uint8"), _rand(rng, (37, 11), "int8")
        out.append((f"{board}_dense", board, ("dense", x, w, {}),
                    x.astype(np.int64) @ w.astype(np.int64)))
        # sub-byte weights stored packed, decoded inside the kernel
        x, w = _rand(rng, (1, 10, 7, 7), "int8"), _rand(rng, (12, 10, 3, 3), "int4")
        out.append((f"{board}_conv_int4", board, ("conv", x, w, dict(padding=(1,) * 4, bits=4)),
                    qref.conv2d_int(x, w, padding=(1,) * 4)))
        # the blocked layout inside models (NCHW4c on Arm): conv and stride-2 depthwise
        x, w = _rand(rng, (1, 8, 7, 7), "int8"), _rand(rng, (12, 8, 3, 3), "int8")
        out.append((f"{board}_conv_blocked", board, ("conv", x, w, dict(padding=(1,) * 4,
                                                                        layout="blocked")),
                    _to_blocked(qref.conv2d_int(x, w, padding=(1,) * 4))))
        x, w = _rand(rng, (1, 8, 9, 9), "uint8"), _rand(rng, (8, 1, 3, 3), "int8")
        out.append((f"{board}_dw_blocked", board,
                    ("dw", x, w, dict(padding=(1,) * 4, strides=(2, 2), layout="blocked")),
                    _to_blocked(qref.conv2d_int(x, w, padding=(1,) * 4, strides=(2, 2),
                                                groups=8))))
        x, w = _rand(rng, (3, 21), "uint8"), _rand(rng, (21, 9), "int2")
        out.append((f"{board}_dense_int2", board, ("dense", x, w, dict(bits=2)),
                    x.astype(np.int64) @ w.astype(np.int64)))
        # 3/6-bit weights in byte planes (G = ob * ib / 8 = 2 bytes a plane on Arm)
        x, w = _rand(rng, (1, 10, 7, 7), "int8"), _narrow(rng, (12, 10, 3, 3), 3)
        out.append((f"{board}_conv_int3", board, ("conv", x, w, dict(padding=(1,) * 4, bits=3)),
                    qref.conv2d_int(x, w, padding=(1,) * 4)))
        x, w = _rand(rng, (3, 21), "uint8"), _narrow(rng, (21, 9), 6)
        out.append((f"{board}_dense_int6", board, ("dense", x, w, dict(bits=6)),
                    x.astype(np.int64) @ w.astype(np.int64)))
    return out


def _to_blocked(a):
    return to_blocked(a, 4)


def _export(work: Path, name, board, spec, ref):
    kind, x, w, conv = spec
    target = get_board(board).tvm_target()
    if kind == "conv":
        lib, wp, corr = kernels.build_conv_kernel(x.shape, w, str(x.dtype), target, **conv)
    elif kind == "dw":
        lib, wp, corr = kernels.build_depthwise_kernel(x.shape, w, str(x.dtype), target, **conv)
    else:
        lib, wp, corr = kernels.build_dense_kernel(x.shape[0], w, str(x.dtype), target, **conv)
    lib.export_library(str(work / f"{name}.so"), fcompile=cc.cross_compiler(CROSS))
    if conv.get("layout") == "blocked":  # the builders take the NCHW shape
        x = _to_blocked(x)
    arrays = [x, wp] + ([corr] if corr is not None else []) + [np.zeros(ref.shape, "int32")]
    np.savez(work / f"{name}.npz", *arrays)




@pytest.mark.board
def test_kernels_exact_under_qemu(rng):
    with board_workdir("tvmq-kernels") as work:
        cases = _cases(rng)
        for case in cases:
            _export(work, *case)
        run_on_board(work, [c[0] for c in cases])
        for name, _, _, ref in cases:
            got = np.load(work / f"{name}.out.npy")
            assert np.array_equal(got, ref), f"{name}: max |diff| {np.abs(got - ref).max()}"


def _tuned_cases(rng):
    """(name, board, scheduled module, inputs, reference): schedules drawn from tvmq's tune
    space (the register tiles MetaSchedule samples) for each Arm kernel family."""
    from tvmq._tvm import meta_schedule, tvm
    from tvmq.schedules import tune

    ms = meta_schedule()
    out = []
    for board in ("a55", "rasp4b", "rasp3b"):
        target = get_board(board).tvm_target()
        st = strategy_for(target)
        x, w = _rand(rng, (1, 8, 5, 8), "int8"), _symmetric(_rand(rng, (16, 8, 3, 3), "int8"))
        func, wp, corr = kernels.conv_func(x.shape, w, "int8", st, padding=(1,) * 4,
                                           layout="blocked")
        conv = (func, [_to_blocked(x), wp], _to_blocked(qref.conv2d_int(x, w, padding=(1,) * 4)))
        x, w = _rand(rng, (6, 24), "int8"), _symmetric(_rand(rng, (24, 16), "int8"))
        func, wp, corr = kernels.dense_func(x.shape[0], w, "int8", st)
        dense = (func, [x, wp], x.astype(np.int64) @ w.astype(np.int64))
        for kind, (func, args, ref) in (("conv", conv), ("dense", dense)):
            seen = set()
            for seed in range(4):
                ctx = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=target,
                                     space_generator=tune.kernel_space(target), rand_state=seed)
                sch = ctx.generate_design_space()[0]
                key = tuple(str(d) for d in sch.trace.decisions.values())
                if key in seen:
                    continue
                seen.add(key)
                out.append((f"tuned_{board}_{kind}_{len(seen)}", board, sch.mod, args, ref))
            if kind == "conv":
                assert len(seen) > 1, "the tune space sampled a single register tile"
    return out


@pytest.mark.board
def test_tune_space_schedules_exact_under_qemu(rng):
    """Every register tile tvmq's tune space draws for the Arm kernels (sdot over pixel
    groups, NEON smull/smlal2, the A53's smaller tiles) builds and runs bit-exact on the
    emulated board (its timings are qemu's: correctness only)."""
    from tvmq._tvm import tvm

    with board_workdir("tvmq-tuned") as work:
        cases = _tuned_cases(rng)
        for name, board, mod, args, ref in cases:
            lib = tvm.compile(mod, target=get_board(board).tvm_target())
            lib.export_library(str(work / f"{name}.so"), fcompile=cc.cross_compiler(CROSS))
            np.savez(work / f"{name}.npz", *args, np.zeros(ref.shape, "int32"))
        run_on_board(work, [c[0] for c in cases])
        for name, *_, ref in cases:
            got = np.load(work / f"{name}.out.npy")
            assert np.array_equal(got, ref), f"{name}: max |diff| {np.abs(got - ref).max()}"


@pytest.mark.parametrize("wmin", [-127, -128])
def test_model_conv_reaching_min_weight_compiles_to_full_range_form(tmp_path, wmin):
    """Inside a compiled model (FuseTIR keeps the kernel block's annotation): a QDQ conv
    whose int8 weights reach -128 runs the full-range A72 form, others the fast one."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    import tvmq

    w = _symmetric(np.random.default_rng(0).integers(-128, 128, (16, 16, 3, 3)).astype(np.int8))
    w.flat[3] = wmin
    consts = {"w_q": w, "ws": np.float32(0.02), "wz": np.int8(0), "xs": np.float32(0.05),
              "xz": np.int8(0), "ys": np.float32(0.1), "yz": np.int8(0)}
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             h.make_node("DequantizeLinear", ["w_q", "ws", "wz"], ["wd"]),
             h.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("QuantizeLinear", ["c", "ys", "yz"], ["yq"]),
             h.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, 16, 8, 8])],
                         [h.make_tensor_value_info("y", TP.FLOAT, [1, 16, 8, 8])],
                         [nh.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    art = tvmq.compile(str(tmp_path / "m.onnx"), board="rasp4b")
    asm = art.executable.mod.imports[0].inspect_source("asm")
    ops = {line.split()[0] for line in asm.splitlines() if line.startswith("\t")}
    assert ("smlal2" in ops) == (wmin == -127)
    assert ("addp" in ops) == (wmin == -128)
