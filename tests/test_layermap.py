"""Per-layer map: ``tvmq info --json`` names every layer as the user's model does, with
weight bytes as stored, bit widths, MACs (by hand from the shapes) and BOPs; timings and
tuning tasks carry the same names."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import tvmq
from tvmq import models
from tvmq.cli import main
from tvmq.layermap import _graph

FIELDS = {"name", "onnx_node", "weight_bits", "act_bits", "weight_bytes", "macs", "bops",
          "op", "relax_var", "primfunc"}
# digits_cnn at 1x1x8x8: conv 1->16 (8x8), conv 16->32 stride 2 (4x4), conv 32->32, fc 32->10
DIGITS = {"features.0": (16 * 8 * 8 * 1 * 9, 16 * 1 * 9),
          "features.3": (32 * 4 * 4 * 16 * 9, 32 * 16 * 9),
          "features.6": (32 * 4 * 4 * 32 * 9, 32 * 32 * 9),
          "classifier": (10 * 32, 10 * 32)}  # name: (MACs, weight values)


def _export(preset: str, path):
    from tvmq.quant import PTQConfig, export, get_preset, quantize_

    model = models.create("digits_cnn")
    calib = [torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(i))
             for i in range(2)]
    quantize_(model, PTQConfig(get_preset(preset), calibration=calib, progress=False))
    return export(model, torch.randn(1, 1, 8, 8), path)


def _info_json(artifact, capsys) -> dict:
    capsys.readouterr()
    assert main(["info", "--json", str(artifact)]) == 0
    return json.loads(capsys.readouterr().out)


def _compile(model_path, out) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["compile", str(model_path), "-o", str(out)]) == 0


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory):
    """A tq.export'ed digits CNN (PTQ w8a8) and its artifact."""
    tmp = tmp_path_factory.mktemp("w8a8")
    path = _export("w8a8", tmp / "q.onnx")
    _compile(path, tmp / "art")
    return path, tmp / "art"


@pytest.mark.build
def test_info_json_names_layers_by_module_with_costs(w8a8, capsys):
    path, art = w8a8
    layers = _info_json(art, capsys)["layers"]
    onnx_layers = [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "Gemm")]
    assert [ly["name"] for ly in layers] == list(DIGITS)
    assert [ly["onnx_node"] for ly in layers] == onnx_layers
    for ly in layers:
        assert FIELDS <= set(ly), ly
        macs, values = DIGITS[ly["name"]]
        assert ly["integer"] and (ly["weight_bits"], ly["act_bits"]) == (8, 8), ly
        assert ly["macs"] == macs and ly["bops"] == macs * 8 * 8
        assert ly["weight_bytes"] == values  # int8, one byte a value
        assert ly["primfunc"] and ly["primfunc_call"] == 0
    capsys.readouterr()
    assert main(["info", str(art)]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in DIGITS)


@pytest.mark.build
def test_narrow_grids_count_stored_bytes_and_their_widths(tmp_path, capsys):
    """w4a4 (first and last layer 8-bit): middle layers read 4-bit activations (the Clip in
    front of QuantizeLinear) and store their weights packed."""
    path = _export("w4a4", tmp_path / "q.onnx")
    _compile(path, tmp_path / "art")
    layers = {ly["name"]: ly for ly in _info_json(tmp_path / "art", capsys)["layers"]}
    assert list(layers) == list(DIGITS)
    for name in ("features.3", "features.6"):
        ly, (macs, values) = layers[name], DIGITS[name]
        assert ly["act_bits"] == 4 and 2 <= ly["weight_bits"] <= 4, ly
        assert ly["weight_bytes"] == math.ceil(values * ly["weight_bits"] / 8), ly
        assert ly["bops"] == macs * ly["weight_bits"] * 4
    assert (layers["features.0"]["weight_bits"], layers["features.0"]["act_bits"]) == (8, 8)


def _third_party(path):
    """A hand-written QDQ graph, no PyTorch names: a float conv, an int8 conv, a Gemm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 3, 1, 1)).astype(np.float32), "wf"),
             numpy_helper.from_array(rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "wc"),
             numpy_helper.from_array(rng.integers(-127, 128, (10, 256)).astype(np.int8), "wg"),
             numpy_helper.from_array(np.float32(0.05), "s"),
             numpy_helper.from_array(np.float32(0.01), "sw"),
             numpy_helper.from_array(np.int8(0), "z"),
             numpy_helper.from_array(np.uint8(0), "zu")]
    nodes = [helper.make_node("Conv", ["x", "wf"], ["f"], name="float_conv"),
             helper.make_node("QuantizeLinear", ["f", "s", "z"], ["fq"]),
             helper.make_node("DequantizeLinear", ["fq", "s", "z"], ["fd"]),
             helper.make_node("DequantizeLinear", ["wc", "sw", "z"], ["wcd"]),
             helper.make_node("Conv", ["fd", "wcd"], ["c"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "zu"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "s", "zu"], ["rd"]),
             helper.make_node("Flatten", ["rd"], ["fl"]),
             helper.make_node("DequantizeLinear", ["wg", "sw", "z"], ["wgd"]),
             helper.make_node("Gemm", ["fl", "wgd"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                ir_version=8), str(path))
    return path


@pytest.mark.build
def test_third_party_onnx_keeps_node_names(tmp_path, capsys):
    _compile(_third_party(tmp_path / "m.onnx"), tmp_path / "art")
    layers = _info_json(tmp_path / "art", capsys)["layers"]
    assert [(ly["name"], ly["onnx_node"]) for ly in layers] == \
        [("float_conv", "float_conv"), ("stem", "stem"), ("head", "head")]
    flt, stem, head = layers
    assert not flt["integer"] and (flt["weight_bits"], flt["act_bits"]) == (32, 32)
    assert flt["macs"] == 3 * 8 * 8 * 3 and flt["weight_bytes"] == 9 * 4
    assert flt["bops"] == flt["macs"] * 32 * 32
    assert stem["integer"] and stem["macs"] == 4 * 8 * 8 * 3 * 9 and stem["weight_bytes"] == 108
    assert head["integer"] and head["macs"] == 10 * 256 and head["weight_bytes"] == 2560
    assert all(ly["primfunc"] for ly in layers)


@pytest.mark.build
def test_torch_model_named_by_module():
    art = tvmq.compile(models.create("digits_cnn"), torch.randn(1, 1, 8, 8))
    layers = art.meta["layers"]
    assert [ly["name"] for ly in layers] == list(DIGITS)
    for ly in layers:
        macs, values = DIGITS[ly["name"]]
        assert ly["onnx_node"] is None and not ly["integer"]
        assert (ly["macs"], ly["weight_bytes"], ly["weight_bits"]) == (macs, 4 * values, 32)


@pytest.mark.build
def test_per_layer_bench_rows_carry_layer_names(w8a8):
    from tvmq import device

    _, art = w8a8
    res = device.connect("local").bench(str(art), number=2, repeat=2, per_layer=True)
    named = [row for row in res.layers if row.get("layer")]
    assert sorted(row["layer"] for row in named) == sorted(DIGITS)
    assert all((row["weight_bits"], row["act_bits"]) == (8, 8) for row in named)
    assert "features.3" in res.summary()


@pytest.mark.build
def test_tuning_tasks_name_their_layers(w8a8):
    from tvmq._tvm import meta_schedule
    from tvmq.boards import get_board
    from tvmq.layermap import task_layers
    from tvmq.tune.tuner import _legalized

    path, _ = w8a8
    board = get_board("host")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, legal, layers = _legalized(str(path), board, None, None)
    tasks = meta_schedule().relax_integration.extract_tasks(legal, board.tvm_target())
    names = task_layers([t.task_name for t in tasks], legal, layers)
    assert sorted(n for task in names for n in task) == sorted(DIGITS)


def _node(index, preds, macs):
    return _graph.Node(index, None, None, frozenset(preds), macs)


def test_match_follows_dataflow_when_branches_are_reordered():
    """A downsample branch emitted before the main path's conv (FuseOps may reorder
    independent branches): paired by upstream layers and MACs, not by position."""
    src = [_node(0, [], 100), _node(1, [0], 900), _node(2, [1], 900), _node(3, [0], 100)]
    dst = [_node(0, [], 100), _node(1, [0], 100), _node(2, [0], 900), _node(3, [2], 900)]
    assert _graph.match(src, dst, _graph.kernel_fits) == {0: 0, 1: 3, 2: 1, 3: 2}
