"""Tuning: database compatibility rules (fast) and a tiny real MetaSchedule run (``tuning``)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import tvmq
from tvmq._tvm import TVM_VERSION
from tvmq.errors import TvmqError
from tvmq.schedules import database as dbmod
from tvmq.tune.tuner import parse_device


def _fake_db(path, target, version=TVM_VERSION):
    path.mkdir()
    (path / dbmod.WORKLOAD_FILE).write_text("")
    (path / dbmod.RECORD_FILE).write_text("")
    dbmod.write_meta(path, target, version, "host")
    return path


def test_database_from_other_tvm_version_is_ignored(tmp_path):
    board = tvmq.get_board("host")
    path = _fake_db(tmp_path / "db", board.target, version="0.19.0")
    with pytest.warns(UserWarning, match="TVM 0.19.0"):
        assert dbmod.open_database(path, board.target, TVM_VERSION) is None


def test_database_for_other_target_is_ignored(tmp_path):
    board = tvmq.get_board("host")
    path = _fake_db(tmp_path / "db", tvmq.get_board("rasp4b").target)
    with pytest.warns(UserWarning, match="cortex-a72"):
        assert dbmod.open_database(path, board.target, TVM_VERSION) is None


def test_database_without_meta_is_ignored(tmp_path):
    path = _fake_db(tmp_path / "db", {})
    (path / dbmod.META_FILE).unlink()
    assert "missing" in dbmod.compatible(path, {}, TVM_VERSION)


def test_num_cores_does_not_invalidate(tmp_path):
    target = dict(tvmq.get_board("host").target)
    path = _fake_db(tmp_path / "db", {**target, "num-cores": 64})
    assert dbmod.compatible(path, target, TVM_VERSION) is None


def test_shipped_databases_are_per_cpu(monkeypatch, tmp_path):
    """``schedules/<board>/<mcpu>/``: a host compile picks its own CPU's database only, and
    says which CPUs have one when this one does not."""
    board = tvmq.get_board("host")
    mcpu = board.target["mcpu"]
    assert dbmod.shipped_dir("host", board.target) == dbmod.SHIPPED_ROOT / "host" / mcpu
    assert dbmod.shipped_dir("host", {"kind": "llvm", "mcpu": "a/b"}).name == "a_b"
    monkeypatch.setattr(dbmod, "SHIPPED_ROOT", tmp_path)
    (tmp_path / "host").mkdir()
    _fake_db(tmp_path / "host" / "othercpu", {**board.target, "mcpu": "othercpu"})
    assert dbmod.shipped_targets("host") == ["othercpu"]
    art = tvmq.compile(tvmq.models.create("digits_cnn").eval(), torch.randn(1, 1, 8, 8))
    assert art.meta["schedules"]["database"] is None
    assert art.meta["schedules"]["shipped_for_other_cpus"] == ["othercpu"]


def test_tuning_curve_counts_untuned_tasks_at_their_default_time():
    from tvmq.tune.progress import TuneProgress

    cb = TuneProgress(["a", "b"], [2.0, 1.0], 10, show=False, baseline_us=[10.0, 5.0])
    cb.mark_start()
    assert cb.curve == [(0, 25.0)]  # untuned: 2 x 10 + 5
    cb.best_us = [8.0, None]
    assert cb.estimated_us() == 21.0  # a tuned, b at its default
    cb.best_us = [12.0, 3.0]
    assert cb.estimated_us() == 23.0  # a's default beats its best candidate
    bare = TuneProgress(["a", "b"], [2.0, 1.0], 10, show=False)
    assert bare.estimated_us() is None
    bare.best_us = [8.0, None]
    assert bare.estimated_us() == 16.0
    cb.close(), bare.close()


@pytest.mark.parametrize("url", ["http://a:1/k", "rpc://a:notaport/k"])
def test_bad_device_url(url):
    with pytest.raises(TvmqError, match="rpc://HOST:PORT/KEY"):
        parse_device(url)


def test_device_url():
    assert parse_device("rpc://127.0.0.1:9190/rasp4b") == ("127.0.0.1", 9190, "rasp4b")
    assert parse_device("local") is None


def test_cross_board_needs_device():
    with pytest.raises(TvmqError, match="--device rpc://"):
        tvmq.tune.tuner._runner(tvmq.get_board("rasp4b"), None, 1, 1)


class _Dense(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 32)

    def forward(self, x):
        return torch.relu(self.fc(x))


@pytest.mark.tuning
@pytest.mark.ci
def test_tune_resume_and_apply(tmp_path):
    """A real (tiny) MetaSchedule run: records land in the DB, a re-run resumes instead of
    restarting, and compile applies the tuned schedule with unchanged numerics."""
    model, x = _Dense().eval(), torch.randn(1, 64)
    db = tmp_path / "db"
    first = tvmq.tune.tune(model, "host", example_inputs=x, trials=4, db=db,
                           trials_per_iter=4, progress=False)
    assert first.trials_run >= 4 and first.tasks[0]["best_us"] is not None, first.to_json()
    again = tvmq.tune.tune(model, "host", example_inputs=x, trials=4, db=db, progress=False)
    assert again.trials_run == 0 and again.trials_before == first.trials_run
    assert (db / "cost_model.npz").is_file() and not (db / "cost_model.tar").exists()
    report = json.loads((db / "tune_report.json").read_text())
    assert report["board"] == "host"
    shipped = tvmq.tune.export_database(db, "host", dest=tmp_path / "shipped")
    assert len((shipped / "database_workload.json").read_text().splitlines()) <= \
        len((db / "database_workload.json").read_text().splitlines())
    art = tvmq.compile(model, x, options=tvmq.PipelineOptions(database=str(shipped)))
    assert art.meta["schedules"]["tuned_funcs"], art.meta["schedules"]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(art.run(x.numpy())[0], ref, rtol=1e-5, atol=1e-5)
    # validated export: every tuned layer is timed in the compiled model, default vs tuned;
    # a gain nothing can reach ships nothing, a negative one ships every tuned layer
    none = tvmq.tune.export_database(db, "host", dest=tmp_path / "none", models=[(model, x)],
                                     min_gain=1.0, rounds=1)
    val = json.loads((none / "validation.json").read_text())
    assert val["kept"] == 0 and val["layers"] and not any(l["kept"] for l in val["layers"])
    assert all(l["default_ms"] > 0 and l["tuned_ms"] > 0 for l in val["layers"]), val
    assert not (none / "database_tuning_record.json").read_text().strip()
    every = tvmq.tune.export_database(db, "host", dest=tmp_path / "all", models=[(model, x)],
                                      min_gain=-100.0, rounds=1, min_model_speedup=0.0)
    val = json.loads((every / "validation.json").read_text())
    assert val["dropped"] == 0 and val["models"][0]["paired_speedup"] > 0, val
    # the whole-model check can veto what every layer passed
    vetoed = tvmq.tune.export_database(db, "host", dest=tmp_path / "veto", models=[(model, x)],
                                       min_gain=-100.0, rounds=1, min_model_speedup=100.0)
    val = json.loads((vetoed / "validation.json").read_text())
    assert val["kept"] == 0 and not val["models"][0]["kept"], val
    art = tvmq.compile(model, x, options=tvmq.PipelineOptions(database=str(every)))
    assert art.meta["schedules"]["tuned_funcs"], art.meta["schedules"]


@pytest.mark.tuning
def test_time_budget_stops_cleanly(tmp_path):
    """A tiny time budget ends the run after the first measured batch, without error, and
    what was measured is kept."""
    model, x = _Dense().eval(), torch.randn(1, 64)
    report = tvmq.tune.tune(model, "host", example_inputs=x, trials=1000, db=tmp_path / "db",
                            trials_per_iter=2, time_budget_min=0.001, progress=False)
    assert 0 < report.trials_run < 1000


@pytest.mark.tuning
def test_cli_json_keeps_stdout_machine_readable(tmp_path, capsys):
    """``tvmq tune --json``: stdout is the JSON report alone (MetaSchedule logs its setup
    on stdout; the summary lines go to stderr with it)."""
    from tvmq.cli import main
    from tvmq.onnx_tools import export_float

    path = export_float(_Dense().eval(), (1, 64), tmp_path / "dense.onnx")
    assert main(["tune", str(path), "--board", "host", "--trials", "2",
                 "--trials-per-iter", "2", "--db", str(tmp_path / "db"), "--quiet",
                 "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["board"] == "host" and report["trials_run"] >= 1, report
    assert "tuned 1 task(s)" in captured.err
