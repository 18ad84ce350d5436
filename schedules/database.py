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
        reason = compatible(path, target, tvm_version)
        if reason is not None:
            key = (str(path), reason)
            if key not in _WARNED:  # once per process: a shipped one is tried on every compile
                _WARNED.add(key)
                warnings.warn(f"ignoring tuned database {path}: {reason}", stacklevel=2)
            return None
    return ms.database.JSONDatabase(path_workload=str(path / WORKLOAD_FILE),
                                    path_tuning_record=str(path / RECORD_FILE),
                                    allow_missing=True)


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
