"""Device harness: a local TVM RPC tracker and servers, and benchmarks checked on the device.

>>> import tvmq.device as device
>>> device.up()                                   # tracker + host server on 127.0.0.1
>>> with device.connect("rpc://127.0.0.1:9190/host") as board:
...     result = board.bench("out/digits")        # checks outputs first, then times
>>> print(result.summary()); result.write_json("bench.json")
>>> device.down()                                 # stops exactly what up() started

``up(emulated_arm=True)`` also serves the emulated aarch64 board (key ``arm64-emu``) built by
``scripts/emulated-board.sh``. Its latency is qemu emulation, not a Cortex core's.
"""
from __future__ import annotations

from typing import Any

from tvmq.device import processes as _proc
from tvmq.device.remote import OutputMismatchError, Remote, connect
from tvmq.device.result import BenchResult
from tvmq.device.tracker import TrackerAddress, default_tracker, parse_device, summary


def up(emulated_arm: bool = False, host: str | None = None, port: int | None = None,
       host_server: bool = True, server_timeout: float = 180.0) -> dict[str, Any]:
    """Start (or reuse) a tracker on ``host:port`` and RPC servers registered with it.

    Parameters
    ----------
    emulated_arm : bool
        Also serve the emulated aarch64 board under key ``arm64-emu`` (needs root and the
        board built by ``scripts/emulated-board.sh build``).
    host : str, optional
        Address to bind; default ``TVM_TRACKER_HOST`` or 127.0.0.1. Anything but loopback
        exposes remote code execution to that network: only bind it on purpose.
    port : int, optional
        Tracker port; default ``TVM_TRACKER_PORT`` or 9190.
    host_server : bool
        Serve this machine's CPU under key ``host``.

    Returns
    -------
    dict
        ``{"tracker": "HOST:PORT", "started": [...], "state": path}``.
    """
    default = default_tracker()
    addr = TrackerAddress(host or default.host, port or default.port)
    started = []
    try:
        if not _tracker_answers(addr):
            started.append(_proc.start_tracker(addr.host, addr.port))
        keys = _registered_keys(addr)
        spawned = []
        if host_server and "host" not in keys:
            spawned.append(_proc.spawn_server(addr, "host", addr.host))
        if emulated_arm and _proc.EMULATED_KEY not in keys:
            port_ = _proc.free_port(addr.host)
            argv = _proc.emulated_server_argv(addr, addr.host, port_)
            spawned.append(_proc.spawn_server(addr, _proc.EMULATED_KEY, addr.host, port_, argv))
        started += spawned
        _proc.wait_registered(addr, spawned, server_timeout)
    except BaseException:
        for entry in reversed(started):
            _proc.stop_entry(entry)
        raise
    finally:
        _proc.record([{**e, "tracker": str(addr)} for e in started])
    return {"tracker": str(addr), "started": [e["name"] for e in started],
            "state": str(_proc.state_path())}


def down(tracker: str | TrackerAddress | None = None) -> list[str]:
    """Stop the processes :func:`up` recorded (and nothing else); returns their names.

    ``tracker`` (``HOST:PORT``): only what ``up`` started for that tracker; default: all.
    """
    scope = None if tracker is None else str(_address(tracker))
    return [f"{e['name']} (pid {e['pid']})" for e in _proc.stop_recorded(scope)]


def queue(tracker: str | TrackerAddress | None = None) -> dict[str, Any]:
    """The tracker's boards: ``{key: {"total", "free", "pending"}}``."""
    addr = _address(tracker)
    info = summary(addr)
    out: dict[str, dict[str, int]] = {}
    for server in info["server_info"]:
        key = server["key"].split(":", 1)[1]
        out.setdefault(key, {"total": 0, "free": 0, "pending": 0})["total"] += 1
    for key, q in info["queue_info"].items():
        if q["free"] or q["pending"] or key in out:
            out.setdefault(key, {"total": 0, "free": 0, "pending": 0}).update(q)
    return out


def format_queue(boards: dict[str, Any], tracker: str = "") -> str:
    """The table ``tvmq device list`` prints."""
    rows = [f"tracker {tracker}" if tracker else "tracker",
            f"{'key':<16}{'total':>6}{'free':>6}{'pending':>9}"]
    rows += [f"{k:<16}{v['total']:>6}{v['free']:>6}{v['pending']:>9}" for k, v in
             sorted(boards.items())]
    if not boards:
        rows.append("(no boards registered: `tvmq device up [--emulated-arm]`)")
    return "\n".join(rows)


def _address(tracker) -> TrackerAddress:
    if tracker is None:
        return default_tracker()
    if isinstance(tracker, TrackerAddress):
        return tracker
    host, _, port = str(tracker).removeprefix("rpc://").split("/")[0].rpartition(":")
    return TrackerAddress(host or default_tracker().host, int(port))


def _tracker_answers(addr: TrackerAddress) -> bool:
    from tvmq.errors import DeviceError

    try:
        summary(addr, timeout=2.0)
        return True
    except DeviceError:
        return False


def _registered_keys(addr: TrackerAddress) -> set[str]:
    return {s["key"].split(":", 1)[1] for s in summary(addr)["server_info"]}


__all__ = ["up", "down", "queue", "format_queue", "connect", "Remote", "BenchResult", "default_tracker",
           "OutputMismatchError", "TrackerAddress", "parse_device"]
