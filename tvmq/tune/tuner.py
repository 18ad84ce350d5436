"""``tvmq.tune``: extract the model's tasks, search schedules, keep them in a database.

Resumable: records accumulate in ``db``; a re-run counts the trials already there and only
runs the rest (``trials`` is the total for the database), and the XGBoost cost model is
reloaded from ``db/cost_model.npz`` (no pickle: :mod:`tvmq.tune.cost_model`) so it does not
start random again (MetaSchedule's XGBModel scores randomly until it has
``num_warmup_samples`` measurements).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from tvmq._tvm import TVM_VERSION, cc, meta_schedule, tvm
from tvmq.artifact import atomic_write
from tvmq.boards import Board, ensure_cross_compiler, get_board
from tvmq.errors import TvmqError
from tvmq.frontend import import_model
from tvmq.layermap import layer_table, task_layers
from tvmq.pipeline import PipelineOptions, run_phases
from tvmq.schedules import database as dbmod
from tvmq.tune import cost_model as _cm

BUILDER_TIMEOUT_S = 300  # workers import tvm.s_tir.tensor_intrin (~33 s, more under load)
BOARD_LOG = "boards.jsonl"  # under <db>/logs/: every measurement attempt on a board


@dataclasses.dataclass
class TuneReport:
    """What a tuning run did: per-task best latencies, trials, the tuning curve.

    Each task: ``name`` (its PrimFunc), ``layers`` (the model's layers it runs, by the
    user's names: :mod:`tvmq.layermap`), ``weight``, ``records``, ``best_us``.
    """

    board: str
    db: str
    tasks: list[dict[str, Any]]
    trials_before: int
    trials_run: int
    seconds: float
    curve: list[tuple[int, float]]
    #: successful measurements per board (``HOST:PORT``) when measured over RPC
    boards: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def estimated_ms(self) -> float | None:
        best = [t["weight"] * t["best_us"] for t in self.tasks if t["best_us"] is not None]
        return sum(best) / 1e3 if best else None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "estimated_ms": self.estimated_ms}


def _legalized(model, board: Board, example_inputs, input_shapes):
    """The model (an artifact's source), its legalized module and its per-layer map."""
    if isinstance(model, (str, Path)) and (Path(model) / "meta.json").is_file():
        model = _artifact_source(Path(model))
    imported = import_model(model, example_inputs, input_shapes)
    opts = PipelineOptions()
    lowered = run_phases(imported.bind_params(), board, opts, until="quantize")
    legal = run_phases(lowered, board, opts, start="legalize", until="legalize")
    return model, legal, layer_table(imported, lowered, legal)


def _tasks(model, board: Board, example_inputs, input_shapes, max_tasks: int | None = None,
           kernels: bool = True):
    ms = meta_schedule()
    model, mod, layers = _legalized(model, board, example_inputs, input_shapes)
    tasks = ms.relax_integration.extract_tasks(mod, board.tvm_target())
    tasks = [t for t in tasks if not t.mod.attrs or not t.mod.attrs.get("tirx.is_scheduled")]
    if not kernels:
        tasks = [t for t in tasks if not _is_kernel_task(t)]
    measured = measured_ms(model, board, example_inputs, input_shapes)
    kept = _worth_tuning(tasks, measured)[:max_tasks]
    # each task's default-schedule time per call (us), for the tuning curve's untuned tasks
    baseline = [measured[t.task_name] * 1e3 / max(float(t.weight), 1.0)
                if measured and measured.get(t.task_name) else None for t in kept]
    return kept, baseline, task_layers([t.task_name for t in kept], mod, layers)


def _is_kernel_task(task) -> bool:
    """Whether the task holds one of tvmq's tensorized kernels (conv/dense/depthwise)."""
    from tvmq.schedules.schedule_integer_kernels import _has_kernel

    return _has_kernel(task.dispatched[0]["main"])


def measured_ms(model, board: Board, example_inputs=None, input_shapes=None,
                database: str | Path | None = None) -> dict[str, float] | None:
    """Time per compiled PrimFunc (ms, summed over its calls) of ``model`` on the host.

    Compiled with the default schedules (or ``database``) and timed layer by layer
    (:mod:`tvmq.device.layers`); None for a cross board (no local measurement).
    """
    if board.is_cross:
        return None
    from tvmq.compiler import compile as compile_model
    from tvmq.device import connect

    opts = PipelineOptions(use_shipped_database=False, database=str(database) if database
                           else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        art = compile_model(model, example_inputs, board, input_shapes=input_shapes,
                            options=opts)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tvmq-measure-") as tmp, connect("local") as dev:
        art.save(Path(tmp) / "art")
        rows = dev.bench(art, per_layer=True, check=False, number=5, repeat=5).layers or []
    out: dict[str, float] = {}
    for row in rows:
        out[row["name"]] = out.get(row["name"], 0.0) + (row["median_ms"] or 0.0)
    return out


def _worth_tuning(tasks, measured: dict[str, float] | None = None, min_share: float = 0.005):
    """Tasks worth tuning, most expensive first, without the trivial ones (reshapes, tiny
    reductions) that would otherwise take the scheduler's first round of trials.

    Expense is the measured time of the default schedule when the model can run here
    (``measured``: a memory-bound pool or depthwise conv costs far more than its FLOPs
    say), else the weighted FLOPs.
    """
    from tvm.s_tir.analysis import estimate_tir_flops

    if measured:
        cost = [measured.get(t.task_name, 0.0) for t in tasks]
    else:
        cost = [float(estimate_tir_flops(t.dispatched[0])) * float(t.weight) for t in tasks]
    total = sum(cost)
    kept = sorted(((f, i) for i, f in enumerate(cost) if f > 0 and f >= min_share * total),
                  reverse=True)
    if not kept:
        raise TvmqError("the model has no tunable tasks", "check the model imports (tvmq info)")
    return [tasks[i] for _, i in kept]


def _artifact_source(path: Path):
    meta = json.loads((path / "meta.json").read_text())
    src = meta.get("model_path")
    if not src or not Path(src).is_file():
        raise TvmqError(f"artifact {path} does not record a model file to tune",
                        "tune the model file instead: tvmq tune model.onnx --board ...")
    return src


def _existing(db, tasks) -> list[tuple[int, float | None]]:
    """(records, best latency in us) per task already in the database."""
    out = []
    for task in tasks:
        mod = task.dispatched[0]
        if not db.has_workload(mod):
            out.append((0, None))
            continue
        recs = db.get_top_k(db.commit_workload(mod), 1 << 20)
        best = min((sum(float(s) for s in r.run_secs) / len(r.run_secs) * 1e6
                    for r in recs if r.run_secs), default=None)
        out.append((len(recs), best))
    return out


def _export_cross(rt_mod, compiler: str) -> str:
    import os
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="tvmq-ms-"), "lib.so")
    rt_mod.export_library(path, fcompile=cc.cross_compiler(compiler))
    return path


def _builder_init() -> None:
    # Register tvmq's tensor intrinsics in the worker (MetaSchedule traces refer to them).
    from tvmq.schedules.tune import builder_initializer

    builder_initializer()


def _build_worker_init() -> None:
    """tvmq's and TVM's tensor intrinsics (:func:`tvmq.schedules.tune.build_worker_initializer`)."""
    from tvmq.schedules.tune import build_worker_initializer

    build_worker_initializer()


def _builder(board: Board, workers: int = 1):
    ms = meta_schedule()
    export = None
    if board.cross_compiler:
        ensure_cross_compiler(board)
        export = functools.partial(_export_cross, compiler=board.cross_compiler)
    from tvmq.schedules.tune import build

    builder = ms.builder.LocalBuilder(max_workers=workers, timeout_sec=BUILDER_TIMEOUT_S,
                                      f_build=build, f_export=export,
                                      initializer=_builder_init)
    # the constructor's one-off check pool needs no TVM intrinsics; the build pools do
    builder.initializer = _build_worker_init
    return builder


def parse_device(url: str | None) -> tuple[str, int, str] | None:
    """``rpc://HOST:PORT/KEY`` -> (host, port, key); ``None``/``"local"`` -> None.

    Missing parts default to ``TVM_TRACKER_HOST`` / ``TVM_TRACKER_PORT`` / ``TVM_TRACKER_KEY``
    (the device harness's parser).
    """
    from tvmq.device.tracker import parse_device as _parse

    if url in (None, ""):
        return None
    parsed = _parse(url)
    if parsed is None:
        return None
    addr, key = parsed
    return addr.host, addr.port, key


def _runner(board: Board, device: str | None, number: int, repeat: int,
            boards: int | None = None, log_path: Path | None = None):
    """LocalRunner, or a :class:`~tvmq.device.fleet.FleetRunner` measuring on ``boards``
    boards under the device's key at once (default: those free now, at least 1)."""
    ms = meta_schedule()
    evaluator = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=20,
                                          enable_cpu_cache_flush=False)
    remote = parse_device(device)
    if remote is None:
        if board.is_cross:
            raise TvmqError(f"board {board.name!r} cannot run on this machine",
                            f"pass --device rpc://HOST:PORT/{board.rpc_key} (see tvmq device up)")
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=120)
    from tvmq.device.fleet import FleetRunner
    from tvmq.device.tracker import TrackerAddress

    host, port, key = remote
    free = _check_tracker(host, port, key)
    return FleetRunner(TrackerAddress(host, port), key, boards or max(free, 1), evaluator,
                       session_timeout=300, log_path=log_path)


def _check_tracker(host: str, port: int, key: str) -> int:
    """Fail fast (clear error) when the tracker is down or has no server under ``key``;
    returns how many servers under ``key`` are free."""
    from tvmq.device.tracker import TrackerAddress, boards

    queue = boards(TrackerAddress(host, port), key)
    if not queue["total"]:
        raise TvmqError(f"no server registered under key {key!r} at {host}:{port}",
                        "start one (tvmq device up [--emulated-arm]) or fix the key")
    return queue["free"]


def _check_parallelism(device: str | None, boards: int | None, builders: int | None) -> None:
    if boards is not None and boards < 1:
        raise TvmqError(f"--boards must be at least 1, got {boards}",
                        "use --boards 1, or leave it out to use every free board")
    if boards is not None and parse_device(device) is None:
        raise TvmqError("--boards needs a board to measure on",
                        "add --device rpc://HOST:PORT/KEY, or drop --boards")
    if builders is not None and builders < 1:
        raise TvmqError(f"builders must be at least 1, got {builders}",
                        "pass builders=1, or None for every local core")


def _measured_per_board(log: Path) -> dict[str, int]:
    if not log.is_file():
        return {}
    from tvmq.device.fleet import measured_per_board

    return measured_per_board(log)


def _space(board: Board, kernel: bool = False):
    """tvmq's space (``tvmq.schedules.tune``): for a kernel task its own schedule with the
    register tile sampled; for the rest, that union TVM's rules with tvmq's tensor
    intrinsics."""
    from tvmq.schedules.tune import kernel_space, tune_space

    space = kernel_space(board.tvm_target()) if kernel else tune_space(board.tvm_target())
    return space or "post-order-apply"


def _contexts(tasks, board: Board, log_dir: str, seed: int):
    """One TuneContext per task, with the space its kind calls for (see :func:`_space`)."""
    ms = meta_schedule()
    contexts, weights = [], []
    for task in tasks:
        ctx, w = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [task], log_dir, space=_space(board, _is_kernel_task(task)), seed=seed,
            num_threads=board.cores if not board.is_cross else 1)
        contexts += list(ctx)
        weights += list(w)
    return contexts, weights


def _cost_model(db_dir: Path):
    ms = meta_schedule()
    model = ms.cost_model.XGBModel(num_warmup_samples=min(100, 32), adaptive_training=True)
    _cm.load(model, db_dir)  # tvmq's pickle-free format; anything unreadable: warm-up
    return model


def tune(model, board: str | Board = "host", *, example_inputs=None, input_shapes=None,
         trials: int = 64, time_budget_min: float | None = None, db: str | Path = "tune-db",
         device: str | None = None, trials_per_iter: int = 16, number: int = 3,
         repeat: int = 3, progress: bool = True, seed: int = 0,
         max_tasks: int | None = None, kernels: bool = True, boards: int | None = None,
         builders: int | None = None) -> TuneReport:
    """Tune ``model``'s tasks for ``board``; records accumulate in the database ``db``.

    Parameters
    ----------
    model : torch.nn.Module, ONNX path, .pt2 path or artifact directory
    board : str or Board
    trials : int
        Total trials the database should hold for this model (a re-run continues).
    time_budget_min : float, optional
        Stop after this many minutes (checked after each measured batch).
    db : path
        Database directory (MetaSchedule JSON files + meta.json + cost model).
    device : str, optional
        ``rpc://HOST:PORT/KEY`` to measure on a board through a tracker; default local.
    boards : int, optional
        With ``device``: measure on this many boards under the key at once (default: the
        servers free under the key when the run starts, at least 1). A board that drops out
        mid-run costs no result: its candidate is re-measured on another board.
    builders : int, optional
        Processes building candidates on this machine (default: every core when measuring
        on boards, 1 when measuring here, where builds would disturb the timings).
    max_tasks : int, optional
        Tune only the ``max_tasks`` most expensive tasks (measured time of the default build
        when the board is this machine, else weighted FLOPs).
    kernels : bool
        Also tune tvmq's tensorized conv/dense kernels (default): their register tile is
        searched (tvmq's own schedule with sampled tiles; TVM's rule-based candidates for
        them take minutes each to build on a small machine, so they are left out). False
        tunes only the rest (pools, layout transforms, elementwise tails).
    """
    ms = meta_schedule()
    board = get_board(board)
    if trials < 1:
        raise TvmqError(f"--trials must be positive, got {trials}", "use --trials 64")
    _check_parallelism(device, boards, builders)
    remote = parse_device(device)
    if remote is not None:  # before the minutes of task extraction: a tracker is there
        free = _check_tracker(*remote)
        boards = boards or max(free, 1)  # every board free now
    db_dir = Path(db)
    reason = dbmod.compatible(db_dir, board.target, TVM_VERSION)
    if (db_dir / dbmod.WORKLOAD_FILE).exists() and reason is not None:
        raise TvmqError(f"{db_dir} holds a database for another TVM version or target "
                        f"({reason})", "pass a new --db directory")
    with _working_copy(db_dir) as work:
        return _tune_into(work, db_dir, model, board, example_inputs, input_shapes, trials,
                          time_budget_min, device, trials_per_iter, number, repeat, progress,
                          seed, max_tasks, kernels, boards, builders)


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`tune`: the search stopped after the batch in flight and every
    record measured so far is in the database."""


def _tune_into(work: Path, db_dir: Path, model, board: Board, example_inputs, input_shapes,
               trials, time_budget_min, device, trials_per_iter, number, repeat, progress,
               seed, max_tasks, kernels, boards=None, builders=None) -> "TuneReport":
    """:func:`tune` on ``work``, a private copy of ``db_dir`` published into it after each
    measured batch (write-then-rename: a crash or kill cannot leave a partial line)."""
    ms = meta_schedule()
    try:
        database = dbmod.open_database(work, board.target, TVM_VERSION, create=True)
    except Exception:  # noqa: BLE001 - a record whose trace no longer replays: drop those
        _drop_unreplayable(work)
        database = dbmod.open_database(work, board.target, TVM_VERSION, create=True)
    dbmod.write_meta(work, board.target, TVM_VERSION, board.name)
    tasks, baseline_us, task_names = _tasks(model, board, example_inputs, input_shapes,
                                            max_tasks, kernels)
    existing = _existing(database, tasks)
    before = sum(n for n, _ in existing)
    remaining = max(trials - before, 0)
    t0 = time.monotonic()
    names = [t.task_name for t in tasks]
    weights = [float(t.weight) for t in tasks]
    cb = None
    if remaining > 0:
        with _unnamed_log_handlers_detached():
            contexts, weights = _contexts(tasks, board, str(work / "logs"), seed)
        deadline = t0 + time_budget_min * 60 if time_budget_min else None
        cb = TuneProgress(names, weights, before + remaining, deadline, progress, before,
                          baseline_us, on_batch=lambda: _publish(work, db_dir))
        cb.best_us = [b for _, b in existing]
        cb.mark_start()
        cost_model = _cost_model(db_dir)
        remote = parse_device(device) is not None
        runner = _runner(board, device, number, repeat, boards, work / "logs" / BOARD_LOG)
        builder = _builder(board, builders or ((os.cpu_count() or 1) if remote else 1))
        with _stop_on_ctrl_c(cb):
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work),
                          max_trials_global=remaining,
                          num_trials_per_iter=min(trials_per_iter, remaining),
                          builder=builder, runner=runner,
                          database=database, cost_model=cost_model,
                          measure_callbacks=ms.measure_callback.MeasureCallback.create(
                              "default") + [cb])
        cb.close()
        _publish(work, db_dir, logs=True)
        atomic_write(db_dir / _cm.COST_MODEL_FILE, lambda f: _cm.save(cost_model, f))
        if cb.interrupted:
            done = cb.trials
            raise TuneInterrupted(f"interrupted after {done} trial(s) ({done - before} in this "
                                  f"run), all kept in {db_dir}; rerun to resume")
    after = _existing(database, tasks)
    report = TuneReport(board.name, str(db_dir), [
        {"name": n, "layers": lays, "weight": w, "records": c, "best_us": b}
        for n, lays, w, (c, b) in zip(names, task_names, weights, after)], before,
        sum(c for c, _ in after) - before, time.monotonic() - t0, cb.curve if cb else [],
        _measured_per_board(work / "logs" / BOARD_LOG))  # this run's, not an earlier one's
    atomic_write(db_dir / "tune_report.json",
                 lambda f: f.write(json.dumps(report.to_json(), indent=2).encode()))
    return report


@contextlib.contextmanager
def _working_copy(db_dir: Path):
    """A private copy of the database at ``db_dir`` (which may not exist yet), removed at
    the end: a tune that fails before its first measurement leaves no half-made database."""
    import tempfile

    parent = db_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{db_dir.name}.work-", dir=parent))
    try:
        for name in (dbmod.WORKLOAD_FILE, dbmod.RECORD_FILE, dbmod.META_FILE):
            if (db_dir / name).is_file():
                shutil.copyfile(db_dir / name, work / name)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(work: Path, db_dir: Path, logs: bool = False) -> None:
    """Copy the working database into ``db_dir``, each file by write-then-rename, workloads
    before the records that name them."""
    db_dir.mkdir(parents=True, exist_ok=True)
    for name in (dbmod.WORKLOAD_FILE, dbmod.RECORD_FILE, dbmod.META_FILE):
        if (work / name).is_file():
            data = (work / name).read_bytes()
            atomic_write(db_dir / name, lambda f, data=data: f.write(data))
    if logs and (work / "logs").is_dir():
        shutil.copytree(work / "logs", db_dir / "logs", dirs_exist_ok=True)


@contextlib.contextmanager
def _stop_on_ctrl_c(cb):
    """SIGINT sets ``cb.interrupted`` (the search stops after the batch in flight) instead of
    raising KeyboardInterrupt inside MetaSchedule's C++ loop, which ended in std::terminate."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(_sig, _frame):
        if not cb.interrupted:
            print("\ntvmq tune: stopping after the batch in flight; the database stays intact",
                  file=sys.stderr, flush=True)
        cb.interrupted = True

    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _unnamed_log_handlers_detached():
    """MetaSchedule rebuilds its logging config (``dictConfig``) from the *names* of its
    logger's handlers and fails on an unnamed one (pytest's capture handler, an app's):
    detach those while it does, then put them back."""
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    foreign = [h for h in logger.handlers if h.get_name() is None]
    for handler in foreign:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in foreign:
            logger.addHandler(handler)


def export_database(db: str | Path, board: str | Board, dest: str | Path | None = None,
                    models=(), min_gain: float = 0.03, rounds: int = 3,
                    min_model_speedup: float = 1.0) -> Path:
    """Copy a tuned database into ``schedules/<board>/`` (or ``dest``) for shipping.

    With ``models`` (host board only), only schedules that make their layer faster *in the
    compiled model* are shipped (:func:`validate_database`): tuning measures each kernel
    alone, and a kernel that wins alone can lose in the model (caches, noise), so a shipped
    database is never slower than the defaults on the models it was validated on; and
    the model as a whole must not get slower with them either (paired end-to-end timing).
    """
    board = get_board(board)
    src = Path(db)
    reason = dbmod.compatible(src, board.target, TVM_VERSION)
    if reason is not None:
        raise TvmqError(f"cannot export {src}: {reason}", "tune for this board first")
    dest = Path(dest) if dest else dbmod.shipped_dir(board.name, board.target)
    dest.mkdir(parents=True, exist_ok=True)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tvmq-export-") as tmp:
        clean, dropped = _replayable_copy(src, Path(tmp))
        if models:
            report = validate_database(clean, models, board, min_gain, rounds,
                                       min_model_speedup)
            workloads, records = _best_records(clean, board, report["kept_workloads"])
            report = {k: v for k, v in report.items() if k != "kept_workloads"}
            report["unreplayable_records_dropped"] = dropped
        else:
            (workloads, records), report = _pruned(clean), None
    for name, lines in ((dbmod.WORKLOAD_FILE, workloads), (dbmod.RECORD_FILE, records)):
        atomic_write(dest / name, lambda f, lines=lines: f.write("".join(
            line + "\n" for line in lines).encode()))
    meta = json.loads((src / dbmod.META_FILE).read_text())
    atomic_write(dest / dbmod.META_FILE, lambda f: f.write(json.dumps(
        meta, indent=2, sort_keys=True).encode()))
    if report is not None:
        atomic_write(dest / "validation.json", lambda f: f.write(json.dumps(
            report, indent=2).encode()))
    return dest


def validate_database(db: str | Path, models, board: str | Board = "host",
                      min_gain: float = 0.03, rounds: int = 3,
                      min_model_speedup: float = 1.0) -> dict[str, Any]:
    """Which tuned schedules of ``db`` make their layer faster in the compiled ``models``.

    ``models``: ONNX/.pt2 paths, artifact directories, or ``(torch module, example inputs)``.

    Each model is compiled with the default schedules and with ``db``; every layer is timed
    in both builds (``rounds`` alternating rounds, medians). A tuned layer is kept when it
    is at least ``min_gain`` faster than its default, in every model that has it. Then
    each model is timed whole, default vs the kept layers' schedules, in paired alternating
    rounds (:func:`_paired_speedup`); below ``min_model_speedup`` its layers are dropped.
    """
    ms = meta_schedule()
    board = get_board(board)
    if board.is_cross:
        raise TvmqError(f"validating a database needs the board here; {board.name} is remote",
                        "export without models (no validation) or validate on the board")
    database = dbmod.open_database(db, board.target, TVM_VERSION)
    layers, verdict, seen = [], {}, []
    key = lambda m: json.dumps(ms.database.Workload(m).as_json()[0])  # noqa: E731 structural hash
    for model in models:
        model, example = model if isinstance(model, tuple) else (model, None)
        model_src, mod, _ = _legalized(model, board, example, None)
        by_name = {t.task_name: t.dispatched[0] for t in
                   ms.relax_integration.extract_tasks(mod, board.tvm_target())}
        seen.append((model, model_src, example, list(by_name.values())))
        default, tuned = [], []
        for _ in range(rounds):
            default.append(measured_ms(model_src, board, example))
            tuned.append(measured_ms(model_src, board, example, database=db))
        for name, func_mod in by_name.items():
            if not database.has_workload(func_mod) or \
                    not database.get_top_k(database.commit_workload(func_mod), 1):
                continue  # not tuned: the build with the database runs the default
            d = statistics.median(r.get(name, 0.0) for r in default)
            t = statistics.median(r.get(name, 0.0) for r in tuned)
            keep = d > 0 and t <= (1 - min_gain) * d
            k = key(func_mod)
            verdict[k] = (verdict.get(k, (True, func_mod))[0] and keep, func_mod)
            layers.append({"model": str(model)[:80], "function": name, "default_ms": round(d, 4),
                           "tuned_ms": round(t, 4), "kept": keep})
    kept = [m for ok, m in verdict.values() if ok]
    # end to end, paired: faster layers need not make a faster model (the per-layer timer
    # reruns one kernel on warm caches); a model whose kept layers do not speed it up as a
    # whole drops them
    whole = []
    for model, model_src, example, func_mods in seen:
        if not kept:
            break
        mine = {key(m) for m in func_mods}
        if not any(key(m) in mine for m in kept):
            whole.append({"model": str(model)[:80], "kept": None, "note": "no tuned layer"})
            continue
        speedup, share = _paired_speedup(model_src, board, example, db, kept)
        ok = speedup >= min_model_speedup
        whole.append({"model": str(model)[:80], "paired_speedup": round(speedup, 4),
                      "rounds_tuned_faster": round(share, 3), "kept": ok})
        if not ok:
            kept = [m for m in kept if key(m) not in mine]
    return {"min_gain": min_gain, "rounds": rounds, "layers": layers, "models": whole,
            "kept": len(kept), "dropped": len(verdict) - len(kept), "kept_workloads": kept}


PAIRED_ROUNDS = 30
PAIRED_SAMPLE_S = 0.02


def _paired_speedup(model, board: Board, example, db: Path, func_mods) -> tuple[float, float]:
    """(median of per-round default/tuned time ratios, share of rounds the tuned build won)
    for ``model`` built with only ``func_mods``' best records of ``db``
    (:func:`tvmq.device.paired.paired_ms`: order-alternating rounds)."""
    import tempfile

    from tvmq.compiler import compile as compile_model
    from tvmq.device.paired import paired_ms

    with tempfile.TemporaryDirectory(prefix="tvmq-paired-") as tmp:
        sub = Path(tmp) / "db"
        sub.mkdir()
        workloads, records = _best_records(db, board, func_mods)
        for name, lines in ((dbmod.WORKLOAD_FILE, workloads), (dbmod.RECORD_FILE, records)):
            (sub / name).write_text("".join(line + "\n" for line in lines))
        (sub / dbmod.META_FILE).write_text((Path(db) / dbmod.META_FILE).read_text())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            builds = [compile_model(model, example, board, options=PipelineOptions(
                use_shipped_database=False, database=d)) for d in (None, str(sub))]
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(spec["shape"]).astype(spec["dtype"])
              if "float" in spec["dtype"] else np.zeros(spec["shape"], spec["dtype"])
              for spec in builds[0].input_specs]
    default_ms, tuned_ms = paired_ms(lambda: builds[0].run(inputs),
                                     lambda: builds[1].run(inputs), PAIRED_ROUNDS,
                                     PAIRED_SAMPLE_S)
    ratios = [d / t for d, t in zip(default_ms, tuned_ms)]
    return statistics.median(ratios), sum(x > 1 for x in ratios) / len(ratios)


def _replayable_copy(src: Path, tmp: Path) -> tuple[Path, int]:
    """A copy of the database at ``src`` without the records whose trace no longer replays
    on its workload (MetaSchedule refuses to open a database holding one such record)."""
    ms = meta_schedule()
    from tvmq.schedules.tune import builder_initializer

    builder_initializer()
    workloads = (src / dbmod.WORKLOAD_FILE).read_text().splitlines()
    parsed = {}
    kept, dropped = [], 0
    for line in (src / dbmod.RECORD_FILE).read_text().splitlines():
        if not line.strip():
            continue
        index, rec = json.loads(line)
        if index not in parsed:
            parsed[index] = ms.database.Workload.from_json(json.loads(workloads[index]))
        try:
            ms.database.TuningRecord.from_json(rec, parsed[index])
            kept.append(line)
        except Exception:  # noqa: BLE001 - trace replay fails: useless, and poisons the DB
            dropped += 1
    out = tmp / "db"
    out.mkdir()
    (out / dbmod.WORKLOAD_FILE).write_text("".join(w + "\n" for w in workloads))
    (out / dbmod.RECORD_FILE).write_text("".join(r + "\n" for r in kept))
    shutil.copyfile(src / dbmod.META_FILE, out / dbmod.META_FILE)
    return out, dropped


def _drop_unreplayable(db_dir: Path) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tvmq-clean-") as tmp:
        clean, dropped = _replayable_copy(db_dir, Path(tmp))
        atomic_write(db_dir / dbmod.RECORD_FILE,
                     lambda f: f.write((clean / dbmod.RECORD_FILE).read_bytes()))
    warnings.warn(f"{db_dir}: dropped {dropped} tuning record(s) whose schedule no longer "
                  "replays on its workload", stacklevel=3)


def _best_records(src: Path, board: Board, func_mods) -> tuple[list[str], list[str]]:
    """JSON lines of a database holding the best record of each of ``func_mods``."""
    import tempfile

    ms = meta_schedule()
    source = dbmod.open_database(src, board.target, TVM_VERSION)
    with tempfile.TemporaryDirectory(prefix="tvmq-export-") as tmp:
        out = ms.database.JSONDatabase(path_workload=str(Path(tmp) / dbmod.WORKLOAD_FILE),
                                       path_tuning_record=str(Path(tmp) / dbmod.RECORD_FILE),
                                       allow_missing=True)
        for mod in func_mods:
            best = source.get_top_k(source.commit_workload(mod), 1)
            if not best:
                continue
            rec = best[0]
            out.commit_tuning_record(ms.database.TuningRecord(
                rec.trace, out.commit_workload(mod), rec.run_secs, rec.target, rec.args_info))
        return tuple((Path(tmp) / name).read_text().splitlines() if (Path(tmp) / name).exists()
                     else [] for name in (dbmod.WORKLOAD_FILE, dbmod.RECORD_FILE))


def _pruned(src: Path) -> tuple[list[str], list[str]]:
    """Workloads that have records (re-indexed) and the records: what is worth shipping."""
    workloads = (src / dbmod.WORKLOAD_FILE).read_text().splitlines()
    records = [json.loads(line) for line in
               (src / dbmod.RECORD_FILE).read_text().splitlines() if line.strip()]
    used = sorted({rec[0] for rec in records})
    index = {old: new for new, old in enumerate(used)}
    return ([workloads[i] for i in used],
            [json.dumps([index[rec[0]], rec[1]]) for rec in records])


from tvmq.tune.progress import TuneProgress  # noqa: E402  (after meta_schedule import)
