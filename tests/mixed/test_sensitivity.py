"""Omega from a real (briefly trained) digits CNN: folding, MACs, ordering, validation."""
from __future__ import annotations

import pytest
import torch

from tvmq import models
from tvmq.errors import ConfigError
from tvmq.mixed import Sensitivity, fold_batchnorm, sensitivity


@pytest.fixture(scope="module")
def cnn_sens(trained_digits_cnn, digits_data):
    return sensitivity(trained_digits_cnn, digits_data[0], samples=128, max_iter=6,
                       progress=False)


def test_fold_batchnorm_keeps_outputs_and_drops_bn():
    model = models.create("digits_cnn")
    folded = fold_batchnorm(model)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # copy


def test_layers_sizes_and_macs(cnn_sens):
    by = {ly.name: ly for ly in cnn_sens.layers}
    assert list(by) == ["features.0", "features.3", "features.6", "classifier"]
    # conv 1->16 3x3 on 8x8 (pad 1): 16*8*8 outputs x 9 MACs; 16->32 stride 2: 32*4*4 x 144
    assert (by["features.0"].weights, by["features.0"].macs) == (144, 16 * 64 * 9)
    assert (by["features.3"].weights, by["features.3"].macs) == (4608, 32 * 16 * 144)
    assert (by["classifier"].weights, by["classifier"].macs) == (320, 320)


def test_omega_falls_with_bits(cnn_sens):
    for ly in cnn_sens.layers:
        w = [ly.omega_w[b] for b in cnn_sens.weight_bits]
        a = [ly.omega_a[b] for b in cnn_sens.act_bits]
        assert all(x > y for x, y in zip(w, w[1:])), (ly.name, w)
        assert all(x > y for x, y in zip(a, a[1:])), (ly.name, a)
        assert ly.weight_trace > 0  # a trained net sits near a minimum
        # quantization error of ~uniform noise falls ~4x per bit: 2 -> 8 bits >= 4^4
        assert w[0] / w[-1] > 256


def test_sensitivity_json_round_trip(cnn_sens, tmp_path):
    cnn_sens.save(tmp_path / "s.json")
    import json

    back = Sensitivity.from_json(json.loads((tmp_path / "s.json").read_text()))
    assert back.layers == cnn_sens.layers and back.method == cnn_sens.method


def test_ties_become_one_group(trained_digits_cnn, digits_data):
    sens = sensitivity(trained_digits_cnn, digits_data[0], act_bits=(8,), samples=32,
                       max_iter=1, min_iter=1, ties=[["features.3", "features.6"]],
                       progress=False)
    assert sens.groups() == [["features.0"], ["features.3", "features.6"], ["classifier"]]


@pytest.mark.parametrize("kwargs, match", [
    ({"weight_bits": (1, 4)}, "weight_bits"),
    ({"act_bits": (9,)}, "act_bits"),
    ({"layers": ["nope"]}, "not conv/linear"),
    ({"ties": [["features.0", "nope"]]}, "unknown layers"),
    ({"ties": [["features.0", "features.3"], ["features.3", "classifier"]]}, "two ties"),
])
def test_bad_arguments(trained_digits_cnn, digits_data, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        sensitivity(trained_digits_cnn, digits_data[0], samples=8, max_iter=1, min_iter=1,
                    progress=False, **kwargs)
