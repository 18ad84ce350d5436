"""Graph-level patterns (torch.fx): BN folding of attribute-style convs, quantized joins."""
from __future__ import annotations

import collections
import copy
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tvmq
from tvmq.quant import PTQConfig, QATConfig, export, get_preset, quantize_, quantizers
from tvmq.quant.graph import JOIN_PREFIX


class AttrNet(nn.Module):
    """Convs and BNs as attributes, wired in forward: residual add, max pool, concat, pool."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16)
        self.conv4 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(x))
        x = self.relu(x + y)
        x = F.max_pool2d(x, 2)
        a = self.bn3(self.conv3(x))
        z = torch.cat([a, self.conv4(a)], 1)
        return self.fc(torch.flatten(self.pool(z), 1))


def _net(seed=0):
    torch.manual_seed(seed)
    net = AttrNet().eval()
    for bn in (net.bn1, net.bn2, net.bn3):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return net


def _calib(n=4):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 16, 16, generator=gen) for _ in range(n)]


@pytest.fixture
def quantized():
    net = _net()
    quantize_(net, PTQConfig(get_preset("w8a8"), calibration=_calib(), progress=False))
    return net


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_attribute_bns_are_folded(quantized, tmp_path):
    assert all(isinstance(getattr(quantized, f"bn{i}"), nn.Identity) for i in (1, 2, 3))
    model = onnx.load(str(export(quantized, torch.randn(1, 3, 16, 16), tmp_path / "q.onnx")))
    assert "BatchNormalization" not in [n.op_type for n in model.graph.node]


def test_joins_read_and_write_quantized_tensors(quantized, tmp_path):
    model = onnx.load(str(export(quantized, torch.randn(1, 3, 16, 16), tmp_path / "q.onnx")))
    prod = _producers(model)
    users = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            users[i].append(n)
    joins = [n for n in model.graph.node
             if n.op_type in ("Add", "Concat", "MaxPool", "GlobalAveragePool")]
    assert sorted(n.op_type for n in joins) == ["Add", "Concat", "GlobalAveragePool", "MaxPool"]
    for node in joins:
        assert all(prod[i].op_type == "DequantizeLinear" for i in node.input), node.op_type
        if node.op_type == "MaxPool":
            continue
        out = users[node.output[0]]
        if out[0].op_type == "Relu":
            out = users[out[0].output[0]]
        assert [n.op_type for n in out] == ["QuantizeLinear"], node.op_type
    # one Q per tensor: input, relu1 (conv2 + add), conv2, add+relu, conv3 (conv4 + concat),
    # conv4, concat, pool; the layers reading an already quantized tensor share its Q
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] == 8, ops
    assert sum(n.startswith(JOIN_PREFIX) for n, _ in quantized.named_children()) == 7


def test_export_matches_fake_quant(quantized, tmp_path):
    path = export(quantized, torch.randn(1, 3, 16, 16), tmp_path / "q.onnx")
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = quantized(x).numpy()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    # float32 convs summed in another order may move one code by one step (test_export.py)
    off = (np.abs(got - ref) > 1e-4 * np.abs(ref).max()).any(axis=1)
    assert off.mean() <= 0.05, f"{int(off.sum())} of {len(off)} samples differ"


@pytest.mark.build
def test_compiled_export_is_integer_end_to_end(quantized, tmp_path):
    path = export(quantized, torch.randn(1, 3, 16, 16), tmp_path / "q.onnx")
    art = tvmq.compile(path, input_shapes={"input": (1, 3, 16, 16)})
    kinds = ("conv2d", "matmul", "add", "concat", "mean", "max_pool2d", "global_avg_pool")
    layers = [(l["op"], l["integer"]) for l in art.meta["ops"] if l["op"] in kinds]
    floats = [op for op, integer in layers if not integer]
    # the float ops left: the classifier's float bias added after its output dequantize
    assert floats in ([], ["add"]), layers
    assert sum(integer for _, integer in layers) >= 8, layers
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = quantized(x).numpy()
    err = np.abs(art.run(x.numpy())[0] - ref).max()
    assert err <= 0.02 * np.abs(ref).max(), f"max error {err:.4g} of range {np.abs(ref).max():.4g}"


def test_untraceable_model_falls_back_with_a_warning():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.other = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.seq(x)
            return self.other(y) + y if y.sum() > 0 else y  # data-dependent: fx cannot trace

    net = Branchy().eval()
    with pytest.warns(UserWarning, match="torch.fx cannot trace"):
        quantize_(net, PTQConfig(get_preset("w8a8"), calibration=_calib(1), progress=False))
    assert isinstance(net.seq[1], nn.Identity), "Sequential adjacency still folds BN"
    assert not any(n.startswith(JOIN_PREFIX) for n, _ in net.named_children())


def test_prepare_twice_and_deepcopy_keep_one_quantizer_per_tensor():
    net = _net()
    cfg = QATConfig(get_preset("w8a8"))
    quantize_(net, cfg)
    count = len(quantizers(net))
    quantize_(net, cfg)
    assert len(quantizers(net)) == count
    x = torch.randn(2, 3, 16, 16)
    clone = copy.deepcopy(net).eval()
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x), net(x), rtol=0, atol=0)
    assert isinstance(clone, AttrNet) and type(clone) is type(net)


def test_quantize_joins_off_leaves_joins_float():
    net = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_(net, PTQConfig(get_preset("w8a8"), calibration=_calib(1), progress=False,
                                 quantize_joins=False))
    assert not any(n.startswith(JOIN_PREFIX) for n, _ in net.named_children())
    assert isinstance(net.bn2, nn.Identity)


_ZOO_FAST = ["digits_cnn", "digits_cnn_silu", "resnet20"]


@pytest.mark.build
@pytest.mark.parametrize("name", _ZOO_FAST + [
    pytest.param("mobilenet_v2", marks=pytest.mark.slow),
    pytest.param("resnet18", marks=pytest.mark.slow)])
def test_zoo_w8a8_export_has_no_float_layer(name, tmp_path):
    """tvmq's own W8A8 export of every zoo model compiles to integer convs, dense, adds,
    concats and pools (the float ops left are the output dequantize and its bias add)."""
    net, shape = tvmq.models.create(name), tvmq.models.input_shape(name)
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, *shape[1:], generator=gen) for _ in range(2)]
    quantize_(net, PTQConfig(get_preset("w8a8"), calibration=calib, progress=False))
    path = export(net, torch.randn(*shape), tmp_path / "q.onnx")
    art = tvmq.compile(path, input_shapes={"input": shape})
    kinds = ("conv2d", "matmul", "concat", "mean", "max_pool2d", "global_avg_pool", "avg_pool2d")
    floats = [(l["name"], l["op"]) for l in art.meta["ops"]
              if l["op"] in kinds and not l["integer"]]
    assert not floats, floats
    assert all(l["integer"] for l in art.meta["layers"]), art.meta["layers"]
    if name == "digits_cnn_silu":  # each conv's output is quantized before its SiLU: a table
        assert sum(l["op"] == "lookup" and l["integer"] for l in art.meta["ops"]) == 3
    adds = [l for l in art.meta["ops"] if l["op"] == "add"]
    assert sum(not l["integer"] for l in adds) <= 1, [(l["name"], l["integer"]) for l in adds]


class ActNet(nn.Module):
    """Attribute-style conv + BN feeding a LeakyReLU module, a functional GELU, a Hardswish
    after a residual add (already quantized there; with the ReLU after it, one table)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.leaky, self.hs = nn.LeakyReLU(0.1), nn.Hardswish()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)

    def forward(self, x):
        x = self.leaky(self.bn1(self.conv1(x)))
        y = F.gelu(self.conv2(x))
        x = self.hs(x + self.conv3(y))
        return self.fc(torch.flatten(self.pool(torch.relu(x)), 1))


@pytest.mark.build
def test_activation_inputs_quantized_and_compiled_as_tables(tmp_path):
    """A quantized layer feeding a non-ReLU activation gets an 8-bit output quantizer (the
    activation's input), so the compiled model runs it as a lookup table: no float op
    between the input and the output's dequantize + bias add; TVM = fake-quant argmax."""
    torch.manual_seed(0)
    net = ActNet().eval()
    net.bn1.running_mean.uniform_(-0.2, 0.2)
    net.bn1.running_var.uniform_(0.5, 1.5)
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(2)]
    quantize_(net, PTQConfig(get_preset("w8a8"), calibration=calib, progress=False))
    joins = [n for n, _ in net.named_children() if n.startswith(JOIN_PREFIX)]
    # conv1 (LeakyReLU input), conv2 (GELU input), the add's two inputs ... and output
    assert len(joins) >= 4, joins
    path = export(net, torch.randn(1, 3, 8, 8), tmp_path / "q.onnx")
    art = tvmq.compile(path, input_shapes={"input": (1, 3, 8, 8)})
    ops = art.meta["ops"]
    assert sum(o["op"] == "lookup" and o["integer"] for o in ops) == 3, ops
    floats = [o["op"] for o in ops if not o["integer"] and o["op"] not in ("quantize",
                                                                          "dequantize")]
    assert floats == ["add"], floats  # the classifier's bias add on the float output
    x = torch.randn(64, 3, 8, 8, generator=gen)
    with torch.no_grad():
        ref = net(x).numpy()
    got = np.concatenate([art.run(x[i:i + 1].numpy())[0] for i in range(len(x))])
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98
    np.testing.assert_allclose(got, ref, atol=0.05 * np.abs(ref).max())
