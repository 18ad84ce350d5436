"""Measure MetaSchedule candidates on every board registered under one tracker key.

:class:`FleetRunner` is a MetaSchedule runner like ``RPCRunner`` (same session, upload,
argument and evaluator steps, TVM's own functions), with three differences:

* one worker per board (``boards``): each measurement requests a board from the tracker,
  which hands out whichever server under the key is free, so N boards measure N
  candidates at once;
* a board that drops out mid-measurement (its server died: it left the tracker) costs no
  candidate: the measurement is re-queued on another board, up to ``retries`` times; a
  candidate that fails on a board that is still there (a crash, a timeout) is not re-run.
  Either way a failed measurement returns an error, which MetaSchedule stores as a failed
  record (run time 1e10 s, never returned as a measured schedule);
* every attempt is appended to ``log_path`` (JSON lines: ``board``, ``start``, ``end``,
  and ``run_secs`` with ``measured_at`` (when the board returned them), or ``error``), so
  which board measured which record, and when, can be checked.

The pool's workers (one process each, importing TVM: ~10 s) start when the runner is made,
so they are ready by the time the first candidates are built.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tvmq._tvm import derived_object, meta_schedule
from tvmq.device import tracker as _tracker

ms = meta_schedule()
_rpc_runner = ms.runner.rpc_runner  # PopenPoolExecutor and RPCRunnerFuture come from here


@derived_object
class FleetRunner(ms.runner.PyRunner):
    """A MetaSchedule runner over every board under ``key`` at tracker ``addr``.

    Parameters
    ----------
    addr : TrackerAddress
    key : str
        The board key the servers registered under.
    boards : int
        Concurrent measurements (at most one per board; more would queue at the tracker).
    evaluator_config : EvaluatorConfig
    session_timeout : float
        Seconds a board may spend on one measurement before its server ends the session;
        the local worker gives up a minute later (a board that hangs).
    retries : int
        Re-queues of one candidate whose board dropped out.
    log_path : path, optional
        Where each attempt is appended as a JSON line.
    """

    def __init__(self, addr, key: str, boards: int, evaluator_config, session_timeout=300,
                 retries: int = 2, log_path: str | os.PathLike | None = None):
        super().__init__()
        self.addr, self.key, self.boards = addr, key, boards
        self.evaluator_config = evaluator_config
        self.session_timeout = session_timeout
        self.retries = retries
        self.log_path = str(log_path) if log_path else None
        self.pool = _rpc_runner.PopenPoolExecutor(max_workers=boards,
                                                  timeout=session_timeout + 60)
        self._warming = [self.pool.submit(_ready) for _ in range(boards)]

    def run(self, runner_inputs):
        return [_rpc_runner.RPCRunnerFuture(
            future=self.pool.submit(
                measure, (self.addr.host, self.addr.port), self.key, self.evaluator_config,
                self.session_timeout, self.retries, self.log_path, str(inp.artifact_path),
                str(inp.device_type), tuple(arg.as_json() for arg in inp.args_info)),
            timeout_sec=self.session_timeout) for inp in runner_inputs]


def measure(tracker: tuple[str, int], key: str, evaluator_config, session_timeout: float,
            retries: int, log_path: str | None, artifact_path: str, device_type: str,
            args_info) -> list[float]:
    """Measure one built candidate on a free board (runs in a pool worker); re-queue it
    when its board drops out. Returns the evaluator's run times (s); raises on failure."""
    addr = _tracker.TrackerAddress(*tracker)
    for attempt in range(retries + 1):
        start, board = time.time(), None
        try:
            session, board = _tracker.request_board(addr, key, timeout=session_timeout,
                                                    session_timeout=session_timeout)
            costs, measured_at = _evaluate(session, evaluator_config, artifact_path,
                                           device_type, args_info)
        except Exception as err:  # noqa: BLE001 - the runner future reports it as failed
            lost = board is not None and _board_left(addr, key, board)
            requeue = lost and attempt < retries
            _log(log_path, board, start, error=f"{type(err).__name__}: {err}"[:300],
                 board_lost=lost, requeued=requeue)
            if not requeue:
                raise
            continue
        _log(log_path, board, start, run_secs=[float(c) for c in costs],
             measured_at=measured_at)
        return costs
    raise AssertionError("unreachable")


def _ready() -> None:
    """Nothing: submitted once per worker so the pool starts its processes early."""


def _evaluate(session, evaluator_config, artifact_path: str, device_type: str,
              args_info) -> tuple[list[float], float]:
    """RPCRunner's steps (TVM's default functions): upload, allocate, time, clean up.
    Returns the run times and when the board returned them."""
    remote_path = None
    try:
        device = session.device(device_type, 0)
        remote_path = os.path.basename(artifact_path)
        rt_mod = _rpc_runner.default_upload_module(session, artifact_path, remote_path)
        args = _rpc_runner.default_alloc_argument(session, device, args_info, 1)
        costs = _rpc_runner.default_run_evaluator(session, rt_mod, device, evaluator_config,
                                                  args)
        return costs, time.time()
    finally:
        try:
            _rpc_runner.default_cleanup(session, remote_path)
        except Exception:  # noqa: BLE001 - a dead board cannot clean up; nothing to keep
            pass


def _board_left(addr, key: str, board: str, wait: float = 3.0) -> bool:
    """Whether ``board`` has left the tracker (its server died) within ``wait`` seconds:
    the tracker notices when the server's connection closes, a moment after the session's
    socket broke."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if not _tracker.is_registered(addr, key, board):
                return True
        except Exception:  # noqa: BLE001 - tracker unreachable: no board to re-queue on
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _log(path: str | None, board: str | None, start: float, **fields) -> None:
    if path is None:
        return
    line = json.dumps({"board": board, "start": start, "end": time.time(), **fields}) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:  # one short append per attempt
        f.write(line)


def read_log(path: str | os.PathLike) -> list[dict]:
    """The attempts :class:`FleetRunner` logged (unreadable lines skipped)."""
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def measured_per_board(path: str | os.PathLike) -> dict[str, int]:
    """Successful measurements per board (``HOST:PORT``) in a :class:`FleetRunner` log."""
    counts: dict[str, int] = {}
    for row in read_log(path):
        if row.get("run_secs") is not None:
            counts[row["board"]] = counts.get(row["board"], 0) + 1
    return dict(sorted(counts.items()))
