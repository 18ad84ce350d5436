"""The emulated aarch64 board (qemu-user chroot, key arm64-emu) over real RPC.

Build it first (root, ~5 min, 0.8 GB, cached in ~/.cache/tvmq/boards/arm64):
``scripts/emulated-board.sh build`` (CI: ``scripts/ci-board.sh``). Skips, with the reason, when
the board cannot be started here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tvmq import device
from tvmq.errors import DeviceError

pytestmark = [pytest.mark.board, pytest.mark.build]


@pytest.fixture(scope="module")
def arm_board(rpc_tracker):
    addr, _ = rpc_tracker
    try:
        device.up(port=addr.port, emulated_arm=True, host_server=False)
    except DeviceError as err:
        print(f"emulated board unavailable: {err}")
        pytest.skip(f"emulated board unavailable: {err}")
    return f"rpc://{addr.host}:{addr.port}/arm64-emu"


def test_cross_artifact_matches_host_on_emulated_board(arm_board, digits_artifacts):
    host, arm = digits_artifacts
    if arm is None:
        pytest.skip("no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu)")
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    with device.connect(arm_board, timeout=120) as board:
        res = board.bench(arm, inputs=x, reference=host, number=3, repeat=3)
    print(res.summary())
    assert res.validated and res.max_abs_error <= 1e-5, res.max_abs_error
    assert any("not Cortex latency" in n for n in res.notes)
