"""QDQ models from third-party quantizers compile integer and agree with onnxruntime.

Models (:mod:`tests.thirdparty_models`): a ResNet-style net with attribute BatchNorms and a
Branchy net (depthwise, Hardswish, concat), quantized by NNCF 3.4 (``nncf.quantize`` on
ONNX, default and MIXED presets) and by Brevitas 0.13.4 QAT layers at W8A8 / W4A8 / W4A4
exported through ``export_onnx_qcdq`` (TorchScript and dynamo paths). Each must

* compile with every conv and dense integer (``tvmq info``'s per-layer report), Brevitas's
  4-bit weights stored packed,
* give every quantized tensor within one step of onnxruntime's unfused QDQ graph
  (``tvmq.verify``, ``reference="qdq-float"``; the measured worst step and mismatched
  fraction are printed), and
* pick the same top-1 class on a batch of inputs.

A representative subset runs in the default suite, the rest is ``slow`` (two in CI).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests import thirdparty_models as tp

pytestmark = pytest.mark.build

NNCF = [(name, preset) for name in tp.MODEL_NAMES for preset in tp.NNCF_PRESETS]
BREVITAS = [(name, bits, export) for name in tp.MODEL_NAMES for bits in tp.BITS
            for export in tp.EXPORTS]
DEFAULT_SUITE = {("nncf", "BranchyNet", "default"), ("nncf", "ResNetAttr", "mixed"),
                 ("brevitas", "ResNetAttr", "w4a4", "torchscript"),
                 ("brevitas", "BranchyNet", "w4a8", "dynamo")}
IN_CI = {("nncf", "BranchyNet", "mixed"), ("brevitas", "BranchyNet", "w8a8", "torchscript")}


def _marks(key):
    if key in DEFAULT_SUITE:
        return []
    return [pytest.mark.slow] + ([pytest.mark.ci] if key in IN_CI else [])


def _cases():
    for name, preset in NNCF:
        key = ("nncf", name, preset)
        yield pytest.param(key, marks=_marks(key), id="-".join(key))
    for name, bits, export in BREVITAS:
        key = ("brevitas", name, bits, export)
        yield pytest.param(key, marks=_marks(key), id="-".join(key))


def _build(key, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if key[0] == "nncf":
            return tp.nncf_qdq(tp.float_model(key[1]), tp.INPUT_SHAPE, path, preset=key[2])
        return tp.brevitas_qdq(key[1], key[2], path, export=key[3])


def _ort_top1(path, xs):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [int(np.argmax(sess.run(None, {"x": x})[0])) for x in xs]


@pytest.mark.parametrize("key", list(_cases()))
def test_thirdparty_model_compiles_integer_and_agrees(tmp_path, key):
    import tvmq
    from tvmq.verify import verify

    path = _build(key, tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        art = tvmq.compile(str(path))
        floats = [f"{ly['name']}: {ly['why_not']}" for ly in art.meta["layers"]
                  if ly["op"] in ("conv2d", "matmul", "dense") and not ly["integer"]]
        assert not floats, f"layers left float: {floats}"
        if key[0] == "brevitas":  # 4-bit weights stored packed, 2 per byte
            wbits = {ly.get("weight_bits") for ly in art.meta["layers"]
                     if ly["op"] in ("conv2d", "matmul", "dense")}
            assert wbits == {tp.BITS[key[2]][0]}, wbits
        rng = np.random.RandomState(0)
        xs = [rng.randn(*tp.INPUT_SHAPE).astype(np.float32) for _ in range(8)]
        rep = verify(str(path), str(path), {"x": xs[0]}, reference="qdq-float")
    steps = [ly for ly in rep["layers"] if ly.get("unit") == "steps"]
    worst = max(ly["max_steps"] for ly in steps)
    mism = sum(ly["mismatched"] for ly in steps) / sum(ly["size"] for ly in steps)
    msg = f"{'-'.join(key)}: worst {worst} steps, {100 * mism:.3f}% of quantized elements differ"
    print(msg)
    assert not [ly for ly in rep["layers"] if "error" in ly], rep["layers"]
    assert worst <= 1, msg
    ours = [int(np.argmax(art.run(x)[0])) for x in xs]
    assert ours == _ort_top1(path, xs), f"{msg}; top-1 {ours} vs {_ort_top1(path, xs)}"
