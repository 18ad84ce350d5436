"""tvmq.roofline: hot-loop finding and MAC counting on fixed assembly, llvm-mca pricing of a
small int8 conv compiled for rasp4b (NEON smull) and a55 (sdot), and its errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from tvmq import roofline
from tvmq.artifact import Artifact
from tvmq.boards import get_board
from tvmq.errors import UnknownBoardError

HAVE_MCA = any(shutil.which(n) for n in ("llvm-mca", "llvm-mca-14"))
needs_mca = pytest.mark.skipif(not HAVE_MCA, reason="llvm-mca not installed "
                               f"({roofline.MCA_INSTALL})")

# A kernel as LLVM prints it: the compute function launches a parallel lambda whose inner
# loop does 2 sdot (16 each) + 1 smull .8h (8) + a madd of a loaded byte (1) = 41 MACs; the
# madd of addresses and the .4s mla (requantization) count 0; the outer loop holds the inner.
A64_ASM = """\
\t.type\tk_compute_,@function
k_compute_:
\tadrp\tx0, .L__tvm_parallel_lambda.7
\tadd\tx0, x0, :lo12:.L__tvm_parallel_lambda.7
\tret
.Lfunc_end0:
\t.type\t.L__tvm_parallel_lambda.7,@function
.L__tvm_parallel_lambda.7:
\tmov\tx4, xzr
.LBB1_2:                                // =>This Loop Header: Depth=1
\tmov\tw5, #3
.LBB1_3:                                //   Parent Loop BB1_2 Depth=1
\tldr\tq0, [x1], #16
\tsdot\tv2.4s, v0.16b, v1.16b
\tsdot\tv3.4s, v0.16b, v1.4b[1]
\tsmull\tv4.8h, v0.8b, v1.8b
\tldrsb\tw9, [x2], #1
\tmadd\tw10, w9, w11, w10
\tmadd\tx6, x7, x8, x6
\tsubs\tw5, w5, #1                     // loop counter
\tb.ne\t.LBB1_3
\tmla\tv5.4s, v2.4s, v3.4s
\tadd\tx4, x4, #1
\tcmp\tx4, #8
\tb.ne\t.LBB1_2
\tret
.Lfunc_end1:
"""

A32_ASM = """\
f_compute_:
\tpush\t{r4, r5, lr}
.LBB0_1:                                @ =>This Inner Loop Header: Depth=1
\tvmul.i32\tq8, q8, q9
\tsubs\tr2, r2, #1
\tbne\t.LBB0_1
.LBB0_3:                                @ =>This Inner Loop Header: Depth=1
\tldrsb\tr4, [r1], #1
\tldrb\tr5, [r0], #1
\tsmlabb\tr3, r4, r5, r3
\tsmlabb\tr6, r4, r5, r6
\tsubs\tr2, r2, #1
\tbne\t.LBB0_3
\tpop\t{r4, r5, pc}
.Lfunc_end0:
"""


@pytest.mark.parametrize("instr,arch,macs", [
    ("sdot\tv0.4s, v1.16b, v2.16b", "aarch64", 16),
    ("sdot\tv0.2s, v1.8b, v2.4b[3]", "aarch64", 8),
    ("smull\tv0.8h, v1.8b, v2.8b", "aarch64", 8),
    ("smlal2\tv0.8h, v1.16b, v2.16b", "aarch64", 8),
    ("smlal\tv0.4s, v1.4h, v2.h[1]", "aarch64", 4),
    ("smull\tv0.2d, v1.2s, v2.2s", "aarch64", 0),
    ("mla\tv0.8h, v1.8h, v2.8h", "aarch64", 8),
    ("umaddl\tx7, w6, w1, x0", "aarch64", 0),
    ("saddlp\tv0.4s, v1.8h", "aarch64", 0),
    ("vmull.s8\tq8, d16, d17", "armv7", 8),
    ("vmlal.s16\tq8, d16, d17", "armv7", 4),
    ("vmla.i16\tq8, q9, q10", "armv7", 8),
    ("smlabb\tr0, r1, r2, r0", "armv7", 1),
    ("smlad\tr0, r1, r2, r0", "armv7", 2),
    ("ldrsb\tr0, [r1]", "armv7", 0),
])
def test_count_macs(instr, arch, macs):
    assert roofline.count_macs(instr, arch) == macs


@pytest.mark.parametrize("instr,arch,narrow,macs", [
    ("madd\tw0, w1, w2, w0", "aarch64", {"x1"}, 1),      # a loaded byte times a weight
    ("madd\tx6, x7, x8, x6", "aarch64", {"x1"}, 0),      # an address
    ("mla\tv0.4s, v1.4s, v2.4s", "aarch64", {"v1"}, 4),  # int8 widened to 32-bit lanes
    ("mla\tv0.4s, v1.4s, v2.s[1]", "aarch64", set(), 0),  # requantization
    ("vmla.i32\tq8, q9, q10", "armv7", {"q9"}, 4),
    ("vmul.i32\tq8, q8, q9", "armv7", set(), 0),
    ("mla\tr0, r1, r2, r3", "armv7", set(), 0),
    ("smlabb\tr0, r1, r2, r0", "armv7", set(), 1),        # 16-bit halves: always data
])
def test_count_macs_of_ambiguous_multiplies_needs_narrow_operands(instr, arch, narrow, macs):
    assert roofline.count_macs(instr, arch, narrow) == macs


def test_narrow_registers_follow_loads_and_extends():
    body = ["ldrsb\tw9, [x1], #1", "ldrb\tw10, [x2], #1", "madd\tw11, w9, w10, w11",
            "sub\tw9, w9, #128", "madd\tw12, w9, w10, w12", "add\tx10, x3, x4",
            "sshll\tv1.4s, v0.4h, #0"]
    live = roofline.narrow_registers(body, "aarch64")
    assert {"x9", "x10"} <= live[2] and {"x9", "x10"} <= live[4]  # a zero point taken off
    assert "x10" not in live[6]  # overwritten by an address
    assert "v1" in live[0]  # carried over from the previous iteration


def test_hot_loop_of_fixed_aarch64_asm():
    funcs = roofline.split_functions(A64_ASM)
    assert set(funcs) == {"k_compute_", ".L__tvm_parallel_lambda.7"}
    loop = roofline.hottest_loop(funcs, "k", "aarch64")
    assert loop.function == ".L__tvm_parallel_lambda.7" and loop.label == ".LBB1_3"
    assert loop.macs == 41 and loop.nested == 0
    assert loop.instructions[-1].startswith("b.ne") and len(loop.instructions) == 9
    summary = loop.summary()
    assert summary["mac_instructions"] == {"sdot": 2, "smull": 1, "madd": 1}
    assert summary["other"] == 5 and summary["total"] == 9


def test_hot_loop_of_fixed_armv7_asm_skips_requantization():
    loop = roofline.hottest_loop(roofline.split_functions(A32_ASM), "f", "armv7")
    assert loop.label == ".LBB0_3" and loop.macs == 2


def test_outer_loop_when_no_innermost_loop_multiplies():
    asm = """\
h_compute_:
.LBB0_1:
\tsdot\tv0.4s, v1.16b, v2.16b
.LBB0_2:
\tstrb\twzr, [x0], #1
\tsubs\tw1, w1, #1
\tb.ne\t.LBB0_2
\tsubs\tw3, w3, #1
\tb.ne\t.LBB0_1
\tret
"""
    loop = roofline.hottest_loop(roofline.split_functions(asm), "h", "aarch64")
    assert loop.label == ".LBB0_1" and loop.nested == 1 and loop.macs == 16
    assert len(loop.instructions) == 3  # the zero-fill loop is cut out


def test_function_without_loop_gives_none():
    funcs = roofline.split_functions("g_compute_:\n\tsdot\tv0.4s, v1.16b, v2.16b\n\tret\n")
    assert roofline.hottest_loop(funcs, "g", "aarch64") is None
    assert roofline.hottest_loop(funcs, "missing", "aarch64") is None


@needs_mca
def test_mca_prices_fixed_loop_within_peak():
    loop = roofline.hottest_loop(roofline.split_functions(A64_ASM), "k", "aarch64")
    board = get_board("a55")
    cyc = roofline.mca_cycles(loop.instructions, board)["cycles_per_iter"]
    assert 0 < loop.macs / cyc <= roofline.board_peak(board) * 1.05


@needs_mca
def test_analyze_asm_estimate_and_coverage():
    spec = roofline.KernelSpec("conv", "k", macs=41 * 1000)
    res = roofline.analyze_asm(A64_ASM, "a55", [spec], total_macs=82 * 1000)
    k = res.kernels[0]
    assert k.trip_count == 1000 and k.cycles == pytest.approx(k.cycles_per_iter * 1000)
    assert res.covered_macs_fraction == 0.5
    assert res.estimate_ms == pytest.approx(k.cycles / 1.8e6)
    assert res.estimate_ms_all_cores == pytest.approx(res.estimate_ms / 4)
    data = res.to_json()
    assert data["summary"]["hottest_loop"]["layers"] == ["conv"]
    assert roofline.Roofline.from_json(data).to_json() == data


# ---- a small int8 conv compiled for the boards ------------------------------------------
@pytest.fixture(scope="module")
def conv_qdq(tmp_path_factory):
    import torch

    from tvmq.onnx_tools import export_float, ort_quantize_static

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU())
    work = tmp_path_factory.mktemp("roofline")
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 16, 12, 12)).astype(np.float32) for _ in range(2)]
    fp32 = export_float(net, (1, 16, 12, 12), work / "conv.onnx")
    return str(ort_quantize_static(fp32, work / "conv_qdq.onnx", calibration=calib))


def _compile(path, board):
    import tvmq

    cross = get_board(board).cross_compiler
    if shutil.which(cross) is None:
        pytest.skip(f"{cross} not installed (make cross-compilers)")
    return tvmq.compile(path, board=board)


@needs_mca
@pytest.mark.build
@pytest.mark.parametrize("board,instr,absent", [("rasp4b", ("smull", "smlal"), "sdot"),
                                                ("a55", ("sdot",), "smull")])
def test_small_conv_roofline(conv_qdq, board, instr, absent):
    res = roofline.analyze(_compile(conv_qdq, board))
    (k,) = res.kernels
    assert k.loop is not None, k.why_not
    mix = k.loop["mac_instructions"]
    assert any(m.startswith(instr) for m in mix) and absent not in mix, mix
    peak = max(roofline.board_peak(get_board(board)), _model_rate(board, mix))
    assert 0 < k.macs_per_cycle <= peak * 1.05, (k.macs_per_cycle, peak)
    assert k.spec.macs == 32 * 16 * 9 * 12 * 12
    assert res.estimate_ms > 0 and res.covered_macs_fraction == 1.0
    assert res.to_json()["summary"]["hottest_loop"]["macs_per_cycle"] == k.macs_per_cycle


def _model_rate(board, mix) -> float:
    """MACs/cycle llvm-mca allows 16 independent copies of the loop's MAC instruction: above
    the peak for the A55's by-element sdot (docs/roofline.md), the peak otherwise."""
    form = {"sdot": "sdot\tv{i}.4s, v20.16b, v21.4b[{j}]", "smull": "smull\tv{i}.8h, v20.8b, v21.8b",
            "smlal2": "smlal2\tv{i}.8h, v20.16b, v21.16b"}
    rates = [0.0]
    for mnemonic in set(mix) & set(form):
        body = [form[mnemonic].format(i=i, j=i % 4) for i in range(16)]
        cyc = roofline.mca_cycles(body, get_board(board))["cycles_per_iter"]
        rates.append(16 * roofline.count_macs(body[0], "aarch64") / cyc)
    return max(rates)


# ---- errors ---------------------------------------------------------------------------
def _meta(board="rasp4b", layers=()):
    return {"board": {"name": board}, "layers": list(layers)}


def test_x86_board_is_refused():
    with pytest.raises(roofline.RooflineError, match="ARM boards"):
        roofline.analyze(Artifact(None, _meta("host")))


def test_unknown_board_lists_valid_ones():
    with pytest.raises(UnknownBoardError, match="rasp4b"):
        roofline.analyze_asm(A64_ASM, "nope", [roofline.KernelSpec("c", "k", 40)])


def test_loaded_artifact_without_module_is_refused():
    with pytest.raises(roofline.RooflineError, match="tvmq.compile"):
        roofline.analyze(Artifact(None, _meta()))


def test_artifact_of_another_board_is_refused():
    with pytest.raises(roofline.RooflineError, match="compiled for 'rasp4b'"):
        roofline.analyze(Artifact(None, _meta()), board="a55")


@needs_mca
def test_no_integer_kernel():
    with pytest.raises(roofline.RooflineError, match="no integer kernel"):
        roofline.analyze_asm(A64_ASM, "a55", [])
    with pytest.raises(roofline.RooflineError, match="no integer kernel loop"):
        roofline.analyze_asm(A64_ASM, "a55", [roofline.KernelSpec("c", "missing", 40)])


def test_missing_llvm_mca_says_how_to_install(monkeypatch):
    monkeypatch.setattr(roofline.cores.shutil, "which", lambda name: None)
    with pytest.raises(roofline.RooflineError, match="llvm-14"):
        roofline.find_llvm_mca()
