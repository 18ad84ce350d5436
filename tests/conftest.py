"""Shared fixtures. Threads are pinned to the machine's 2 cores everywhere."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from tvmq.boards import _host_cpu_flags

torch.set_num_threads(2)
warnings.filterwarnings("ignore", category=FutureWarning)


HOST_FLAGS = _host_cpu_flags()
ZNVER4 = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}


def run_target() -> dict:
    """The x86 target tests build *and run* here: znver4 (AVX-512 VNNI + VBMI kernels) when
    this CPU executes them, else the host board's own CPU (e.g. Zen 2: the AVX2 kernels). A
    znver4 build on an AVX2-only CPU dies with SIGILL."""
    if {"avx512_vnni", "avx512vbmi"} <= HOST_FLAGS:
        return dict(ZNVER4)
    from tvmq.boards import get_board

    return {**get_board("host").target, "num-cores": 2}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def digits_data():
    from tvmq import data

    return data.digits()


@pytest.fixture(autouse=True)
def _quiet_tvm(monkeypatch):
    monkeypatch.setenv("TVM_LOG_DEBUG", os.environ.get("TVM_LOG_DEBUG", "0"))


def assert_well_formed(mod) -> None:
    """TVM's Relax well-formedness check (0.27 raises on the first violation)."""
    from tvm import relax

    relax.analysis.well_formed(mod)


def to_blocked(a: np.ndarray, blk: int) -> np.ndarray:
    """NCHW -> ``NCHW{blk}c`` (the blocked activation layout), contiguous."""
    n, c, h, w = a.shape
    return np.ascontiguousarray(a.reshape(n, c // blk, blk, h, w).transpose(0, 1, 3, 4, 2))
