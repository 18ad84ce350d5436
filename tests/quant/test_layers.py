"""BatchNorm folding, per-layer overrides, first/last policy."""
import copy

import pytest
import torch
from torch import nn

from tvmq import models
from tvmq.errors import ConfigError
from tvmq.quant import (FakeQuantConfig, LSQConfig, QATConfig, QuantConv2d, QuantConvBn2d,
                        QuantLinear, Quantizer, QuantSpec, fit, freeze_bn, get_preset,
                        quantize_, quantizers)
from tvmq.quant.graph import JOIN_PREFIX


def _float_only(base):
    return type(base)(weight=None, activation=None)


def test_bn_folding_equivalence():
    ref = models.create("digits_cnn")
    x = torch.randn(16, 1, 8, 8)
    qm = quantize_(copy.deepcopy(ref), QATConfig(_float_only(LSQConfig())))
    assert isinstance(qm.features[0], QuantConvBn2d) and isinstance(qm.features[1], nn.Identity)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(qm.eval()(x), expected, atol=1e-5, rtol=0)
        converted = quantize_(qm, QATConfig(_float_only(LSQConfig()), step="convert"))
        assert isinstance(converted.features[0], QuantConv2d)
        torch.testing.assert_close(converted(x), expected, atol=1e-5, rtol=0)


def test_bn_training_uses_batch_stats_until_frozen():
    ref = models.create("digits_cnn").train()
    qm = quantize_(copy.deepcopy(ref), QATConfig(_float_only(LSQConfig())))
    qm.train()
    x = torch.randn(32, 1, 8, 8) * 3 + 1
    torch.testing.assert_close(qm(x), ref(x), atol=1e-4, rtol=1e-4)
    layer = qm.features[0]
    before = layer.bn.running_mean.clone()
    freeze_bn(qm)
    qm(x)
    torch.testing.assert_close(layer.bn.running_mean, before)


def test_per_layer_overrides_and_first_last(trained):
    model = trained("digits_cnn")
    base = get_preset("w4a4")
    cfg = QATConfig(base, overrides={"features.3": get_preset("w2a2"), "features.6": None})
    quantize_(model, cfg)
    first, mid, skipped, last = (model.features[0], model.features[3], model.features[6],
                                 model.classifier)
    assert first.weight_quant.bits == 8 and first.input_quant.bits == 8  # first_last_bits=8
    assert mid.weight_quant.bits == 2 and mid.input_quant.bits == 2
    assert isinstance(skipped, nn.Conv2d) and not isinstance(skipped, (QuantConv2d,))
    assert isinstance(last, QuantLinear) and last.weight_quant.bits == 8


def test_first_last_policy_configurable(trained):
    model = trained("digits_cnn")
    base = LSQConfig(weight=QuantSpec(3), activation=QuantSpec(3), first_last_bits=None)
    quantize_(model, QATConfig(base))
    layer_quants = [q for name, q in model.named_modules() if isinstance(q, Quantizer)
                    and not name.startswith(JOIN_PREFIX)]
    assert {q.bits for q in layer_quants} == {3}
    # the pool's input and output (a join) stay 8-bit: integer pooling needs no fewer bits
    assert {q.bits for q in quantizers(model)} - {q.bits for q in layer_quants} == {8}


def test_unknown_override_name_lists_layers(trained):
    with pytest.raises(ConfigError, match="features.0"):
        quantize_(trained("digits_cnn"), QATConfig(LSQConfig(), overrides={"conv9": None}))


def test_skip_keeps_layer_float(trained):
    model = trained("digits_cnn")
    quantize_(model, QATConfig(FakeQuantConfig(skip=("classifier",))))
    assert type(model.classifier) is nn.Linear


def test_qat_w4a4_trains_close_to_fp32(trained, digits):
    from tvmq.train import accuracy, predict
    train_set, test_set = digits
    model = trained("digits_cnn")
    fp32 = accuracy(predict(model, test_set.x), test_set.y)
    cfg = QATConfig(get_preset("w4a4"), freeze_bn_after=3)
    quantize_(model, cfg)
    fit(model, train_set, epochs=4, progress=False)
    assert all(m.bn_frozen for m in model.modules() if isinstance(m, QuantConvBn2d))
    quantize_(model, QATConfig(get_preset("w4a4"), step="convert"))
    acc = accuracy(predict(model, test_set.x), test_set.y)
    assert acc >= fp32 - 2.0, f"QAT W4A4 {acc:.2f}% vs fp32 {fp32:.2f}%"
