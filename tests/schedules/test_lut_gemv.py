"""Activation-table GEMV (tvmq.schedules.lut_gemv) and its compile-time selection
(tvmq.schedules.gemv_select): bit-exact against NumPy, byte shuffles in the asm, the
selection table, and a codebook model compiled with each form."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import HOST_FLAGS, run_target
from tvmq._tvm import tensor, tvm
from tvmq.schedules import gemv_select as S
from tvmq.schedules import kernels
from tvmq.schedules import lut_gemv as LG
from tvmq.schedules.strategy import strategy_for


def _codebook(k: int, rng, zero: bool = True) -> np.ndarray:
    """``k`` distinct int8 entries holding both extremes (-128, 127) and 0 when k > 2 and
    ``zero``."""
    fixed = [-128, 127] + ([0] if k > 2 and zero else [])
    rest = np.setdiff1d(np.arange(-127, 127), fixed)
    return np.concatenate([fixed, rng.choice(rest, k - len(fixed), replace=False)]).astype(np.int8)


def _activations(k_in: int, dtype: str, rng) -> np.ndarray:
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    x = rng.integers(lo, hi + 1, (1, k_in))
    x[0, :4], x[0, -4:] = lo, hi  # both extremes, in the first and the last (partial) group
    return x.astype(dtype)


def _build_and_run(w: np.ndarray, x: np.ndarray):
    target = tvm.target.Target(run_target())
    func, consts = LG.gemv_func(w, str(x.dtype))
    lib = kernels.build(func, target, strategy_for(target), lookups=True)
    out = tensor(np.zeros((1, w.shape[1]), np.int32))
    lib(tensor(x), *[tensor(c) for c in consts], out)
    return out.numpy(), lib


def test_planes_encode_the_weights(rng):
    """Sum over planes of value x pattern bit gives back every weight; the bit planes store
    ceil(log2 K) bits a weight (NumPy only)."""
    w = _codebook(8, rng)[rng.integers(0, 8, (37, 21))]
    bit_planes, masks, coef = LG.encode_planes(w)
    assert bit_planes.shape[0] == 3 and masks.shape == (7, 3)  # 8 values, one of them 0
    pat = np.bitwise_and.reduce(bit_planes[None] ^ masks[:, :, None, None], axis=1)
    nib = np.stack([pat & 15, pat >> 4], axis=2).reshape(pat.shape[0], -1, pat.shape[2])
    bits = (nib[:, :, None, :] >> np.arange(4)[None, None, :, None]) & 1
    back = np.einsum("p,pgjn->gjn", coef[0], bits.astype(np.int64)).reshape(-1, pat.shape[2])
    np.testing.assert_array_equal(back[:37, :21], w)
    assert (coef[1] == 16 * coef[0]).all()


@pytest.mark.build
@pytest.mark.parametrize("k,k_in,n_out,dtype,zero", [
    (2, 37, 11, "uint8", True), (4, 100, 77, "int8", True), (8, 301, 129, "uint8", True),
    (16, 197, 65, "int8", True), (16, 64, 1, "uint8", True), (16, 130, 33, "uint8", False)])
def test_lut_gemv_bit_exact(k, k_in, n_out, dtype, zero, rng):
    w = _codebook(k, rng, zero)[rng.integers(0, k, (k_in, n_out))]
    x = _activations(k_in, dtype, rng)
    got, _ = _build_and_run(w, x)
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64))


@pytest.mark.build
def test_lut_gemv_worst_case_sums_stay_exact():
    """Every partial sum at its bound: 255 activations, all weights -128 or 127 (one plane
    full), over more than one uint16 chunk (4096 activations each)."""
    k_in, n_out = 4100, 3
    w = np.full((k_in, n_out), -128, np.int8)
    w[:, 1] = 127
    w[::7, 2] = 127
    x = np.full((1, k_in), 255, np.uint8)
    got, _ = _build_and_run(w, x)
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64))


@pytest.mark.build
@pytest.mark.parametrize("n_out", [10, 100])  # 16-lane and 64-lane lookup vectors
def test_lookups_are_byte_shuffles(n_out):
    if "avx2" not in HOST_FLAGS:
        pytest.skip("no AVX2 here")
    rng = np.random.default_rng(1)
    w = _codebook(4, rng)[rng.integers(0, 4, (256, n_out))]
    _, lib = _build_and_run(w, _activations(256, "uint8", rng))
    asm = lib.mod.inspect_source("asm")
    assert "vpshufb" in asm, "the table lookups should be byte shuffles"
    assert "pinsrb" not in asm and "vpgather" not in asm, "no per-lane gather left"


@pytest.mark.build
def test_aarch64_lookups_are_tbl():
    """The same kernel built for aarch64 looks up with ``tbl`` (16-byte chunks)."""
    from tvmq.boards import get_board

    target = get_board("rasp4b").tvm_target()
    rng = np.random.default_rng(2)
    func, _ = LG.gemv_func(_codebook(4, rng)[rng.integers(0, 4, (64, 40))], "int8")
    lib = kernels.build(func, target, strategy_for(target), lookups=True)
    asm = lib.mod.inspect_source("asm")
    assert "tbl\t" in asm or "tbl " in asm, "no tbl in the aarch64 LUT GEMV"


def test_eligibility():
    assert LG.eligible(np.arange(16, dtype=np.int8).reshape(4, 4))  # 16 values: 4-bit indices
    assert not LG.eligible(np.arange(-8, 9, dtype=np.int8).reshape(1, 17))  # 17 values
    assert not LG.eligible(np.zeros((4, 4), np.int8))


def _table(tmp_path, entries):
    path = tmp_path / S.TABLE_FILE
    path.write_text(json.dumps({"mcpu": "test", "entries": entries}))
    return path


def test_selection_reads_the_table_and_defaults_to_direct(tmp_path):
    path = _table(tmp_path, [
        {"in_features": 512, "out_features": 1000, "k": 2, "form": "lut"},
        {"in_features": 512, "out_features": 1000, "k": 16, "form": "direct"}])
    assert S.choose_form("x", 512, 1000, 2, path=path) == "lut"
    assert S.choose_form("x", 512, 1000, 16, path=path) == "direct"
    assert S.choose_form("x", 512, 1001, 2, path=path) == "direct", "unmeasured shape"
    assert S.choose_form("no-such-cpu", 512, 1000, 2) == "direct", "no table for this CPU"
    assert S.choose_form("x", 512, 1000, 16, mode="lut", path=path) == "lut"
    assert S.choose_form("x", 512, 1000, 2, mode="direct", path=path) == "direct"
    with pytest.raises(ValueError, match="gemv_form='auto'"):
        S.choose_form("x", 512, 1000, 2, mode="fast")


def test_table_entries_need_a_clear_win():
    rows = [{"in_features": 1, "out_features": 2, "k": 4, "direct_ms": 1.0, "lut_ms": 0.5},
            {"in_features": 1, "out_features": 2, "k": 8, "direct_ms": 1.0, "lut_ms": 0.95},
            {"in_features": 1, "out_features": 2, "k": 16, "direct_ms": 1.0, "lut_ms": 2.0}]
    assert [e["form"] for e in S.table_entries(rows)] == ["lut", "direct", "direct"]


def test_shipped_tables_agree_with_their_timings():
    for path in S.TABLE_ROOT.glob(f"*/{S.TABLE_FILE}"):
        data = json.loads(path.read_text())
        assert data["mcpu"] == path.parent.name
        for e in data["entries"]:
            faster = e["lut_over_direct"] < S.LUT_MARGIN
            assert e["form"] == ("lut" if faster else "direct"), e
            assert S.choose_form(data["mcpu"], e["in_features"], e["out_features"],
                                 e["k"]) == e["form"]


def test_pipeline_option_is_validated():
    from tvmq.pipeline import PipelineOptions

    with pytest.raises(ValueError, match="gemv_form"):
        PipelineOptions(gemv_form="fastest")


@pytest.mark.build
def test_codebook_dense_model_lut_form_matches_direct(tmp_path):
    """A batch-1 codebook Gemm (ONNX Gather + DequantizeLinear) compiled with the LUT form
    forced gives the direct build's outputs exactly, and really runs the LUT kernel."""
    import tvmq
    from tests.passes.test_codebook import _codebook as cb, _qdq_conv
    from tvmq.boards import get_board
    from tvmq.frontend import import_onnx
    from tvmq.pipeline import PipelineOptions, run_phases

    table, idx = cb(4, (37, 70))  # 37 outputs (odd), 70 inputs (not a multiple of 16)
    path, in_shape = _qdq_conv(tmp_path / "cb.onnx", table, idx, dense=False, op="Gemm")
    x = np.random.default_rng(1).normal(0, 3, in_shape).astype(np.float32)
    arts = {f: tvmq.compile(path, options=PipelineOptions(gemv_form=f))
            for f in ("direct", "lut")}
    outs = {f: art.run([x])[0] for f, art in arts.items()}
    np.testing.assert_array_equal(outs["lut"], outs["direct"])
    (layer,) = arts["lut"].meta["layers"]
    assert layer["primfunc"], "the layer table finds the LUT kernel (its layer_macs mark)"
    mod = run_phases(import_onnx(path).bind_params(), get_board("host"),
                     PipelineOptions(gemv_form="lut"), until="schedule")
    lut = [f for f in mod.functions.values() if LG.BLOCK_GEMV in f.script()]
    assert len(lut) == 1 and lut[0].attrs["tirx.is_scheduled"], "one scheduled LUT kernel"
