"""Float32 kernels (BlockFloatOps, BlockedFloatLayout, ScheduleFloatKernels) against float64.

Tolerance: a float32 dot product of ``K`` terms, summed in any order with or without FMA,
is within ``gamma_K * sum_k |x_k * w_k|`` of the exact value, ``gamma_K = K u / (1 - K u)``
and ``u = 2**-24`` (Higham, *Accuracy and Stability of Numerical Algorithms*, 3.1). The
reference is computed in float64 from the same float32 inputs, and ``sum |x| |w|`` by the
same conv over ``|x|`` and ``|w|``; a fused bias, residual add and ReLU add one rounding
each (``K`` counts them). So every output must be within that bound: an indexing or
layout error shows up as an error of the size of the output itself, orders of magnitude
above it. (In practice the errors are ~100x below the bound; the bound is what may be
asserted without flakiness.)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests._qemu_board import CROSS, board_workdir, run_on_board
from tests.conftest import ZNVER4, assert_well_formed, run_target, to_blocked
from tvmq import schedules as S
from tvmq._tvm import cc, relax, tensor, tvm
from tvmq.boards import get_board
from tvmq.schedules import float_kernels as FK
from tvmq.schedules.strategy import FloatStrategy, float_strategy_for

pytestmark = pytest.mark.build
TARGET = tvm.target.Target(run_target())
FS = float_strategy_for(TARGET)
U = 2.0 ** -24


def _bound(k: int, mag: np.ndarray) -> np.ndarray:
    return k * U / (1 - k * U) * mag


def _conv_ref(x, w, b, *, stride=1, pad=0, dil=1, groups=1, relu=False, residual=None):
    """(float64 result, sum |terms|, terms per output) of conv (+bias, +residual, ReLU)."""
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    conv = lambda xx, ww, bb: torch.nn.functional.conv2d(  # noqa: E731
        xx, ww, bb, stride=stride, padding=pad, dilation=dil, groups=groups).numpy()
    ref = conv(t(x), t(w), None if b is None else t(b))
    mag = conv(t(np.abs(x)), t(np.abs(w)), None if b is None else t(np.abs(b)))
    k = w.shape[1] * w.shape[2] * w.shape[3] + (b is not None)
    if residual is not None:
        ref, mag, k = ref + residual, mag + np.abs(residual), k + 1
    return (np.maximum(ref, 0) if relu else ref), mag, k


def _check(got, ref, mag, k, what):
    err = np.abs(got.astype(np.float64) - ref)
    bound = _bound(k, mag)
    worst = float((err / np.maximum(bound, 1e-300)).max())
    assert worst <= 1.0, f"{what}: max error {err.max():.3e} is {worst:.2f}x the bound"


def _run(lib, *arrays, out_shape):
    args = [tensor(np.ascontiguousarray(a)) for a in arrays if a is not None]
    args.append(tensor(np.zeros(out_shape, np.float32)))
    lib(*args)
    return args[-1].numpy()


def _from_blocked(a):
    n, cb, h, w, b = a.shape
    return a.transpose(0, 1, 4, 2, 3).reshape(n, cb * b, h, w)


CONVS = [  # (n, c, h, w, o, k, stride, pad, dilation)
    (1, 16, 9, 11, 16, 3, 1, 1, 1),     # 3x3, padded, odd sizes (tiles padded past the row)
    (2, 8, 8, 8, 24, 1, 1, 0, 1),       # 1x1, batch 2
    (1, 16, 12, 12, 32, 3, 2, 1, 1),    # strided
    (1, 3, 20, 20, 16, 7, 2, 3, 1),     # RGB stem: one block of 3 channels
    (1, 20, 7, 7, 12, 3, 1, 0, 1),      # channels not a multiple of the block, unpadded
    (1, 8, 10, 10, 8, 3, 1, 2, 2),      # dilated
    (1, 1, 8, 8, 16, 3, 1, 1, 1),       # one input channel (unit reduction axes)
]


@pytest.mark.parametrize("case", CONVS, ids=[f"c{c[1]}o{c[4]}k{c[5]}s{c[6]}" for c in CONVS])
def test_conv_nchw_with_bias_relu(rng, case):
    n, c, h, w, o, k, s, p, d = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    func, wp = FK.conv_func(x.shape, wt, FS, strides=(s, s), padding=(p,) * 4,
                            dilation=(d, d), bias=b, relu=True)
    lib = FK.build(func, TARGET, FS)
    ref, mag, kk = _conv_ref(x, wt, b, stride=s, pad=p, dil=d, relu=True)
    _check(_run(lib, x, wp, b, out_shape=ref.shape), ref, mag, kk, str(case))


@pytest.mark.parametrize("pad,tile", [(1, None), (0, None), (1, (3, 1))])
def test_conv_blocked_with_residual(rng, pad, tile):
    """NCHW{b}c in and out, bias + residual add + ReLU fused, default and odd register tiles."""
    b_ = FS.block
    x = rng.standard_normal((1, 2 * b_, 10, 10)).astype(np.float32)
    wt = rng.standard_normal((2 * b_, 2 * b_, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(2 * b_).astype(np.float32)
    oh = 10 + 2 * pad - 2
    res = rng.standard_normal((1, 2 * b_, oh, oh)).astype(np.float32)
    func, wp = FK.conv_func(x.shape, wt, FS, padding=(pad,) * 4, layout="blocked", bias=bias,
                            relu=True, residual=True, tile=tile)
    lib = FK.build(func, TARGET, FS)
    ref, mag, k = _conv_ref(x, wt, bias, pad=pad, relu=True, residual=res)
    got = _run(lib, to_blocked(x, b_), wp, bias, to_blocked(res, b_),
               out_shape=(1, 2, oh, oh, b_))
    _check(_from_blocked(got), ref, mag, k, f"pad {pad} tile {tile}")


@pytest.mark.parametrize("c_g,layout", [(3, "NCHW"), ("block", "NCHW"), ("block", "blocked")])
def test_grouped_conv(rng, c_g, layout):
    """Groups of whole output blocks; each group's inputs one small block or whole blocks."""
    c_g = FS.block * 2 if c_g == "block" else c_g
    groups, o_g = 2, FS.block * 2
    x = rng.standard_normal((1, groups * c_g, 9, 9)).astype(np.float32)
    wt = rng.standard_normal((groups * o_g, c_g, 3, 3)).astype(np.float32)
    b = rng.standard_normal(groups * o_g).astype(np.float32)
    func, wp = FK.conv_func(x.shape, wt, FS, padding=(1,) * 4, groups=groups, layout=layout,
                            bias=b, relu=True)
    lib = FK.build(func, TARGET, FS)
    ref, mag, k = _conv_ref(x, wt, b, pad=1, groups=groups, relu=True)
    if layout == "NCHW":
        got = _run(lib, x, wp, b, out_shape=ref.shape)
    else:
        got = _from_blocked(_run(lib, to_blocked(x, FS.block), wp, b,
                                 out_shape=(1, 4, 9, 9, FS.block)))
    _check(got, ref, mag, k, f"groups {groups} c_g {c_g} {layout}")


@pytest.mark.parametrize("stride,layout", [(1, "NCHW"), (2, "NCHW"), (1, "blocked"),
                                           (2, "blocked")])
def test_depthwise(rng, stride, layout):
    c = 2 * FS.block
    x = rng.standard_normal((1, c, 13, 13)).astype(np.float32)
    wt = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    func, wp = FK.depthwise_func(x.shape, wt, FS, strides=(stride, stride), padding=(1,) * 4,
                                 layout=layout, bias=b, relu=True)
    lib = FK.build(func, TARGET, FS)
    ref, mag, k = _conv_ref(x, wt, b, stride=stride, pad=1, groups=c, relu=True)
    if layout == "NCHW":
        got = _run(lib, x, wp, b, out_shape=ref.shape)
    else:
        got = _from_blocked(_run(lib, to_blocked(x, FS.block), wp, b,
                                 out_shape=(1, 2, *ref.shape[2:], FS.block)))
    _check(got, ref, mag, k, f"stride {stride} {layout}")


@pytest.mark.parametrize("m,k,n", [(1, 512, 1000), (3, 37, 10)])
def test_dense_with_bias(rng, m, k, n):
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    func, wp = FK.dense_func(m, w, FS, bias=b)
    got = _run(FK.build(func, TARGET, FS), x, wp, b, out_shape=(m, n))
    ref = x.astype(np.float64) @ w + b
    mag = np.abs(x).astype(np.float64) @ np.abs(w) + np.abs(b)
    _check(got, ref, mag, k + 1, "dense")


def test_register_tile_fits_the_registers():
    """Accumulators, the tile's weight vectors and a broadcast fit the register file; a
    row that no small tile divides is padded, not run with a 1-pixel tile."""
    from tvmq.schedules.schedule_float_kernels import conv_tile

    for fs in (FloatStrategy("avx2", 8, 8, 16, 12), FloatStrategy("avx512", 16, 16, 32, 28),
               FloatStrategy("neon", 4, 4, 32, 24), FloatStrategy("avx2", 8, 16, 16, 12)):
        rpb = fs.block // fs.lanes
        for n_x in (112, 56, 28, 14, 7, 5):
            ow, ob = conv_tile(n_x, 64 // fs.block, fs)
            assert ow * ob * rpb <= fs.max_acc and (ow + 1) * ob * rpb + 1 <= fs.regs
            assert ow * ob * rpb >= min(8, n_x * rpb), (fs, n_x, ow, ob)
    assert conv_tile(56, 8, FloatStrategy("avx2", 8, 8, 16, 12)) == (4, 2)


# ---- inside models ------------------------------------------------------------------------
class _Net(torch.nn.Module):
    """Stem (3 channels, BN, ReLU), max pool, residual block, depthwise + ReLU6, 1x1 to 24
    channels (not a multiple of 16), global pool, linear: 16x16 feature maps, so the float
    blocked layout applies."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6())
        self.pw = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = torch.relu(x + self.c2(torch.relu(self.c1(x))))
        x = self.pw(self.dw(x))
        return self.fc(x.mean((2, 3)))


def _net_and_input():
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():  # BN statistics away from identity, so folding is exercised
        net.stem[1].running_mean.uniform_(-0.5, 0.5)
        net.stem[1].running_var.uniform_(0.5, 2.0)
    return net, torch.randn(1, 3, 32, 32)


@pytest.fixture(scope="module")
def net_builds():
    import tvmq

    net, x = _net_and_input()
    board = tvmq.Board("float-test", dict(run_target()), None, "float-test", 2, "x86_64")
    arts = {}
    for flag in (True, False):
        opts = tvmq.PipelineOptions(float_kernels=flag, dump_dir=None)
        arts[flag] = (tvmq.compile(net, example_inputs=x, board=board, options=opts), opts)
    with torch.no_grad():
        ref = net(x).numpy()
    return arts, x.numpy(), ref


def test_model_matches_torch_and_old_path(net_builds):
    arts, x, ref = net_builds
    new = arts[True][0].run([x])[0]
    old = arts[False][0].run([x])[0]
    scale = np.abs(ref).max()
    # end to end, through BN folding: float32 against PyTorch's float32
    assert np.abs(new - ref).max() <= 1e-4 * scale, np.abs(new - ref).max()
    assert np.abs(new - old).max() <= 1e-4 * scale


def _legalized(mod_or_net, x, flag: bool, target: dict | None = None):
    import tvmq
    from tvmq.frontend import import_model
    from tvmq.pipeline import run_phases

    board = tvmq.Board("float-test", dict(target or run_target()), None, "float-test", 2,
                       "x86_64")
    mod = import_model(mod_or_net, x, None).bind_params()
    return run_phases(mod, board, tvmq.PipelineOptions(float_kernels=flag), until="legalize")


def _callees(mod) -> list[str]:
    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir":
                out.append(b.value.args[0].name_hint)
    return out


# legalize only (nothing runs): both x86 float widths on any host. On AVX-512 the float
# block (16) is the integer kernels' channel block too, so BlockIntegerOps sees the float
# convs in its own layout first and must leave them alone (it once sent each through NCHW
# between two transforms: ResNet-18 fp32 on Zen 4 26.8 -> 17.9 ms when fixed).
X86_FLOAT_TARGETS = {"avx2": {"kind": "llvm", "mcpu": "znver3", "num-cores": 2},
                     "avx512": dict(ZNVER4)}


@pytest.mark.parametrize("isa", sorted(X86_FLOAT_TARGETS))
def test_layout_flows_between_float_layers(isa):
    """Every conv and the dense run tvmq's kernels; the blocked layout flows from the stem
    to the global pool: one transform (to NCHW before the flatten), plus the 24-channel
    conv's own pack/unpack (24 is not a multiple of the AVX-512 block)."""
    target = X86_FLOAT_TARGETS[isa]
    block = float_strategy_for(tvm.target.Target(target)).block
    net, x = _net_and_input()
    mod = _legalized(net, x, True, target)
    assert_well_formed(mod)
    callees = _callees(mod)
    kernels = [c for c in callees if "tvmq_fkernel" in c]
    assert len(kernels) == 6, callees  # stem, c1, c2, dw, pw, fc
    transforms = [c for c in callees if "layout_transform" in c]
    assert len(transforms) <= (3 if 24 % block else 1), callees
    old = _callees(_legalized(net, x, False, target))
    assert not any("tvmq_fkernel" in c for c in old)


def test_block_float_ops_leaves_partial_groups(rng):
    """A grouped conv whose groups hold 4 output channels (not whole blocks) stays for
    LegalizeOps."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.conv2d(x, relax.const(
                rng.standard_normal((8, 4, 3, 3)).astype(np.float32)), groups=2))
        bb.emit_func_output(y)
    out = S.BlockFloatOps(FS)(bb.get())
    assert_well_formed(out)
    assert not [gv for gv in out.functions if "tvmq_fkernel" in gv.name_hint]


def test_weights_computed_at_run_time(rng):
    """A codebook-style weight, ``take(table, indices)`` at run time, feeding a conv, a
    depthwise conv and a dense: each becomes a kernel that packs the weight itself (block
    ``tvmq_decode_w``), within the bound of the float64 reference."""
    c = 2 * FS.block
    table = rng.standard_normal(16).astype(np.float32)
    idx = {k: rng.integers(0, 16, shape).astype("int64") for k, shape in
           (("conv", (c, c, 3, 3)), ("dw", (c, 1, 3, 3)), ("fc", (c, 10)))}
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, 12, 12), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            t = relax.const(table)
            w = {k: bb.emit(relax.op.take(t, relax.const(v), axis=0)) for k, v in idx.items()}
            y = bb.emit(relax.op.nn.conv2d(x, w["conv"], padding=1))
            y = bb.emit(relax.op.nn.conv2d(y, w["dw"], padding=1, groups=c))
            y = bb.emit(relax.op.mean(y, axis=[2, 3]))
            out = bb.emit_output(relax.op.matmul(y, w["fc"]))
        bb.emit_func_output(out)
    mod = bb.get()
    with TARGET, tvm.transform.PassContext(opt_level=3):
        lowered = tvm.transform.Sequential(
            [*S.legalize_prelude(TARGET, blocked_layout=False), relax.transform.LegalizeOps(),
             relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(),
             relax.transform.FuseTIR(), *S.schedule_passes(TARGET)])(mod)
    kernels = [gv.name_hint for gv in lowered.functions if "tvmq_fkernel" in gv.name_hint]
    assert len(kernels) == 3, [gv.name_hint for gv in lowered.functions]
    xv = rng.standard_normal((1, c, 12, 12)).astype(np.float32)
    got = relax.VirtualMachine(tvm.compile(lowered, TARGET), tvm.cpu())["main"](
        tensor(xv)).numpy()
    wv = {k: table[v] for k, v in idx.items()}
    y1, m1, _ = _conv_ref(xv, wv["conv"], None, pad=1)
    y2, m2, _ = _conv_ref(y1, wv["dw"], None, pad=1, groups=c)
    m2 = _conv_ref(m1, np.abs(wv["dw"]), None, pad=1, groups=c)[0]
    ref = y2.mean((2, 3)) @ wv["fc"]
    mag = m2.mean((2, 3)) @ np.abs(wv["fc"])
    _check(got, ref, mag, c * 9 + 9 + 144 + c, "run-time weights")


# ---- aarch64 ------------------------------------------------------------------------------


def _arm_cases(rng):
    fs = float_strategy_for(get_board("rasp4b").tvm_target())
    cases = []
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    func, wp = FK.conv_func(x.shape, w, fs, padding=(1,) * 4, bias=b, relu=True)
    cases.append(("conv", func, [x, wp, b], _conv_ref(x, w, b, pad=1, relu=True)))
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    func, wp = FK.depthwise_func(x.shape, w, fs, strides=(2, 2), padding=(1,) * 4,
                                 layout="blocked")
    ref = _conv_ref(x, w, None, stride=2, pad=1, groups=8)
    cases.append(("dw_blocked", func, [to_blocked(x, 4), wp],
                  (to_blocked(ref[0], 4), to_blocked(ref[1], 4), ref[2])))
    x = rng.standard_normal((2, 37)).astype(np.float32)
    w = rng.standard_normal((37, 9)).astype(np.float32)
    func, wp = FK.dense_func(2, w, fs)
    cases.append(("dense", func, [x, wp], (x.astype(np.float64) @ w,
                                           np.abs(x).astype(np.float64) @ np.abs(w), 37)))
    return fs, cases


def _export_arm(work: Path, rng) -> list:
    target = get_board("rasp4b").tvm_target()
    fs, cases = _arm_cases(rng)
    for name, func, arrays, ref in cases:
        lib = FK.build(func, target, fs)
        lib.export_library(str(work / f"{name}.so"), fcompile=cc.cross_compiler(CROSS))
        np.savez(work / f"{name}.npz", *arrays, np.zeros(ref[0].shape, np.float32))
    return cases


def test_aarch64_kernels_build_with_fmla(rng, tmp_path):
    if shutil.which(CROSS) is None:
        pytest.skip(f"{CROSS} not installed")
    target = get_board("rasp4b").tvm_target()
    fs, cases = _arm_cases(rng)
    asm = FK.build(cases[0][1], target, fs).mod.inspect_source("asm")
    assert "fmla" in asm
    _export_arm(tmp_path, rng)
    assert all((tmp_path / f"{c[0]}.so").stat().st_size > 0 for c in cases)




@pytest.mark.board
def test_aarch64_kernels_under_qemu(rng):
    with board_workdir("tvmq-fkernels") as work:
        cases = _export_arm(work, rng)
        run_on_board(work, [c[0] for c in cases])
        for name, _, _, (ref, mag, k) in cases:
            _check(np.load(work / f"{name}.out.npy"), ref, mag, k, name)


# ---- tuning -------------------------------------------------------------------------------
def test_sampled_float_space_replays(rng):
    """MetaSchedule's kernel space samples the float conv's register tile around the
    default; every sampled schedule replays from its trace and stays within the bound."""
    from tvmq._tvm import s_tir
    from tvmq.schedules import strategy_for, tune

    st = strategy_for(TARGET)
    if st is None:
        pytest.skip("no integer strategy for this target: tvmq's kernel space is off")
    x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
    wt = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    func, wp = FK.conv_func(x.shape, wt, FS, padding=(1,) * 4)
    ref, mag, k = _conv_ref(x, wt, None, pad=1)
    decisions = set()
    for seed in range(1, 6):
        sch = s_tir().Schedule(func, seed=seed)
        tune._kernel_space_fn(st, FS)(sch)
        decisions.add(tuple(int(v) for v in sch.trace.decisions.values()))
        replay = s_tir().Schedule(func)
        sch.trace.apply_to_schedule(replay, remove_postproc=False)
        lib = tvm.compile(replay.mod, target=TARGET)
        _check(_run(lib, x, wp, out_shape=ref.shape), ref, mag, k, f"seed {seed}")
    assert len(decisions) > 1


# ---- ONNX's own Conv / Gemm cases, weights as initializers ------------------------------
ONNX_CASES = ["test_basic_conv_with_padding", "test_basic_conv_without_padding",
              "test_conv_with_strides_padding", "test_conv_with_strides_no_padding",
              "test_conv_with_strides_and_asymmetric_padding", "test_conv_with_autopad_same",
              "test_gemm_default_vector_bias", "test_gemm_transposeB", "test_gemm_all_attributes",
              "test_matmul_2d"]


def _with_constant_weights(case):
    """The case's model with every input but the first an initializer (as in a real model)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, _ = case.data_sets[0]
    graph = model.graph
    for inp, value in zip(list(graph.input)[1:], inputs[1:]):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), inp.name))
        graph.input.remove(inp)
    return model


@pytest.fixture(scope="module")
def onnx_cases():
    from onnx.backend.test.case.node import collect_testcases

    return {c.name: c for c in collect_testcases(None) if c.name in ONNX_CASES}


@pytest.mark.parametrize("name", ONNX_CASES)
def test_onnx_conv_gemm_cases(onnx_cases, name, tmp_path):
    import tvmq

    case = onnx_cases[name]
    inputs, expected = case.data_sets[0]
    model = _with_constant_weights(case)
    art = tvmq.compile(model, options=tvmq.PipelineOptions(dump_dir=str(tmp_path)))
    assert "tvmq_fkernel" in (tmp_path / "03-legalize.py").read_text(), "float kernel not used"
    got = art.run([np.asarray(inputs[0])])[0]
    ref = np.asarray(expected[0], np.float64)
    arrays = [np.abs(np.asarray(a, np.float64)) for a in inputs]
    k = int(np.prod(arrays[1].shape[1:])) if "conv" in name else arrays[0].shape[-1]
    # k max|x| max|w| bounds each sum of |products|; bias / C and Gemm's alpha, beta (<= 1
    # in these cases) add at most their own magnitude and a few roundings
    mag = k * arrays[0].max() * arrays[1].max() + sum(a.max() for a in arrays[2:]) + np.abs(ref)
    _check(got, ref, mag, k + 4, name)
