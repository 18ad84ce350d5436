"""Start and stop the TVM RPC tracker and servers as background processes.

Every process is started in its own session (process group) and recorded in a state file
(``~/.cache/tvmq/device/state.json``, or ``$TVMQ_DEVICE_STATE``), so :func:`down` stops exactly
the processes :func:`up` started, children included, and nothing else. Everything binds to
127.0.0.1 unless a host is given: a TVM RPC server executes whatever a client uploads.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tvmq.device.tracker import TrackerAddress, wait_for_tracker
from tvmq.errors import DeviceError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TRACKER_PORT = 9190
DEFAULT_SERVER_PORT = 9090
EMULATED_KEY = "arm64-emu"


def state_path() -> Path:
    """Where the PIDs of started processes are recorded."""
    env = os.environ.get("TVMQ_DEVICE_STATE")
    return Path(env) if env else Path.home() / ".cache" / "tvmq" / "device" / "state.json"


def board_root() -> Path:
    """The emulated aarch64 board's chroot (built by ``scripts/emulated-board.sh``)."""
    env = os.environ.get("TVMQ_BOARD_ROOT")
    return Path(env) if env else Path.home() / ".cache" / "tvmq" / "boards" / "arm64"


def _read_state() -> dict[str, Any]:
    try:
        return json.loads(state_path().read_text())
    except (OSError, ValueError):
        return {"processes": []}


def _write_state(state: dict[str, Any]) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return _proc_state(pid) not in ("Z", "X")  # nor one nobody reaps (no init in a container)


def _proc_state(pid: int) -> str | None:
    """The state letter of ``/proc/PID/stat`` (``Z``: zombie), None where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
    return {"name": name, "pid": proc.pid, "pgid": proc.pid, "argv": argv, "log": str(log),
            "started": time.time()}


def _log_tail(path: str, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(Path(path).read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


def _check_started(entry: dict, timeout: float, ready) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(entry["pid"]):
            raise DeviceError(f"{entry['name']} exited at start: {_log_tail(entry['log'])}",
                              f"see {entry['log']}")
        if ready():
            return
        time.sleep(0.2)
    stop_entry(entry)
    raise DeviceError(f"{entry['name']} did not come up in {timeout:.0f} s: "
                      f"{_log_tail(entry['log'])}", f"see {entry['log']}")


def start_tracker(host: str = DEFAULT_HOST, port: int = DEFAULT_TRACKER_PORT,
                  timeout: float = 30.0) -> dict:
    """Start ``python -m tvm.exec.rpc_tracker`` bound to ``host:port`` exactly."""
    if _port_in_use(host, port):
        raise DeviceError(f"port {host}:{port} is already in use",
                          "a tracker may already run (`tvmq device list`); or pick --port")
    argv = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
            "--port-end", str(port + 1)]
    entry = _spawn("tracker", argv, state_path().parent / f"tracker-{port}.log")
    entry.update(host=host, port=port)
    addr = TrackerAddress(host, port)
    _check_started(entry, timeout, lambda: wait_for_tracker(addr, timeout=0.5, quiet=True))
    return entry


def server_argv(tracker: TrackerAddress, key: str, host: str, port: int,
                python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "tvm.exec.rpc_server", "--host", host,
            "--port", str(port), "--port-end", str(port + 1),
            "--tracker", f"{tracker.host}:{tracker.port}", "--key", key]


def spawn_server(tracker: TrackerAddress, key: str = "host", host: str = DEFAULT_HOST,
                 port: int | None = None, argv: list[str] | None = None,
                 env: dict[str, str] | None = None) -> dict:
    """Start an RPC server registered under ``key`` without waiting for it (``env``: extra
    environment variables, e.g. ``TVM_NUM_THREADS``)."""
    port = port or free_port(host)
    if _port_in_use(host, port):
        raise DeviceError(f"port {host}:{port} is already in use", "pick another port")
    argv = argv or server_argv(tracker, key, host, port)
    entry = _spawn(f"server:{key}", argv, state_path().parent / f"server-{key}-{port}.log",
                   env)
    entry.update(host=host, port=port, key=key, tracker=[tracker.host, tracker.port])
    return entry


def wait_registered(tracker: TrackerAddress, entries: list[dict], timeout: float = 90.0) -> None:
    """Wait until the tracker lists every spawned server (by key and port)."""
    for entry in entries:
        _check_started(entry, timeout, lambda e=entry: _registered(tracker, e))


def start_server(tracker: TrackerAddress, key: str = "host", host: str = DEFAULT_HOST,
                 port: int | None = None, timeout: float = 90.0,
                 argv: list[str] | None = None) -> dict:
    """Start an RPC server registered under ``key``; returns once the tracker lists it."""
    entry = spawn_server(tracker, key, host, port, argv)
    wait_registered(tracker, [entry], timeout)
    return entry


def _registered(tracker: TrackerAddress, entry: dict) -> bool:
    from tvmq.device.tracker import summary

    try:
        info = summary(tracker)
    except DeviceError:
        return False
    return any(s["key"] == f"server:{entry['key']}" and s["addr"][1] == entry["port"]
               for s in info["server_info"])


def emulated_server_argv(tracker: TrackerAddress, host: str, port: int) -> list[str]:
    """The chroot command that serves RPC on the emulated aarch64 board."""
    root = board_root()
    if not (root / ".tvmq-ready").exists():
        raise DeviceError(f"the emulated aarch64 board is not built ({root})",
                          "build it once: sudo scripts/emulated-board.sh build (~5 min, 0.8 GB)")
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        raise DeviceError("qemu-aarch64 is not registered with binfmt_misc",
                          "run scripts/emulated-board.sh start (mounts binfmt_misc, registers qemu)")
    if os.geteuid() != 0:
        raise DeviceError("starting the emulated board needs root (chroot)",
                          "run as root: sudo scripts/emulated-board.sh start")
    inner = server_argv(tracker, EMULATED_KEY, host, port, python="/opt/tvm-venv/bin/python")
    return ["chroot", str(root), "/usr/bin/env", "HOME=/root", "TMPDIR=/tmp"] + inner


def _group_alive(pgid: int) -> bool:
    """Some process of group ``pgid`` still runs (its leader may be gone: an RPC server's
    worker keeps listening after the leader died)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self/stat").exists():
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):  # members that are not zombies
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _entry_alive(entry: dict) -> bool:
    return _alive(entry["pid"]) or _group_alive(entry.get("pgid", entry["pid"]))


def stop_entry(entry: dict, grace: float = 3.0) -> bool:
    """Stop one recorded process group, leader or not; True when something was running."""
    pgid = entry.get("pgid", entry["pid"])
    if not _entry_alive(entry):
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _entry_alive(entry):
            time.sleep(0.05)
        if not _entry_alive(entry):
            break
    return True


def record(entries: list[dict]) -> None:
    state = _read_state()
    state["processes"] = [p for p in state["processes"] if _entry_alive(p)] + entries
    _write_state(state)


def recorded() -> list[dict]:
    """Recorded process groups that still run (``orphaned``: the leader died, others run)."""
    return [{**p, "orphaned": not _alive(p["pid"])} for p in _read_state()["processes"]
            if _entry_alive(p)]


def stop_recorded(tracker: str | None = None) -> list[dict]:
    """Stop the recorded processes (servers before trackers) and forget them: all of them,
    or with ``tracker`` (``HOST:PORT``) only those ``up`` started for that tracker (and
    entries recorded without one), so one terminal's ``down`` leaves another's alone."""
    entries = _read_state()["processes"]
    port = None if tracker is None else tracker.rpartition(":")[2]
    mine = [e for e in entries if port is None or e.get("tracker") is None
            or str(e["tracker"]).rpartition(":")[2] == port]  # the bind address may differ
    stopped = [e for e in sorted(mine, key=lambda e: e["name"] == "tracker") if stop_entry(e)]
    _write_state({"processes": [e for e in entries if e not in mine and _entry_alive(e)]})
    return stopped
