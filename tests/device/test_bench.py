"""Bench through a real tracker + RPC server and locally; outputs are checked before timing."""
from __future__ import annotations

import argparse
import json
import os
import signal

import numpy as np
import pytest

from tvmq import device
from tvmq.device import OutputMismatchError, processes
from tvmq.device.cli import add_parsers
from tvmq.errors import DeviceError

pytestmark = pytest.mark.build


def _url(addr, key="host"):
    return f"rpc://{addr.host}:{addr.port}/{key}"


def test_state_file_records_started_pids(rpc_tracker, device_state):
    _, entries = rpc_tracker
    names = sorted(e["name"] for e in entries)
    assert names == ["server:host", "server:victim", "tracker"]
    assert all(e["argv"][e["argv"].index("--host") + 1] == "127.0.0.1" for e in entries)
    state = json.loads(device_state.read_text())
    assert {p["pid"] for p in state["processes"]} == {e["pid"] for e in entries}


def test_list_shows_free_boards(rpc_tracker):
    addr, _ = rpc_tracker
    boards = device.queue(addr)
    assert boards["host"]["total"] == 1 and boards["host"]["free"] == 1
    assert "host" in device.format_queue(boards)


def test_bench_rpc_checks_then_times(rpc_tracker, digits_artifacts, tmp_path):
    addr, _ = rpc_tracker
    host, _ = digits_artifacts
    with device.connect(_url(addr), timeout=20) as board:
        res = board.bench(host, number=5, repeat=5, per_layer=True)
    assert res.validated and res.max_abs_error <= 1e-5
    assert len(res.samples_ms) == 5 and 0 < res.median_ms <= res.p90_ms + 1e-12
    # the float conv: tvmq's blocked float kernel (TVM's own conv2d with float_kernels=False)
    first = res.layers[0]["name"]
    assert first.startswith(("fused_tvmq_fkernel", "fused_conv2d")), first
    data = json.loads(res.write_json(tmp_path / "r.json").read_text())
    assert {"median_ms", "p90_ms", "std_ms", "samples_ms", "device_description"} <= set(data)
    rows = (res.write_csv(tmp_path / "r.csv")).read_text().splitlines()
    assert rows[0].startswith("kind,") and len(rows) == 1 + 5 + len(res.layers)


def test_bench_local_matches(digits_artifacts):
    host, _ = digits_artifacts
    res = device.connect("local").bench(host, number=5, repeat=3, per_layer=True)
    assert res.validated and res.max_abs_error == 0.0
    assert res.layer_method == "library time_evaluator"
    assert all(lay["median_ms"] is not None for lay in res.layers)


def test_wrong_reference_raises_before_timing(rpc_tracker, digits_artifacts):
    addr, _ = rpc_tracker
    host, _ = digits_artifacts
    with device.connect(_url(addr), timeout=20) as board:
        with pytest.raises(OutputMismatchError, match="no timing was taken"):
            board.bench(host, reference=[np.zeros((1, 10), np.float32)])


def test_arch_mismatch_is_a_device_error(rpc_tracker, digits_artifacts):
    addr, _ = rpc_tracker
    _, arm = digits_artifacts
    if arm is None:
        pytest.skip("no aarch64 cross compiler")
    for url in (_url(addr), "local"):
        with device.connect(url, timeout=20) as board:
            with pytest.raises(DeviceError, match=r"built for arm64-emu \(aarch64\).*recompile"):
                board.bench(arm, check=False)


def test_no_board_for_key(rpc_tracker):
    addr, _ = rpc_tracker
    with pytest.raises(DeviceError, match="no RPC server is registered under key 'nope'"):
        device.connect(_url(addr, "nope"), timeout=1)


def test_bench_cli_writes_reports(rpc_tracker, digits_artifacts, tmp_path, capsys):
    addr, _ = rpc_tracker
    host, _ = digits_artifacts
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", str(host), "--device", _url(addr), "--number", "3",
                              "--repeat", "3", "--json", str(tmp_path / "b.json"),
                              "--csv", str(tmp_path / "b.csv"), "--plot", str(tmp_path / "b.png")])
    assert args.func(args) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"b.json", "b.csv", "b.png"}
    args = parser.parse_args(["device", "list", "--tracker", f"{addr.host}:{addr.port}"])
    assert args.func(args) == 0 and "victim" in capsys.readouterr().out


def test_server_killed_mid_session(rpc_tracker, digits_artifacts):
    addr, entries = rpc_tracker
    host, _ = digits_artifacts
    victim = next(e for e in entries if e["name"] == "server:victim")
    board = device.connect(_url(addr, "victim"))
    os.killpg(victim["pgid"], signal.SIGKILL)
    processes.stop_entry(victim)
    with pytest.raises(DeviceError, match=r"lost the RPC session.*restart the board"):
        board.bench(host, number=2, repeat=2)
