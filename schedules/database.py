"""Tuned MetaSchedule databases: shipped per board in ``schedules/<board>/``, applied at compile.

Shipped ones live in ``schedules/<board>/<mcpu>/`` (:func:`shipped_dir`). A database
directory holds MetaSchedule's two JSON files plus ``meta.json``::

    database_workload.json        workloads (TIR PrimFuncs, structural hash)
    database_tuning_record.json   tuning records (trace, measured latencies, target)
    meta.json                     {"tvm_version": ..., "target": {...}, "board": ...}

A database tuned with another TVM version or for another target is ignored with a warning,
never misapplied: schedules are only valid for the TIR and target they were tuned on.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
META_FILE = "meta.json"
SHIPPED_ROOT = Path(__file__).parent
_WARNED: set = set()


def shipped_dir(board_name: str, target: dict[str, Any] | None = None) -> Path:
    """Where the package ships ``board_name``'s tuned database for ``target``:
    ``schedules/<board>/<mcpu>/``. One directory per CPU, because schedules are only valid
    for the CPU they were tuned for and the ``host`` board is whatever CPU this machine has
    (``znver5`` and ``znver2`` hosts take different kernels: AVX-512 VNNI vs AVX2)."""
    root = SHIPPED_ROOT / board_name
    mcpu = str((target or {}).get("mcpu") or "generic")
    return root / "".join(c if c.isalnum() or c in "-_." else "_" for c in mcpu)


def shipped_targets(board_name: str) -> list[str]:
    """The CPUs (``mcpu``) for which the package ships a database of ``board_name``."""
    root = SHIPPED_ROOT / board_name
    return sorted(f.parent.name for f in root.glob(f"*/{WORKLOAD_FILE}"))


def _target_key(target: dict[str, Any]) -> dict[str, Any]:
    """The target fields that decide whether a schedule is valid (not ``num-cores``/tags)."""
    return {k: target[k] for k in ("kind", "mtriple", "mcpu", "mattr", "mfloat-abi")
            if k in target}


def read_meta(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(path) / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def compatible(path: str | Path, target: dict[str, Any], tvm_version: str) -> str | None:
    """``None`` when the database at ``path`` fits; otherwise the reason it does not."""
    path = Path(path)
    if not (path / WORKLOAD_FILE).is_file() or not (path / RECORD_FILE).is_file():
        return f"{path} holds no MetaSchedule database"
    meta = read_meta(path)
    if meta is None:
        return f"{path}/{META_FILE} is missing or corrupt (no TVM version/target recorded)"
    if meta.get("tvm_version") != tvm_version:
        return f"tuned with TVM {meta.get('tvm_version')}, this is TVM {tvm_version}"
    if _target_key(meta.get("target", {})) != _target_key(target):
        return f"tuned for target {_target_key(meta.get('target', {}))}, not {_target_key(target)}"
    return None


def write_meta(path: str | Path, target: dict[str, Any], tvm_version: str, board: str,
               **extra: Any) -> None:
    meta = {"tvm_version": tvm_version, "target": target, "board": board, **extra}
    (Path(path) / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def open_database(path: str | Path, target: dict[str, Any], tvm_version: str,
                  create: bool = False):
    """Open the JSON database at ``path`` if it fits ``target``; warn and return None if not."""
    from tvmq._tvm import meta_schedule
    from tvmq.schedules.tune import builder_initializer

    ms = meta_schedule()
    builder_initializer()  # records' traces name tvmq's tensor intrinsics: register them first
    path = Path(path)
    if create and not (path / WORKLOAD_FILE).exists():
        path.mkdir(parents=True, exist_ok=True)
    else:
        if (path / WORKLOAD_FILE).is_file() and (path / RECORD_FILE).is_file():
            try:
                _warn_skipped(path, repair(path))
            except Exception as err:  # noqa: BLE001 - e.g. a read-only shipped database
                warnings.warn(f"ignoring tuned database {path}: cannot repair it ({err})",
                              stacklevel=2)
                return None
        reason = compatible(path, target, tvm_version)
        if reason is not None:
            key = (str(path), reason)
            if key not in _WARNED:  # once per process: a shipped one is tried on every compile
                _WARNED.add(key)
                warnings.warn(f"ignoring tuned database {path}: {reason}", stacklevel=2)
            return None
    try:
        return ms.database.JSONDatabase(path_workload=str(path / WORKLOAD_FILE),
                                        path_tuning_record=str(path / RECORD_FILE),
                                        allow_missing=True)
    except Exception as err:  # noqa: BLE001 - a record whose trace does not replay
        if create:
            raise  # tvmq.tune drops such records and reopens
        reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        warnings.warn(f"ignoring tuned database {path}: MetaSchedule cannot read it ({reason}); "
                      "rerun `tvmq tune --db` on it to drop the bad records", stacklevel=2)
        return None


def _parse_lines(text: str, check) -> tuple[list[str], list[tuple[int, str]]]:
    """(good lines, [(1-based line number, why)] of the bad ones); blank lines are dropped."""
    good, bad = [], []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            check(json.loads(line))
            good.append(line)
        except (ValueError, TypeError, IndexError, KeyError) as err:
            bad.append((number, f"{type(err).__name__}: {str(err)[:60]}"))
    return good, bad


def _check_workload(value) -> None:
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError("not a [hash, module] pair")


def repair(path: str | Path) -> list[str]:
    """Drop the unreadable lines of the database at ``path``; returns one note per line.

    A crash in the middle of an append leaves a partial last line, and MetaSchedule then
    refuses the whole database. Bad workload lines are dropped with the records that name
    them (the other records' workload indices are renumbered); bad record lines (not JSON,
    not ``[index, record]``, an index with no workload) are dropped. The files are
    rewritten with write-then-rename, so a second crash cannot make it worse.
    """
    path = Path(path)
    wtext = (path / WORKLOAD_FILE).read_text(errors="replace")
    rtext = (path / RECORD_FILE).read_text(errors="replace")
    raw = [line for line in wtext.split("\n") if line.strip()]
    workloads, bad_w = _parse_lines(wtext, _check_workload)
    keep = [i for i, line in enumerate(raw) if line in workloads]
    renumber = {old: new for new, old in enumerate(keep)}

    def check_record(value):
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
                and isinstance(value[1], list) and len(value[1]) == 4):
            raise ValueError("not an [index, record] pair")
        if value[0] not in renumber:
            raise IndexError(f"workload {value[0]} does not exist")

    records, bad_r = _parse_lines(rtext, check_record)
    if not bad_w and not bad_r and renumber == {i: i for i in range(len(raw))}:
        return []
    records = [json.dumps([renumber[json.loads(r)[0]], json.loads(r)[1]]) for r in records]
    _atomic_text(path / WORKLOAD_FILE, "".join(w + "\n" for w in workloads))
    _atomic_text(path / RECORD_FILE, "".join(r + "\n" for r in records))
    return [f"{WORKLOAD_FILE} line {n} ({why})" for n, why in bad_w] + \
        [f"{RECORD_FILE} line {n} ({why})" for n, why in bad_r]


def _warn_skipped(path: Path, notes: list[str]) -> None:
    if notes:
        more = f" and {len(notes) - 3} more" if len(notes) > 3 else ""
        warnings.warn(f"{path}: skipped {len(notes)} unreadable line(s), kept the rest: "
                      f"{'; '.join(notes[:3])}{more}", stacklevel=3)


def _atomic_text(path: Path, text: str) -> None:
    from tvmq.artifact import atomic_write

    atomic_write(path, lambda f: f.write(text.encode()))


def apply_database(mod, target, database):
    """Apply ``database``'s best schedules to the matching PrimFuncs of ``mod``.

    Returns the new module and the names of the PrimFuncs that got a tuned schedule. Run it
    after legalization and fusion, before the default schedules (which skip scheduled funcs).
    """
    from tvmq._tvm import relax, tir, tvm

    from tvmq.schedules.common import parallel_overlaps

    original = {gv.name_hint: f for gv, f in mod.functions.items()}
    before = {name for name, f in original.items() if _is_scheduled(f, tir)}
    with target, database, tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    tuned = []
    for gv, func in list(mod.functions.items()):
        if not _is_scheduled(func, tir) or gv.name_hint in before:
            continue
        bad = parallel_overlaps(func)
        if bad:  # a record tuned before the epilogue placement was fixed: threads race
            warnings.warn(f"tvmq: tuned schedule of {gv.name_hint} dropped (blocks "
                          f"{', '.join(bad)} computed whole per parallel iteration); the "
                          "default schedule applies", stacklevel=2)
            mod[gv] = original[gv.name_hint]
            continue
        tuned.append(gv.name_hint)
    return mod, sorted(tuned)


def _is_scheduled(func, tir) -> bool:
    return isinstance(func, tir.PrimFunc) and bool(func.attrs) and \
        bool(func.attrs.get("tirx.is_scheduled", False))
