"""Module names recorded in an exported ONNX graph (``tvmq.quant.names``)."""
from __future__ import annotations

import io

import onnx
import pytest
import torch
from torch import nn

from tvmq.quant.names import (METADATA_KEY, module_names, read_module_names,
                              record_module_names, scope_module)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.downsample = nn.Sequential(nn.Conv2d(4, 4, 1))

    def forward(self, x):
        return self.conv(x) + self.downsample(x)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layer = nn.Sequential(_Block(), _Block())
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.layer(self.stem(x)), 1))


NAMES = ["stem", "layer.0.conv", "layer.0.downsample.0", "layer.1.conv",
         "layer.1.downsample.0", "fc"]


def _traced(model):
    buf = io.BytesIO()
    torch.onnx.export(model.eval(), (torch.randn(1, 1, 4, 4),), buf, dynamo=False,
                      do_constant_folding=False)
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("node, module", [
    ("/layer2/layer2.0/downsample/downsample.0/Conv", "layer2.0.downsample.0"),
    ("/features/features.0/Conv", "features.0"),
    ("/features.0/Conv", "features.0"),
    ("/fc/Gemm", "fc"),
    ("/Flatten", None),
    ("Conv_3", None),
])
def test_scope_module(node, module):
    assert scope_module(node) == module


def test_records_every_layer_and_reads_it_back():
    model = _Net()
    proto = _traced(model)
    names = record_module_names(proto, model)
    layers = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert [names[n] for n in layers] == NAMES
    again = onnx.load_from_string(proto.SerializeToString())
    assert read_module_names(again) == names
    record_module_names(again, model)  # recording twice keeps one entry
    assert [p.key for p in again.metadata_props].count(METADATA_KEY) == 1


def test_weight_value_names_a_node_whose_scope_and_initializer_say_nothing():
    """A traced-graph forward names nodes ``/conv_1/Conv`` and weights are not initializers
    named after parameters: the weight's value still finds the module."""
    model = _Net()
    proto = _traced(model)
    renamed = {t.name: f"const_{k}" for k, t in enumerate(proto.graph.initializer)}
    for t in proto.graph.initializer:
        t.name = renamed[t.name]
    for k, node in enumerate(proto.graph.node):
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.name = f"node{k}"
    names = module_names(proto, model)
    layers = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert [names.get(n) for n in layers] == NAMES


def test_unreadable_record_is_ignored():
    proto = _traced(_Net())
    prop = proto.metadata_props.add()
    prop.key, prop.value = METADATA_KEY, "{not json"
    assert read_module_names(proto) == {}


def test_tq_export_records_module_names_of_a_traced_resnet(tmp_path):
    """``quantize_`` runs ResNet-20's forward as a traced graph: its node names lose the
    module path (``/conv1_1/Conv``), the recorded names do not."""
    from tvmq import models
    from tvmq.quant import PTQConfig, export, get_preset, quantize_

    model = models.create("resnet20")
    quantize_(model, PTQConfig(get_preset("w8a8"), calibration=[torch.randn(2, 3, 32, 32)],
                               progress=False))
    proto = onnx.load(str(export(model, torch.randn(1, 3, 32, 32), tmp_path / "q.onnx")))
    names = read_module_names(proto)
    layers = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    expected = [name for name, m in models.create("resnet20").named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(names[n.name] for n in layers) == sorted(expected)
    shortcut = next(n for n in layers if names[n.name] == "layer2.0.downsample.0")
    assert [d for d in next(i for i in proto.graph.initializer
                            if i.name == _weight_init(proto, shortcut)).dims] == [32, 16, 1, 1]


def _weight_init(proto, node) -> str:
    """The initializer behind a layer's (dequantized) weight input."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    dq = producers.get(node.input[1])
    return dq.input[0] if dq is not None else node.input[1]
