"""Shared fixtures: a synthetic sensitivity (no Hessian), a briefly trained digits CNN."""
from __future__ import annotations

import numpy as np
import pytest

from tests._threads import one_torch_thread
from tvmq.mixed.sensitivity import LayerSensitivity, Sensitivity


def synthetic_sensitivity(n_layers: int = 6, seed: int = 0, weight_bits=(2, 3, 4, 5, 6, 8),
                          act_bits=(4, 6, 8), ties=()) -> Sensitivity:
    """Layers with random sizes and traces; Omega falls 4x per weight bit, as uniform
    quantization noise does."""
    from tvmq.quant.presets import get_preset

    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n_layers):
        n = int(rng.integers(1, 40)) * 16
        tr = float(rng.lognormal(0, 1.5))
        layers.append(LayerSensitivity(
            f"layer{i}", n, n * int(rng.integers(4, 64)), tr, tr / 10,
            {b: 0.5 * tr * 4.0 ** -b * rng.uniform(0.8, 1.2) for b in weight_bits},
            {b: 0.05 * tr * 4.0 ** -b for b in act_bits}))
    return Sensitivity(layers, tuple(weight_bits), tuple(act_bits), [list(t) for t in ties],
                       get_preset("w8a8"), 1, 1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture
def sens() -> Sensitivity:
    return synthetic_sensitivity()


@pytest.fixture(scope="session")
def trained_digits_cnn(digits_data):
    from tvmq import models
    from tvmq.train import train

    with one_torch_thread():
        return train(models.create("digits_cnn"), digits_data[0], epochs=4, progress=False)
