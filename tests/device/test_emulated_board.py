"""The emulated aarch64 board (qemu-user chroot, key arm64-emu) over real RPC.

Build it first (root, ~5 min, 0.8 GB, cached in ~/.cache/tvmq/boards/arm64):
``scripts/emulated-board.sh build`` (CI: ``scripts/ci-board.sh``). Skips, with the reason, when
the board cannot be started here.
"""
from __future__ import annotations

import shutil
import subprocess

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


class _Dense(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(32, 16)

    def forward(self, x):
        return torch.relu(self.fc(x))


@pytest.mark.tuning
def test_tune_over_rpc_on_emulated_board(arm_board, tmp_path):
    """`tvmq tune --board arm64-emu --device rpc://...`: cross-built candidates measured on the
    emulated board through MetaSchedule's RPC runner (timings are emulation; the pipeline is
    real), then the tuned artifact checked on the board against the host build."""
    import tvmq
    from tvmq.cli import main

    torch.manual_seed(0)
    model, x = _Dense().eval(), torch.randn(1, 32)
    path = tmp_path / "dense.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    db = tmp_path / "db"
    assert main(["tune", str(path), "--board", "arm64-emu", "--device", arm_board,
                 "--trials", "2", "--trials-per-iter", "2", "--db", str(db), "--quiet"]) == 0
    report = tvmq.tune.tune(path, "arm64-emu", device=arm_board, trials=2, db=db,
                            progress=False)
    assert report.trials_run == 0 and report.trials_before >= 2  # resumed, not restarted
    assert any(t["best_us"] is not None for t in report.tasks), report.to_json()
    arm = tvmq.compile(str(path), board="arm64-emu",
                       options=tvmq.PipelineOptions(database=str(db)))
    assert arm.meta["schedules"]["tuned_funcs"]
    arm_dir = arm.save(tmp_path / "arm")
    host_dir = tvmq.compile(str(path), board="host").save(tmp_path / "host")
    with device.connect(arm_board, timeout=120) as board:
        res = board.bench(arm_dir, inputs=x.numpy(), reference=host_dir, number=1, repeat=2)
    assert res.validated and res.max_abs_error <= 1e-5


@pytest.mark.parametrize("board_name", ["a55", "rasp4b"])
def test_codebook_artifact_bit_exact_on_emulated_board(arm_board, tmp_path, board_name):
    """A codebook (DGMS-form) integer model built for an Arm board runs on the emulated board
    with outputs equal to the host build's (sdot kernels on a55, NEON smull on rasp4b)."""
    import tvmq
    from tests.passes.test_codebook import _codebook, _qdq_conv
    from tvmq.errors import TvmqError

    table, idx = _codebook(16, (16, 8, 3, 3))
    path, shape = _qdq_conv(tmp_path / "cb.onnx", table, idx, dense=False)
    host = tvmq.compile(path, board="host").save(tmp_path / "host")
    try:
        arm = tvmq.compile(path, board=board_name).save(tmp_path / board_name)
    except TvmqError as err:
        pytest.skip(f"no aarch64 artifact: {err}")
    assert tvmq.load(arm).meta["layers"][0]["codebook"]["k"] == 16
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:  # the table looked up in registers (tvmq.schedules.lookup), not a gather
        asm = subprocess.run([objdump, "-d", str(arm / "lib.so")], capture_output=True,
                             text=True, check=True).stdout
        assert "\ttbl\t" in asm, "no tbl in the aarch64 codebook kernel"
    x = np.random.default_rng(3).normal(0, 2, shape).astype(np.float32)
    with device.connect(arm_board, timeout=120) as board:
        res = board.bench(arm, inputs=x, reference=host, number=1, repeat=1)
    assert res.validated and res.max_abs_error == 0, res.max_abs_error
