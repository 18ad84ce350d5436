"""The QDQ patterns that NNCF's and Brevitas's exports put in a graph, one minimal graph each.

Each compiles integer (no conv/dense left float) and exact against :mod:`tvmq.qref`, at most
one step from onnxruntime's unfused graph (:func:`.test_differential_fuzz.check_graph`).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ._random_qdq import QDQGraph
from .test_differential_fuzz import LAYOUTS, check_graph

pytestmark = pytest.mark.build
ONE_LAYOUT = {"default": LAYOUTS["default"]}


def _graph(seed: int = 0, shape=(1, 8, 16, 16)) -> QDQGraph:
    return QDQGraph(shape, np.random.RandomState(seed))


@pytest.mark.parametrize("per_channel", [True, False])
def test_float_bias_off_the_accumulator_grid(tmp_path, per_channel):
    """NNCF and Brevitas keep float biases (BatchNorm folded in): not rounded to the
    accumulator grid (that moved outputs by up to s_acc / 2 and flipped ~2% of them by one
    step against the QDQ graph), but added at the fixed point's precision."""
    g = _graph(5)
    mid = g.conv(g.input, 16, float_bias=True, per_channel=per_channel)
    out = g.dense(g.global_pool(g.conv(mid, 16, float_bias=True, relu=False)), 10,
                  float_bias=True)
    check_graph(g.model([out, mid]), g.x, [out, mid], tmp_path, ONE_LAYOUT)


def test_dequantize_maxpool_conv(tmp_path):
    """NNCF: DQ -> MaxPool -> Conv (the pool between the dequantize and the conv)."""
    g = _graph()
    out = g.conv(g.maxpool(g.conv(g.input, 16), requantize=False), 16)
    check_graph(g.model([out]), g.x, [out], tmp_path, ONE_LAYOUT)


def test_dequantize_flatten_gemm(tmp_path):
    """NNCF and Brevitas classifiers: DQ -> Flatten -> Gemm (transB) runs integer."""
    g = _graph()
    out = g.dense(g.global_pool(g.conv(g.input, 16)), 10)
    check_graph(g.model([out]), g.x, [out], tmp_path, ONE_LAYOUT)


@pytest.mark.parametrize("chain", ["clip", "q_clip", "q"])
@pytest.mark.parametrize("bits", [8, 4])
def test_exporter_weight_chains(tmp_path, chain, bits):
    """Brevitas: W_int8 -> Clip -> DQ (TorchScript export), W_f32 -> Q -> Clip -> DQ (dynamo
    export), W_f32 -> Q -> DQ: integer weights, and 4-bit ones stored packed."""
    import tvmq

    g = _graph(bits)
    mid = g.conv(g.input, 16, weight_bits=bits, weight_chain=chain)
    out = g.conv(mid, 16, weight_bits=bits, weight_chain=chain, per_channel=False)
    model = g.model([out])
    check_graph(model, g.x, [out], tmp_path, ONE_LAYOUT)
    convs = [ly for ly in tvmq.compile(model).meta["layers"] if ly["op"] == "conv2d"]
    assert [ly.get("weight_bits") for ly in convs] == [bits, bits], convs


def test_conv_with_float_input_stays_float_with_a_reason(tmp_path):
    """A conv whose weight is quantized but whose input is float (no activation QDQ) stays
    float; it used to crash the lowering (a Relax expression tested for truth), and the
    report gives the reason."""
    import tvmq

    rng = np.random.RandomState(0)
    w = rng.randint(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wf"]),
             helper.make_node("Conv", ["x", "wf"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.01), "sw"),
         numpy_helper.from_array(np.int8(0), "zw")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = rng.randn(1, 3, 8, 8).astype(np.float32)
    with pytest.warns(UserWarning, match="input is not dequantized"):
        art = tvmq.compile(model)
    conv = [ly for ly in art.meta["layers"] if ly["op"] == "conv2d"][0]
    assert not conv["integer"] and "input is not dequantized" in conv["why_not"]
    ref = _ort(model, x)
    np.testing.assert_allclose(art.run(x)[0], ref, rtol=1e-5, atol=1e-5)


def _ort(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_initializers_listed_as_inputs(tmp_path):
    """Older exporters, torch's ``keep_initializers_as_inputs`` and Brevitas list weights as
    graph inputs too; TVM failed with 'multiple parameters with name'. Also a plain fp32
    conv. Those inputs compile as the initializers' constants."""
    import tvmq

    g = _graph()
    out = g.conv(g.conv(g.input, 16), 16)
    model = g.model([out])
    model.graph.input.extend(
        helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
        for i in model.graph.initializer)
    check_graph(model, g.x, [out], tmp_path, ONE_LAYOUT)
    art = tvmq.compile(model)
    assert [s["name"] for s in art.input_specs] == ["x"]

    rng = np.random.RandomState(1)
    w = rng.randn(4, 3, 3, 3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "fp32",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [numpy_helper.from_array(w, "w")])
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = rng.randn(1, 3, 8, 8).astype(np.float32)
    np.testing.assert_allclose(tvmq.compile(fp32).run(x)[0], _ort(fp32, x), rtol=1e-5,
                               atol=1e-5)
    onnx.checker.check_model(fp32)
