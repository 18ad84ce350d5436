"""Shared fixtures: one torch thread, a briefly trained digits CNN, its supernet."""
from __future__ import annotations

import pytest
import torch

from tests._threads import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def fp32_cnn(digits_data):
    from tvmq import models
    from tvmq.train import train

    torch.set_num_threads(1)
    return train(models.create("digits_cnn"), digits_data[0], epochs=4, progress=False)


@pytest.fixture
def supernet(fp32_cnn, digits_data):
    import tvmq.eqnet as eqnet

    return eqnet.Supernet(fp32_cnn, eqnet.ElasticSpace()).initialize(digits_data[0], 2)
