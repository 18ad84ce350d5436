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
from tvmq.errors import DeviceError


def up(emulated_arm: bool = False, host: str | None = None, port: int | None = None,
       host_server: bool = True, server_timeout: float = 180.0, servers: int = 1
       ) -> dict[str, Any]:
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
    servers : int
        How many servers to run under key ``host`` (a fleet of identical boards on
        loopback: ``tvmq tune --device rpc://.../host`` measures on all of them at once).
        Servers already registered under ``host`` count; with more than one, each gets an
        equal share of this machine's cores (``TVM_NUM_THREADS``) so that concurrent
        measurements do not run on the same cores.

    Returns
    -------
    dict
        ``{"tracker": "HOST:PORT", "started": [...], "state": path}``.
    """
    if servers < 1:
        raise DeviceError(f"--servers must be at least 1, got {servers}",
                          "use --servers 1 (or --no-host-server for none)")
    default = default_tracker()
    addr = TrackerAddress(host or default.host, port or default.port)
    started = []
    try:
        if not _tracker_answers(addr):
            started.append(_proc.start_tracker(addr.host, addr.port))
        keys = _registered_keys(addr)
        spawned = []
        if host_server:
            spawned += _host_servers(addr, servers - keys.count("host"), servers)
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
    """The tracker's boards per key: ``{key: {"total", "free", "busy", "pending"}}``.

    ``busy``: registered servers in a session; ``pending``: requests waiting for a free one.
    """
    addr = _address(tracker)
    info = summary(addr)
    out: dict[str, dict[str, int]] = {}
    for server in info["server_info"]:
        key = server["key"].split(":", 1)[1]
        out.setdefault(key, {"total": 0, "free": 0, "pending": 0})["total"] += 1
    for key, q in info["queue_info"].items():
        if q["free"] or q["pending"] or key in out:
            out.setdefault(key, {"total": 0, "free": 0, "pending": 0}).update(q)
    for row in out.values():  # a server that just left may linger in the free queue
        row["free"] = min(row["free"], row["total"])
        row["busy"] = row["total"] - row["free"]
    return out


def format_queue(boards: dict[str, Any], tracker: str = "") -> str:
    """The table ``tvmq device list`` prints: per key, boards total / free / busy, and
    requests waiting for a free board."""
    rows = [f"tracker {tracker}" if tracker else "tracker",
            f"{'key':<16}{'total':>6}{'free':>6}{'busy':>6}{'waiting':>9}"]
    rows += [f"{k:<16}{v['total']:>6}{v['free']:>6}{v['busy']:>6}{v['pending']:>9}"
             for k, v in sorted(boards.items())]
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
    try:
        summary(addr, timeout=2.0)
        return True
    except DeviceError:
        return False


def _registered_keys(addr: TrackerAddress) -> list[str]:
    """The key of every registered server (a key served N times appears N times)."""
    return [s["key"].split(":", 1)[1] for s in summary(addr)["server_info"]]


def _host_servers(addr: TrackerAddress, count: int, fleet: int) -> list[dict]:
    """Spawn ``count`` servers under key ``host``, each with 1/``fleet`` of the cores."""
    from tvmq._tvm import physical_cores

    env = {"TVM_NUM_THREADS": str(max(1, physical_cores() // fleet))} if fleet > 1 else None
    ports: set[int] = set()
    while len(ports) < count:  # distinct: the OS may offer a just-probed port again
        ports.add(_proc.free_port(addr.host))
    return [_proc.spawn_server(addr, "host", addr.host, port, env=env) for port in sorted(ports)]


__all__ = ["up", "down", "queue", "format_queue", "connect", "Remote", "BenchResult", "default_tracker",
           "OutputMismatchError", "TrackerAddress", "parse_device"]
