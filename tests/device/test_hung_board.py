"""``tvmq bench`` against a board that never answers ends after --session-timeout with one
line naming the board (issue 24: a SIGSTOPped server kept it waiting forever)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time


def test_bench_against_a_silent_tracker_times_out_with_one_line(tmp_path):
    silent = socket.socket()  # accepts connections, never answers: a stopped server
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"rpc://127.0.0.1:{silent.getsockname()[1]}/host"
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "tvmq.cli", "bench", str(tmp_path / "art"),
                               "--device", url, "--session-timeout", "3"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        silent.close()
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err) == 1 and url in err[0] and "within 3 s" in err[0], err
    assert time.monotonic() - t0 < 60
    assert list(tmp_path.iterdir()) == []
