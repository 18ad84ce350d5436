"""``tvmq device down`` stops only what ``up`` started for its tracker port (issue 24: it
stopped the servers another terminal started for another tracker); ``--all`` stops all."""
from __future__ import annotations

import subprocess
import sys

from tvmq.device import processes


def _sleeper(name: str, tracker: str) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            start_new_session=True)
    return {"name": name, "pid": proc.pid, "pgid": proc.pid, "argv": [], "log": "",
            "tracker": tracker}


def test_down_is_scoped_to_the_tracker_port(tmp_path, monkeypatch):
    from tvmq import device

    monkeypatch.setenv("TVMQ_DEVICE_STATE", str(tmp_path / "state.json"))
    mine, other = _sleeper("server:host", "127.0.0.1:9301"), _sleeper("tracker", "0.0.0.0:9302")
    processes.record([mine, other])
    try:
        assert device.down("127.0.0.1:9301") == [f"server:host (pid {mine['pid']})"]
        assert not processes._alive(mine["pid"]) and processes._alive(other["pid"])
        assert [e["name"] for e in processes.recorded()] == ["tracker"]
        assert device.down() == [f"tracker (pid {other['pid']})"]  # no scope: everything
        assert processes.recorded() == []
    finally:
        for entry in (mine, other):
            processes.stop_entry(entry)
