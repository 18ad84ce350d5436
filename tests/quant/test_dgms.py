"""DGMS: config checks, the mixture (init, soft/hard assignment), convert, export, compile."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import tvmq
from tvmq.errors import ConfigError
from tvmq.quant import (PerChannel, QATConfig, QuantSpec, calibrate, export, fit, get_preset,
                        load_plan, quantize_, quantizers, save_plan)
from tvmq.quant.methods import DGMSConfig, GMMQuantizer
from tvmq.quant.methods.dgms import kmeans_1d
from tvmq.train import accuracy, predict


@pytest.mark.parametrize("kwargs,fix", [({"k": 12}, "k=16"), ({"k": 512}, "k=256"),
                                        ({"k": 1}, "k=2"), ({"temperature": 0.0}, "temperature=0.01"),
                                        ({"weight": QuantSpec(8, PerChannel())}, "weight=QuantSpec"),
                                        ({"layer_types": ("Conv3d",)}, "layer_types=")])
def test_bad_configs_show_the_corrected_call(kwargs, fix):
    with pytest.raises(ConfigError, match="DGMSConfig") as err:
        DGMSConfig(**kwargs)
    assert fix in err.value.fix


def test_kmeans_init_pins_a_zero_component():
    torch.manual_seed(0)
    w = torch.cat([torch.randn(500) * 0.01, torch.randn(300) * 0.02 + 0.3,
                   torch.randn(300) * 0.02 - 0.3, torch.randn(100) * 0.02 + 0.6])
    centers, assign = kmeans_1d(w, 4)
    np.testing.assert_allclose(np.sort(centers.numpy()), [-0.3, 0.0, 0.3, 0.6], atol=0.02)
    q = GMMQuantizer(4, 0.01, integer_table=False)
    q.init_from(w)
    c = q.centers().detach()
    assert c[0] == 0
    np.testing.assert_allclose(np.sort(c[1:].numpy()), [-0.3, 0.3, 0.6], atol=0.02)
    pi = q.pi.detach() / q.pi.detach().sum()
    assert abs(float(pi[0]) - 500 / 1200) < 0.05  # the zero cluster's share
    assert float(q.sigma_zero) < 0.05 and (q.sigma.detach() < 0.05).all()


def test_soft_assignment_is_differentiable_and_hard_at_inference():
    torch.manual_seed(1)
    w = torch.randn(64, 32) * 0.1
    q = GMMQuantizer(8, 0.01, integer_table=False)
    q.init_from(w)
    wp = w.clone().requires_grad_(True)
    q.train()
    soft = q(wp)
    soft.pow(2).sum().backward()
    assert wp.grad is not None and wp.grad.abs().sum() > 0, "no gradient to the weights"
    assert q.mu.grad.abs().sum() > 0 and q.sigma.grad.abs().sum() > 0 and q.pi.grad.abs().sum() > 0
    q.eval()
    hard = q(w)
    assert torch.unique(hard).numel() <= 8
    assert set(torch.unique(hard).tolist()) <= set(q.centers().tolist())
    # at tau = 0.01 the soft weights sit on the hard ones except near decision boundaries
    assert (soft.detach() - hard).abs().lt(1e-3).float().mean() > 0.9


def test_prepare_fit_convert_export_int8_table(trained, digits, tmp_path):
    train_set, test_set = digits
    model = trained("digits_cnn")
    ref = predict(model, test_set.x)
    cfg = get_preset("dgms_k4_a8")
    quantize_(model, QATConfig(cfg))
    fit(model, train_set, epochs=1, lr=3e-4, progress=False)
    quantize_(model, QATConfig(cfg, step="convert"))
    wqs = [q for q in quantizers(model, "weight") if isinstance(q, GMMQuantizer)]
    assert [q.k for q in wqs] == [256, 4, 4, 256]  # first and last layers: K = 2**8
    for layer in [m for m in model.modules() if isinstance(getattr(m, "weight_quant", None),
                                                           GMMQuantizer)]:
        d = layer.weight_quant.describe(layer.weight)
        np.testing.assert_array_equal(layer.weight_quant(layer.weight).detach().numpy(),
                                      d.weight())
        np.testing.assert_array_equal(  # centers snapped exactly to the int8 grid
            d.centers[d.indices], d.table[d.indices].astype(np.float32) * np.float32(d.scale))
        assert d.indices.dtype == np.uint8 and d.table[0] == 0
        # digits_cnn's convs have BN: one table per layer, BN's factor per output channel
        has_bn = isinstance(layer, torch.nn.Conv2d)
        assert (d.channel_scale is not None) == has_bn
        if has_bn:
            assert d.channel_scale.shape == (layer.out_channels,)
    got = predict(model, test_set.x)
    assert accuracy(got, test_set.y) >= accuracy(ref, test_set.y) - 5
    path = export(model, torch.from_numpy(test_set.x[:1]), tmp_path / "q.onnx")
    m = onnx.load(path)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Gather") == 4 and ops.count("Cast") == 4
    inits = {t.name: t for t in m.graph.initializer}
    gathers = [n for n in m.graph.node if n.op_type == "Gather"]
    assert all(inits[g.input[0]].data_type == onnx.TensorProto.INT8 for g in gathers)
    dqs = {n.input[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    scales = [onnx.numpy_helper.to_array(inits[dqs[g.output[0]].input[1]]) for g in gathers]
    assert [s.shape for s in scales] == [(16,), (32,), (32,), ()]  # per channel after BN
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    out = ort.InferenceSession(str(path), so).run(None, {"input": test_set.x})[0]
    assert (out.argmax(1) == got.argmax(1)).mean() > 0.99


@pytest.mark.build
def test_weight_only_codebook_compiles_and_matches(trained, digits, tmp_path):
    train_set, test_set = digits
    model = trained("digits_cnn")
    cfg = get_preset("dgms_k16")
    quantize_(model, QATConfig(cfg))
    quantize_(model, QATConfig(cfg, step="convert"))  # from the k-means init
    path = export(model, torch.from_numpy(test_set.x[:1]), tmp_path / "q.onnx")
    art = tvmq.compile(path, input_shapes={"input": (1, 1, 8, 8)})
    x = test_set.x[:64]
    got = np.concatenate([art.run([x[i:i + 1]])[0] for i in range(len(x))])
    ref = predict(model, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    books = [layer["codebook"] for layer in art.meta["layers"]]
    assert [b["k"] for b in books] == [256, 16, 16, 256]
    assert all(b["table_dtype"] == "float32" for b in books)


@pytest.mark.build
def test_int8_codebook_with_bn_compiles_per_channel_and_matches(trained, digits, tmp_path):
    """Conv + BN layers export one int8 table and a per-channel DequantizeLinear scale
    (BN's factor); the integer build keeps the codebook and matches the PyTorch model."""
    train_set, test_set = digits
    model = trained("digits_cnn")
    cfg = get_preset("dgms_k16_a8")
    quantize_(model, QATConfig(cfg))
    calibrate(model, train_set, max_batches=2, progress=False)
    quantize_(model, QATConfig(cfg, step="convert"))  # from the k-means init
    path = export(model, torch.from_numpy(test_set.x[:1]), tmp_path / "q.onnx")
    art = tvmq.compile(path, input_shapes={"input": (1, 1, 8, 8)})
    dense = tvmq.compile(_dense_weights(path, tmp_path / "dense.onnx"),
                         input_shapes={"input": (1, 1, 8, 8)})
    x = test_set.x[:64]
    got = np.concatenate([art.run([x[i:i + 1]])[0] for i in range(len(x))])
    want = np.concatenate([dense.run([x[i:i + 1]])[0] for i in range(len(x))])
    np.testing.assert_array_equal(got, want)  # the lookups are exact
    ref = predict(model, x)  # PyTorch: float requantization, a step apart at most here
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98
    layers = art.meta["layers"]
    assert [ly["codebook"]["k"] for ly in layers] == [256, 16, 16, 256]
    assert all(ly["integer"] for ly in layers)
    assert not any(ly.get("codebook") for ly in dense.meta["layers"])


def _dense_weights(path, out):
    """The same ONNX model with every ``Gather(table, Cast(indices))`` weight replaced by
    the int8 initializer it selects."""
    m = onnx.load(path)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    casts = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "Cast"}
    for node in [n for n in m.graph.node if n.op_type == "Gather"]:
        table, idx = inits[node.input[0]], inits[casts[node.input[1]]]
        m.graph.initializer.append(onnx.numpy_helper.from_array(
            table[idx.astype(np.int64)], node.output[0]))
        m.graph.node.remove(node)
    onnx.save(m, out)
    return out


def test_plans_set_k_per_layer(tmp_path):
    from tvmq.models import create

    plan = {"features.3": DGMSConfig(k=4), "features.6": DGMSConfig(k=32, temperature=0.02)}
    path = save_plan(plan, tmp_path / "plan.json")
    loaded = load_plan(path)
    assert loaded == plan
    model = create("digits_cnn")
    quantize_(model, QATConfig(get_preset("dgms_k16"), overrides=loaded))
    ks = {name: m.weight_quant.k for name, m in model.named_modules()
          if isinstance(getattr(m, "weight_quant", None), GMMQuantizer)}
    assert ks == {"features.0": 256, "features.3": 4, "features.6": 32, "classifier": 256}
    assert math.isclose(model.get_submodule("features.6").weight_quant.temperature, 0.02)
