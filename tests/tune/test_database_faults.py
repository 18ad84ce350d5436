"""Faults in a tuning database (issue 24): a partial or garbage line is skipped and reported,
never fatal; Ctrl-C during ``tvmq tune`` stops cleanly and a rerun resumes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest

import tvmq
from tvmq._tvm import TVM_VERSION
from tvmq.schedules import database as dbmod


def _db(path, workloads, records):
    path.mkdir()
    (path / dbmod.WORKLOAD_FILE).write_text("".join(w + "\n" for w in workloads))
    (path / dbmod.RECORD_FILE).write_text("".join(r + "\n" for r in records))
    return path


_REC = json.dumps([[], [1e-6], {}, []])  # [trace, run_secs, target, args_info]


def test_repair_drops_partial_and_garbage_lines(tmp_path):
    db = _db(tmp_path / "db", ['["h0", {}]', '["h1", {}]'],
             [f"[0, {_REC}]", f"[1, {_REC}]", "garbage", "[5, " + _REC + "]", "[0, [1, 2]]"])
    with open(db / dbmod.RECORD_FILE, "a") as f:
        f.write('[1, [[["GetSBlock", [], ["ma')  # a crash in the middle of an append
    notes = dbmod.repair(db)
    assert len(notes) == 4 and all(dbmod.RECORD_FILE in n for n in notes), notes
    assert "line 3" in notes[0] and "line 6" in notes[-1], notes
    lines = (db / dbmod.RECORD_FILE).read_text().splitlines()
    assert [json.loads(r)[0] for r in lines] == [0, 1]
    assert dbmod.repair(db) == []  # repaired for good


def test_repair_renumbers_records_after_a_bad_workload(tmp_path):
    db = _db(tmp_path / "db", ['["h0", {}]', '["h1", {', '["h2", {}]'],
             [f"[0, {_REC}]", f"[1, {_REC}]", f"[2, {_REC}]"])
    notes = dbmod.repair(db)
    assert len(notes) == 2 and dbmod.WORKLOAD_FILE in notes[0], notes
    assert (db / dbmod.WORKLOAD_FILE).read_text().splitlines() == ['["h0", {}]', '["h2", {}]']
    assert [json.loads(r)[0] for r in (db / dbmod.RECORD_FILE).read_text().splitlines()] == [0, 1]


@pytest.mark.build
def test_shipped_database_with_a_partial_line_opens_with_a_warning(tmp_path):
    board = tvmq.get_board("host")
    mcpu = dbmod.shipped_targets("host")[0]
    target = {**board.target, "mcpu": mcpu}
    db = tmp_path / "db"
    shutil.copytree(dbmod.shipped_dir("host", target), db)
    n = len((db / dbmod.RECORD_FILE).read_text().splitlines())
    with open(db / dbmod.RECORD_FILE, "a") as f:
        f.write('[0,[[[["GetSBlock",[],["tv')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        database = dbmod.open_database(db, target, TVM_VERSION)
    assert database is not None and len(database.get_all_tuning_records()) == n
    assert any("skipped 1 unreadable line" in str(w.message) for w in caught)


def _tune(db, trials, model):
    return [sys.executable, "-m", "tvmq.cli", "tune", str(model), "--trials", str(trials),
            "--trials-per-iter", "2", "--db", str(db), "--quiet"]


@pytest.mark.tuning
@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_rerun_resumes(tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) once the first
    batch is stored: exit 130, one closing line, every record kept, no partial line, no
    working copy left; the rerun continues from there."""
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    torch.onnx.export(model, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx", dynamo=False)
    db = tmp_path / "db"
    records = db / dbmod.RECORD_FILE
    proc = subprocess.Popen(_tune(db, 200, tmp_path / "m.onnx"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 900
    while not (records.exists() and records.read_text().strip()) and proc.poll() is None:
        assert time.monotonic() < deadline, "no record stored in 15 minutes"
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "interrupted after" in last and "rerun to resume" in last, err[-3000:]
    lines = records.read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines)  # no partial line
    assert dbmod.repair(db) == []
    assert not [p for p in tmp_path.iterdir() if ".work-" in p.name], "working copy left"
    report = tvmq.tune.tune(tmp_path / "m.onnx", "host", trials=len(lines) + 2, db=db,
                            trials_per_iter=2, progress=False)
    # the rerun starts from what was kept (records of failed builds do not count as trials)
    assert 1 <= report.trials_before <= len(lines), report.to_json()
    assert report.trials_run >= 1, report.to_json()
