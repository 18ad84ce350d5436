"""Running cross-built aarch64 kernels on the emulated board (qemu-user chroot).

Tests export each case as ``<name>.so`` + ``<name>.npz`` (its arguments, the output last)
into :func:`board_workdir` and call :func:`run_on_board`; outputs come back as
``<name>.out.npy``. Skips, with the reason, when the board is not built here.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("TVMQ_BOARD_ROOT", Path.home() / ".cache/tvmq/boards/arm64"))
CROSS = "aarch64-linux-gnu-gcc"

_RUNNER = '''
import sys, numpy as np, tvm
d = sys.argv[1]
for name in sys.argv[2:]:
    data = np.load(f"{d}/{name}.npz")
    args = [tvm.runtime.tensor(data[f"arr_{i}"]) for i in range(len(data.files))]
    tvm.runtime.load_module(f"{d}/{name}.so")["main"](*args)
    np.save(f"{d}/{name}.out.npy", args[-1].numpy())
'''


@contextlib.contextmanager
def board_workdir(prefix: str):
    """A fresh directory inside the board's root (removed afterwards), or a skip."""
    if not (ROOT / ".tvmq-ready").exists() or os.geteuid() != 0 or shutil.which(CROSS) is None:
        pytest.skip("emulated aarch64 board not built (scripts/emulated-board.sh build)")
    work = ROOT / "tmp" / f"{prefix}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_on_board(work: Path, names) -> None:
    """Run every exported kernel ``names`` in ``work`` on the board (one process)."""
    (work / "run.py").write_text(_RUNNER)
    inside = "/" + str(work.relative_to(ROOT))
    proc = subprocess.run(["chroot", str(ROOT), "/opt/tvm-venv/bin/python", f"{inside}/run.py",
                           inside, *names], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
