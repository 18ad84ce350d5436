"""onnxruntime's QOperator contrib ops (``com.microsoft``) compile and agree with onnxruntime
within one quantization step (issue 24): each op alone, and a held-out-style net with
Hardswish, a concat and a residual add quantized by ``quantize_static(QuantFormat.QOperator)``.

onnxruntime runs with graph optimizations disabled (its fused int8 kernels saturate on CPUs
without VNNI, see PLATFORM.md), one thread.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmq

pytestmark = pytest.mark.build

_U8 = TensorProto.UINT8
_vi = helper.make_tensor_value_info
_SHAPE = [1, 4, 4, 4]


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _params(**values):
    out = []
    for name, value in values.items():
        dtype = np.uint8 if name.startswith("z") else np.float32
        out.append(numpy_helper.from_array(np.asarray(value, dtype), name))
    return out


#: op -> (inputs, extra graph inputs, output shape, attributes, params)
def _case(op):
    p = _params(sx=0.05, zx=120, sb=0.03, zb=100, sy=0.04, zy=128)
    one = ["x", "sx", "zx", "sy", "zy"]
    if op == "QLinearMul":
        return ["x", "sx", "zx", "b", "sb", "zb", "sy", "zy"], ["b"], _SHAPE, {}, p
    if op == "QLinearConcat":
        return ["sy", "zy", "x", "sx", "zx", "b", "sb", "zb"], ["b"], [1, 8, 4, 4], \
            {"axis": 1}, p
    if op == "QLinearWhere":
        return ["c", "x", "sx", "zx", "b", "sb", "zb", "sy", "zy"], ["c", "b"], _SHAPE, {}, p
    if op == "QLinearAveragePool":
        return one, [], [1, 4, 2, 2], {"kernel_shape": [2, 2], "strides": [2, 2]}, p
    if op == "QLinearReduceMean":
        return one, [], [1, 4, 1, 1], {"axes": [2, 3], "keepdims": 1}, p
    if op == "QLinearSoftmax":
        p = _params(sx=0.05, zx=120, sy=1 / 256, zy=0)
        return one, [], _SHAPE, {"axis": -1, "opset": 13}, p
    if op == "QLinearLeakyRelu":
        return one, [], _SHAPE, {"alpha": 0.1}, p
    return one, [], _SHAPE, {}, p  # QLinearSigmoid


def _reduce_mean_ref(x: np.ndarray) -> list[np.ndarray]:
    """QLinearReduceMean by its definition (this onnxruntime has no CPU kernel for it):
    the mean of the dequantized input over H, W, requantized (round half to even)."""
    mean = ((x.astype(np.float32) - 120) * np.float32(0.05)).mean(axis=(2, 3), keepdims=True)
    return [np.clip(np.round(mean / np.float32(0.04)) + 128, 0, 255).astype(np.uint8)]


OPS = ["QLinearMul", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
       "QLinearAveragePool", "QLinearSoftmax", "QLinearWhere", "QLinearReduceMean"]


@pytest.mark.parametrize("op", OPS)
def test_qoperator_op_within_one_step_of_onnxruntime(op):
    inputs, extra, out_shape, attrs, params = _case(op)
    node = helper.make_node(op, inputs, ["y"], name=op.lower(), domain="com.microsoft", **attrs)
    graph_inputs = [_vi("x", _U8, _SHAPE)] + [
        _vi(n, TensorProto.BOOL if n == "c" else _U8, _SHAPE) for n in extra]
    graph = helper.make_graph([node], "g", graph_inputs, [_vi("y", _U8, out_shape)],
                              initializer=params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)  # what this onnxruntime reads
    rng = np.random.default_rng(0)
    feeds = {"x": rng.integers(0, 256, _SHAPE, dtype=np.uint8)}
    for name in extra:
        feeds[name] = rng.integers(0, 2, _SHAPE).astype(bool) if name == "c" else \
            rng.integers(0, 256, _SHAPE, dtype=np.uint8)
    (expected,) = _reduce_mean_ref(feeds["x"]) if op == "QLinearReduceMean" else \
        _ort(model, feeds)
    (got,) = tvmq.compile(model).run(feeds)
    steps = np.abs(got.astype(np.int32) - expected.astype(np.int32))
    assert got.dtype == np.uint8 and steps.max() <= 1, \
        f"{op}: {int(steps.max())} steps off, {float((steps > 0).mean()):.1%} of elements differ"


def _net():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.c3 = torch.nn.Conv2d(16, 8, 1)
            self.hs = torch.nn.Hardswish()
            self.fc = torch.nn.Linear(8, 10)

        def forward(self, x):
            a = self.hs(self.c1(x))
            b = torch.relu(self.c2(a))
            c = self.c3(torch.cat([a, b], 1)) + a  # concat and a residual add
            c = torch.nn.functional.leaky_relu(torch.sigmoid(c) * c, 0.1)
            c = torch.nn.functional.avg_pool2d(c, 2)
            return torch.softmax(self.fc(c.mean((2, 3))), -1)

    torch.manual_seed(0)
    return Net().eval()


def test_quantize_static_qoperator_net_matches_onnxruntime(tmp_path):
    """Hardswish (HardSigmoid + QLinearMul), QLinearConcat, QLinearAdd, QLinearSigmoid,
    QLinearLeakyRelu, QLinearAveragePool, QGemm, QLinearSoftmax, as onnxruntime emits them."""
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(9)]
    torch.onnx.export(_net(), torch.from_numpy(xs[0]), tmp_path / "f.onnx", dynamo=False,
                      opset_version=13, input_names=["x"])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.data = iter({"x": x} for x in xs[:8])

        def get_next(self):
            return next(self.data, None)

    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(),
                    quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    model = onnx.load(tmp_path / "q.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert {"QLinearMul", "QLinearConcat", "QLinearAdd", "HardSigmoid", "QGemm",
            "QLinearSoftmax"} <= ops, ops
    art = tvmq.compile(model)
    x = xs[8]
    (expected,) = _ort(model, {"x": x})
    (got,) = art.run(x)
    step = 1 / 256  # QLinearSoftmax's output scale
    assert np.abs(got - expected).max() <= step + 1e-7, (got, expected)
