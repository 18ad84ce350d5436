"""``tvmq device down`` stops a recorded process group whose leader died (issue 24: an RPC
server's worker kept listening after its leader was killed, and down skipped it)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from tvmq.device import processes

_LEADER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
"""  # the leader exits at once; its child (same process group) keeps running


def test_down_stops_the_group_of_a_dead_leader(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMQ_DEVICE_STATE", str(tmp_path / "state.json"))
    leader = subprocess.Popen([sys.executable, "-c", _LEADER], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    child = int(leader.stdout.readline())
    leader.wait(timeout=30)
    try:
        processes.record([{"name": "server:host", "pid": leader.pid, "pgid": leader.pid,
                           "argv": [], "log": ""}])
        (entry,) = processes.recorded()
        assert entry["orphaned"], entry
        stopped = processes.stop_recorded()
        assert [e["name"] for e in stopped] == ["server:host"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and processes._alive(child):
            time.sleep(0.05)
        assert not processes._alive(child), "the orphaned worker still runs"
        assert processes.recorded() == []
    finally:
        if processes._alive(child):
            os.kill(child, 9)
