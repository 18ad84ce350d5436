"""The tuning database's cost model: saved without pickle, a crafted file never runs code."""
from __future__ import annotations

import contextlib
import io
import os
import tarfile

import numpy as np
import pytest

from tvmq._tvm import meta_schedule
from tvmq.tune import cost_model as cm


class _Evil:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _trained_model(rng):
    import xgboost as xgb

    ms = meta_schedule()
    model = ms.cost_model.XGBModel(num_warmup_samples=0)
    group = ms.cost_model.xgb_model.FeatureGroup
    feats = [rng.standard_normal((int(n), 7)).astype(np.float32) for n in rng.integers(1, 5, 9)]
    model.data = {"a": group("a", feats[:4], rng.random(4)), "b": group("b", feats[4:], rng.random(5))}
    model.data_size = 9
    x = rng.standard_normal((32, 7))
    model.booster = xgb.train({"max_depth": 2}, xgb.DMatrix(x, label=x[:, 0]), num_boost_round=3)
    return model, xgb.DMatrix(x)


def test_round_trip_keeps_data_and_booster(tmp_path, rng):
    model, probe = _trained_model(rng)
    with open(tmp_path / cm.COST_MODEL_FILE, "wb") as f:
        cm.save(model, f)
    back = meta_schedule().cost_model.XGBModel()
    assert cm.load(back, tmp_path)
    assert list(back.data) == ["a", "b"] and back.data_size == 9
    for key in ("a", "b"):
        np.testing.assert_array_equal(back.data[key].costs, model.data[key].costs)
        for got, want in zip(back.data[key].features, model.data[key].features, strict=True):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(back.booster.predict(probe), model.booster.predict(probe))


def _legacy_tar(path, marker):
    """What MetaSchedule's ``XGBModel.save`` writes, with a payload in the object array."""
    buf = io.BytesIO()
    np.save(buf, np.array([("h", [_Evil(marker)], np.ones(1))], dtype=object))
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("data.npy")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))


def test_crafted_legacy_database_is_never_opened(tmp_path):
    marker = tmp_path / "PWNED"
    _legacy_tar(tmp_path / cm.LEGACY_FILE, marker)
    # the danger is real: TVM's own loader runs the payload ...
    with contextlib.suppress(Exception):  # it fails afterwards (no booster): too late
        meta_schedule().cost_model.XGBModel().load(str(tmp_path / cm.LEGACY_FILE))
    assert marker.exists(), "the crafted file must be able to run code for this test to mean anything"
    marker.unlink()
    # ... tvmq's does not open the file at all
    with pytest.warns(UserWarning, match="pickled, from an older tvmq"):
        assert not cm.load(meta_schedule().cost_model.XGBModel(), tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("content", ["pickle", "garbage", "lengths"])
def test_crafted_or_corrupt_npz_is_refused_with_a_warning(tmp_path, rng, content):
    marker, path = tmp_path / "PWNED", tmp_path / cm.COST_MODEL_FILE
    if content == "pickle":
        np.savez(path, version=np.array([1]), hashes=np.array([_Evil(marker)], dtype=object))
    elif content == "garbage":
        path.write_bytes(b"PK\x03\x04 not a zip")
    else:
        model, _ = _trained_model(rng)
        with open(path, "wb") as f:
            cm.save(model, f)
        arrays = dict(np.load(path))
        arrays["rows"] = arrays["rows"][:-1]
        np.savez(path, **arrays)
    with pytest.warns(UserWarning, match="unreadable"):
        assert not cm.load(meta_schedule().cost_model.XGBModel(), tmp_path)
    assert not marker.exists()
