"""Talk to a TVM RPC tracker with timeouts: probe, summary, request a board.

TVM's own ``TrackerSession`` retries a refused connection for 60 s and waits forever for a free
board; these helpers speak the same JSON protocol over a socket with a deadline, retry transient
failures with bounded exponential backoff, and turn every failure into a :class:`DeviceError`
that names the fix.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct
import time
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from tvmq.errors import DeviceError

T = TypeVar("T")
_TRANSIENT = (errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
              errno.EHOSTUNREACH, errno.ENETUNREACH)


@dataclasses.dataclass(frozen=True)
class TrackerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def default_tracker() -> TrackerAddress:
    """``TVM_TRACKER_HOST`` / ``TVM_TRACKER_PORT``, else 127.0.0.1:9190."""
    return TrackerAddress(os.environ.get("TVM_TRACKER_HOST", "127.0.0.1"),
                          int(os.environ.get("TVM_TRACKER_PORT", "9190")))


def parse_device(url: str) -> tuple[TrackerAddress, str] | None:
    """``rpc://HOST:PORT/KEY`` -> (tracker, key); ``local`` -> None. Missing parts come from
    ``TVM_TRACKER_HOST`` / ``TVM_TRACKER_PORT`` / ``TVM_TRACKER_KEY``."""
    if url == "local":
        return None
    parts = urlsplit(url)
    if parts.scheme != "rpc":
        raise DeviceError(f"unknown device {url!r}",
                          "use rpc://HOST:PORT/KEY (e.g. rpc://127.0.0.1:9190/arm64-emu) or local")
    default = default_tracker()
    key = parts.path.strip("/") or os.environ.get("TVM_TRACKER_KEY", "")
    if not key:
        raise DeviceError(f"device {url!r} names no board key",
                          "append the key: rpc://HOST:PORT/KEY, or set TVM_TRACKER_KEY")
    try:
        port = parts.port or default.port
    except ValueError as err:
        raise DeviceError(f"bad port in {url!r}", "use rpc://HOST:PORT/KEY") from err
    return TrackerAddress(parts.hostname or default.host, port), key


def with_backoff(fn: Callable[[], T], what: str, attempts: int = 4, first: float = 0.25,
                 retry_timeouts: bool = True) -> T:
    """Call ``fn``, retrying transient socket errors with delays first, 2*first, ... ."""
    delay = first
    for attempt in range(attempts):
        try:
            return fn()
        except OSError as err:
            transient = (retry_timeouts and isinstance(err, socket.timeout)) or \
                err.errno in _TRANSIENT
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _rpc_base():
    from tvmq._tvm import rpc

    return rpc().base


def _open(addr: TrackerAddress, timeout: float) -> socket.socket:
    base = _rpc_base()
    sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except BaseException:
        sock.close()
        raise
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise DeviceError(f"{addr} is not a TVM RPC tracker",
                          "point TVM_TRACKER_HOST/PORT (or rpc://HOST:PORT/KEY) at a tracker")
    return sock


def _unreachable(addr: TrackerAddress, err: OSError) -> DeviceError:
    why = "connection refused" if err.errno == errno.ECONNREFUSED else (str(err) or "timed out")
    return DeviceError(f"cannot reach the RPC tracker at {addr}: {why}",
                       "start one with `tvmq device up`, or point rpc://HOST:PORT/KEY "
                       "(TVM_TRACKER_HOST/PORT) at a running tracker")


def connect(addr: TrackerAddress, timeout: float = 5.0, attempts: int = 4) -> socket.socket:
    """An open, handshaken socket to the tracker (retried with backoff)."""
    try:
        return with_backoff(lambda: _open(addr, timeout), f"tracker {addr}", attempts)
    except OSError as err:
        raise _unreachable(addr, err) from err


def summary(addr: TrackerAddress, timeout: float = 5.0, attempts: int = 1) -> dict[str, Any]:
    """The tracker's ``{"queue_info": {key: {free, pending}}, "server_info": [...]}``."""
    base = _rpc_base()
    sock = connect(addr, timeout, attempts)
    try:
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        value = base.recvjson(sock)
    except OSError as err:
        raise _unreachable(addr, err) from err
    finally:
        sock.close()
    return value[1]


def wait_for_tracker(addr: TrackerAddress, timeout: float, quiet: bool = False) -> bool:
    """True once the tracker answers; False (or DeviceError unless quiet) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            summary(addr, timeout=min(2.0, timeout))
            return True
        except DeviceError:
            if time.monotonic() >= deadline:
                if quiet:
                    return False
                raise
        time.sleep(0.1)


def wait_for_key(addr: TrackerAddress, key: str, timeout: float) -> dict[str, int]:
    """Wait until a server is registered under ``key``; returns its queue info."""
    deadline = time.monotonic() + timeout
    while True:
        info = summary(addr, attempts=3)
        servers = [s for s in info["server_info"] if s["key"] == f"server:{key}"]
        if servers:
            return {"total": len(servers), **info["queue_info"].get(key, {"free": 0, "pending": 0})}
        if time.monotonic() >= deadline:
            keys = sorted({s["key"].split(":", 1)[1] for s in info["server_info"]})
            raise DeviceError(
                f"no RPC server is registered under key {key!r} at tracker {addr} "
                f"(registered keys: {', '.join(keys) or 'none'})",
                f"start one: `tvmq device up` (key host) or `tvmq device up --emulated-arm` "
                f"(key arm64-emu), or python -m tvm.exec.rpc_server --tracker {addr} --key {key}")
        time.sleep(0.2)


def request(addr: TrackerAddress, key: str, timeout: float = 60.0,
            session_timeout: float = 0.0, attempts: int = 3):
    """Request a board under ``key``; returns a connected ``tvm.rpc.RPCSession``.

    The tracker hands out whichever server under ``key`` is free (first freed, first
    given); with every board busy the request waits in the tracker's queue.
    """
    return request_board(addr, key, timeout, session_timeout, attempts)[0]


def request_board(addr: TrackerAddress, key: str, timeout: float = 60.0,
                  session_timeout: float = 0.0, attempts: int = 3):
    """:func:`request`, also returning which board answered: ``(session, "HOST:PORT")``."""
    from tvmq._tvm import rpc

    wait_for_key(addr, key, timeout=min(timeout, 10.0))
    base = _rpc_base()

    def _once():
        sock = connect(addr, attempts=2)
        try:
            sock.settimeout(timeout)
            base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
            value = base.recvjson(sock)
        finally:
            sock.close()
        url, port, matchkey = value[1]
        try:
            return rpc().connect(url, port, matchkey, session_timeout), f"{url}:{port}"
        except Exception as err:  # the server left between the tracker's answer and ours
            raise ConnectionResetError(errno.ECONNRESET, str(err)) from err

    try:
        return with_backoff(_once, f"board {key}", attempts, first=0.5, retry_timeouts=False)
    except socket.timeout as err:
        info = summary(addr).get("queue_info", {}).get(key, {})
        raise DeviceError(
            f"no free board under key {key!r} within {timeout:.0f} s "
            f"(free {info.get('free', 0)}, pending {info.get('pending', 0)})",
            "wait for the other sessions to finish, start another server for the key, "
            "or raise the request timeout") from err
    except OSError as err:
        raise DeviceError(f"could not open a session with a {key!r} board via {addr}: {err}",
                          "check the board's RPC server log; restart it with `tvmq device up`"
                          ) from err


def boards(addr: TrackerAddress, key: str) -> dict[str, int]:
    """How many servers are registered under ``key``: ``{"total", "free", "busy",
    "waiting"}`` (``busy``: in a session; ``waiting``: requests queued for a free board)."""
    info = summary(addr, attempts=3)
    total = sum(s.get("key") == f"server:{key}" for s in info["server_info"])
    queue = info["queue_info"].get(key, {})
    free = min(int(queue.get("free", 0)), total)
    return {"total": total, "free": free, "busy": total - free,
            "waiting": int(queue.get("pending", 0))}


def is_registered(addr: TrackerAddress, key: str, board: str) -> bool:
    """Whether the server ``board`` (``HOST:PORT``, as :func:`request_board` names it) is
    still registered under ``key``: a server that died has dropped its tracker connection.
    (A server reports no host of its own unless started with ``--custom-addr``.)"""
    host, _, port = board.rpartition(":")
    return any(s.get("key") == f"server:{key}" and str(s["addr"][1]) == port
               and s["addr"][0] in (None, host) for s in summary(addr)["server_info"])
