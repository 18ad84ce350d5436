import copy

import pytest
import torch

from tvmq import data, models, train


@pytest.fixture(scope="session")
def digits():
    return data.digits()


@pytest.fixture(scope="session")
def _trained(digits):
    torch.set_num_threads(1)
    out = {}
    for name in ("digits_cnn", "digits_cnn_silu"):
        out[name] = train.train(models.create(name), digits[0], epochs=6, progress=False)
    return out


@pytest.fixture
def trained(_trained):
    """A fresh copy of a briefly trained digits model: ``trained("digits_cnn")``."""
    return lambda name="digits_cnn": copy.deepcopy(_trained[name])
