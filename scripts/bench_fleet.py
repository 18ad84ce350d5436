"""Wall time of one tuning run measured on 1 board vs a fleet of N boards (issue 25).

Each round starts a fresh tracker with the config's number of RPC servers under key
``host`` on loopback (``tvmq.device.up(servers=N)``), tunes a small dense layer
(Linear 64->32 + ReLU) for a fixed number of trials in one batch into a fresh database
(``tvmq.tune.tune(..., device="rpc://.../host", boards=N)``), and stops the servers;
configurations alternate (A B B A ...), each run in a fresh process (as ``tvmq tune`` is:
a process's first tune also pays one-off imports, ~2 min here). Per run: wall time of
``tune()``, the time during which at least one board was measuring (from the runner's log
``<db>/logs/boards.jsonl``), and the rest (task extraction, search, building). Writes JSON
with per-config medians and the ratios first config / each other.

Every config's servers run with the same number of threads (``--server-threads``,
default: the cores divided by the largest config), so all boards are alike and only their
number changes. Loopback servers share this machine's cores with the builder: on a 2-core
host the builds, not the boards, set the pace.

    python scripts/bench_fleet.py --configs 1 2 --rounds 2 --repeat 50 -o out/bench_fleet.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import tvmq
from tvmq import device
from tvmq.boards import host_cpu_name
from tvmq.device import fleet, processes


class Dense(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 32)

    def forward(self, x):
        return torch.relu(self.fc(x))


def measuring_s(rows: list[dict]) -> float:
    """Seconds during which at least one board was measuring (union of the attempts)."""
    spans = sorted((r["start"], r["end"]) for r in rows)
    total, end = 0.0, float("-inf")
    for a, b in spans:
        total += max(0.0, b - max(a, end))
        end = max(end, b)
    return total


def run_once(servers: int, builders: int | None, trials: int, repeat: int, tmp: Path) -> dict:
    port = processes.free_port()
    info = device.up(port=port, servers=servers)
    db = tmp / f"db-{servers}-{time.monotonic_ns()}"
    try:
        t0 = time.monotonic()
        report = tvmq.tune.tune(Dense().eval(), "host", example_inputs=torch.randn(1, 64),
                                trials=trials, trials_per_iter=trials, db=db, repeat=repeat,
                                device=f"rpc://127.0.0.1:{port}/host", boards=servers,
                                builders=builders, progress=False)
        wall = time.monotonic() - t0
    finally:
        device.down(info["tracker"])
    rows = fleet.read_log(db / "logs" / "boards.jsonl")
    measuring = measuring_s(rows)
    return {"wall_s": wall, "measuring_s": measuring, "rest_s": wall - measuring,
            "trials": report.trials_run, "per_board": report.boards,
            "attempts": len(rows), "load_1min": os.getloadavg()[0]}


def run_in_process(servers: int, args, tmp: str) -> dict:
    """:func:`run_once` in a fresh Python process (its JSON is the last stdout line)."""
    argv = [sys.executable, __file__, "--one", str(servers), "--tmp", tmp,
            "--trials", str(args.trials), "--repeat", str(args.repeat)]
    if args.builders:
        argv += ["--builders", str(args.builders)]
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", type=int, default=[1, 2],
                    help="boards (= servers) per config; the first is the reference")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3,
                    help="evaluator repeats per measurement (>= 20 ms each): raise it to "
                         "play a slower board")
    ap.add_argument("--builders", type=int, help="build processes (default: every core)")
    ap.add_argument("--server-threads", type=int,
                    help="TVM threads per server (default: cores // largest config)")
    ap.add_argument("-o", "--output", default="out/bench_fleet.json")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single run (child)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        res = run_once(args.one, args.builders, args.trials, args.repeat, Path(args.tmp))
        print(json.dumps(res))
        return
    os.environ.setdefault("TVMQ_DEVICE_STATE", str(Path(tempfile.mkdtemp()) / "state.json"))
    threads = args.server_threads or max(1, (os.cpu_count() or 1) // max(args.configs))
    os.environ["TVM_NUM_THREADS"] = str(threads)  # what the servers inherit (a lone one too)
    runs: dict[int, list[dict]] = {n: [] for n in args.configs}
    with tempfile.TemporaryDirectory(prefix="tvmq-bench-fleet-") as tmp:
        for r in range(args.rounds):
            order = args.configs if r % 2 == 0 else args.configs[::-1]
            for n in order:
                res = run_in_process(n, args, tmp)
                runs[n].append(res)
                print(f"round {r}: {n} board(s): {json.dumps(res)}", flush=True)
    med = {n: {k: statistics.median(x[k] for x in rs) for k in ("wall_s", "measuring_s",
                                                                 "rest_s")}
           for n, rs in runs.items()}
    ref = args.configs[0]
    out = {"cpu": host_cpu_name(), "cores": os.cpu_count(), "trials": args.trials,
           "repeat": args.repeat, "builders": args.builders or os.cpu_count(),
           "server_threads": threads,
           "median": med, "runs": runs,
           "ratio_wall": {n: med[ref]["wall_s"] / med[n]["wall_s"] for n in args.configs},
           "ratio_measuring": {n: med[ref]["measuring_s"] / med[n]["measuring_s"]
                               for n in args.configs}}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("cpu", "median", "ratio_wall",
                                          "ratio_measuring")}, indent=2))


if __name__ == "__main__":
    main()
