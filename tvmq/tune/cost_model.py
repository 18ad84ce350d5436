"""The XGBoost cost model saved with a tuning database, in a format that carries no pickle.

MetaSchedule's own ``XGBModel.save``/``load`` write a tar holding ``np.save`` of a Python
object array and read it back with ``np.load(allow_pickle=True)``: a crafted database runs
code when it is loaded. tvmq stores the same content as one ``.npz`` read with
``allow_pickle=False``:

``booster``   uint8: the booster in XGBoost's own UBJSON format (``save_raw("ubj")``), or
              empty before the first training
``hashes``    str (G,): each feature group's workload hash
``costs``     float64 (N,): every measured candidate's cost, groups one after another
``counts``    int64 (G,): candidates per group
``rows``      int64 (N,): feature rows per candidate
``features``  float32 (sum rows, F): every candidate's feature rows, stacked
``version``   int64 (1,): this layout's version

A ``cost_model.tar`` left by an older tvmq (pickled) is ignored, never opened.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

COST_MODEL_FILE = "cost_model.npz"
LEGACY_FILE = "cost_model.tar"
FORMAT_VERSION = 1


def save(model, fileobj) -> None:
    """Write ``model`` (a MetaSchedule ``XGBModel``) to the binary file object ``fileobj``."""
    groups = list(model.data.values())
    rows = [len(f) for g in groups for f in g.features]
    feats = [np.asarray(f, dtype=np.float32) for g in groups for f in g.features]
    width = feats[0].shape[1] if feats else 0
    booster = model.booster.save_raw("ubj") if model.booster is not None else b""
    buf = io.BytesIO()
    np.savez(buf, version=np.array([FORMAT_VERSION]),
             booster=np.frombuffer(bytes(booster), dtype=np.uint8),
             hashes=np.array([str(g.group_hash) for g in groups], dtype=str),
             costs=np.concatenate([np.asarray(g.costs, np.float64) for g in groups])
             if groups else np.zeros(0),
             counts=np.array([len(g.features) for g in groups], dtype=np.int64),
             rows=np.array(rows, dtype=np.int64),
             features=np.concatenate(feats) if feats else np.zeros((0, width), np.float32))
    fileobj.write(buf.getvalue())


def load(model, db_dir: str | Path) -> bool:
    """Fill ``model`` from ``db_dir``'s saved cost model; False (with a warning) if there is
    none or it cannot be read (the model then starts from warm-up: it only costs time)."""
    db_dir = Path(db_dir)
    if (db_dir / LEGACY_FILE).exists():
        warnings.warn(f"{db_dir / LEGACY_FILE} (pickled, from an older tvmq) is ignored: "
                      "pickles can run code; the cost model restarts from warm-up")
    path = db_dir / COST_MODEL_FILE
    if not path.is_file():
        return False
    try:
        model.data, model.data_size, model.booster = _read(path)
    except Exception as err:  # noqa: BLE001 - any malformed file: warm-up, never a crash
        warnings.warn(f"{path} is unreadable ({type(err).__name__}: {err}); the cost model "
                      "restarts from warm-up")
        return False
    return True


def _read(path: Path):
    from collections import OrderedDict

    import xgboost as xgb

    from tvmq._tvm import meta_schedule

    FeatureGroup = meta_schedule().cost_model.xgb_model.FeatureGroup  # noqa: N806

    with np.load(path, allow_pickle=False) as z:
        if int(z["version"][0]) != FORMAT_VERSION:
            raise ValueError(f"format version {int(z['version'][0])}, expected {FORMAT_VERSION}")
        booster_bytes, hashes = z["booster"].tobytes(), [str(h) for h in z["hashes"]]
        costs, counts, rows, feats = z["costs"], z["counts"], z["rows"], z["features"]
    if counts.sum() != len(costs) or len(rows) != len(costs) or rows.sum() != len(feats) \
            or len(counts) != len(hashes):
        raise ValueError("array lengths disagree")
    per_cand = np.split(feats.astype(np.float32), np.cumsum(rows)[:-1]) if len(rows) else []
    data, start = OrderedDict(), 0
    for h, n in zip(hashes, counts):
        data[h] = FeatureGroup(h, list(per_cand[start:start + n]), costs[start:start + n])
        start += n
    booster = None
    if booster_bytes:
        booster = xgb.Booster()
        booster.load_model(bytearray(booster_bytes))
    return data, len(costs), booster
