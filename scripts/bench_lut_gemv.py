"""Batch-1 codebook GEMV: direct blocked kernel vs activation-table (LUT) kernel, per shape.

For each (in_features, out_features) and codebook size K, a random codebook (0 and K-1
distinct nonzero int8 values, as DGMS keeps a zero entry) and weights drawn from it are
compiled both ways for this CPU with tvmq's TIR pipeline (byte shuffles): the direct
kernel (:class:`tvmq.schedules.BlockIntegerOps`' blocked dense with the codebook decoded in
the loop) and the LUT kernel (:mod:`tvmq.schedules.lut_gemv`). Both outputs are checked
against a NumPy int64 reference; the two are timed alternately (A B A B ...), ``--rounds``
samples of at least ``--min-ms`` each; medians are reported with the ratio LUT / direct
(the median of the per-round ratios: a round's two samples share the background load).

Usage: python scripts/bench_lut_gemv.py -o docs/results/lut_gemv_zen4.json
           [--write-table [PATH]] [--rounds 9] [--threads 2] [--k 2 4 8 16]
``--write-table`` without a path writes ``schedules/host/<mcpu>/lut_gemv.json``, the table
:func:`tvmq.schedules.gemv_select.choose_form` reads at compile time.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

SHAPES = [(64, 10), (512, 10), (512, 1000), (1280, 1000), (4096, 4096)]


def _codebook(k: int, rng) -> np.ndarray:
    nonzero = np.setdiff1d(np.arange(-128, 128), [0])
    return np.concatenate([[0], rng.choice(nonzero, k - 1, replace=False)]).astype(np.int8)


def _build(form: str, w, table, bits: int, target, st):
    from tvmq.schedules import kernels, lut_gemv

    if form == "lut":
        func, consts = lut_gemv.gemv_func(w, "uint8")
    else:
        func, consts = kernels.codebook_dense_func(w, table, bits, "uint8", st)
    return kernels.build(func, target, st, lookups=True), consts


def bench_shape(k_in: int, n_out: int, k: int, target, st, rounds: int, min_ms: float,
                seed: int = 0) -> dict:
    """One row: both forms built, checked and timed alternately."""
    from tvmq._tvm import tensor, tvm

    rng = np.random.default_rng(seed)
    table = _codebook(k, rng)
    bits = k.bit_length() - 1
    w = table[rng.integers(0, k, (k_in, n_out))]
    x = rng.integers(0, 256, (1, k_in)).astype(np.uint8)
    ref = x.astype(np.int64) @ w.astype(np.int64)
    timers, args, exact, stored = {}, {}, {}, {}
    for form in ("direct", "lut"):
        lib, consts = _build(form, w, table, bits, target, st)
        stored[form] = int(sum(c.nbytes for c in consts))  # uint8 input: no correction
        out = tensor(np.zeros((1, n_out), np.int32))
        args[form] = [tensor(x), *[tensor(c) for c in consts], out]
        lib(*args[form])
        exact[form] = bool(np.array_equal(out.numpy(), ref))
        timers[form] = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=1,
                                              min_repeat_ms=int(min_ms))
        timers[form](*args[form])  # warm-up
    samples = {f: [] for f in timers}
    for _ in range(rounds):
        for form, timer in timers.items():
            samples[form].append(timer(*args[form]).mean * 1e3)
    med = {f: float(np.median(s)) for f, s in samples.items()}
    # paired: each round's two samples ran back to back, under the same background load
    paired = float(np.median(np.array(samples["lut"]) / np.array(samples["direct"])))
    from tvmq.schedules.lut_gemv import codebook_of

    return {"in_features": k_in, "out_features": n_out, "k": k,
            "planes": int(np.count_nonzero(codebook_of(w))), "direct_ms": round(med["direct"], 5),
            "lut_ms": round(med["lut"], 5), "lut_over_direct": round(paired, 3),
            "direct_weight_bytes": stored["direct"], "lut_weight_bytes": stored["lut"],
            "exact": exact}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True, help="results JSON")
    ap.add_argument("--write-table", nargs="?", const="", default=None,
                    help="also write the selection table (default: the shipped path)")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--min-ms", type=int, default=10, help="shortest timing sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4, 8, 16])
    args = ap.parse_args(argv)

    from tvmq._tvm import TVM_VERSION, tvm
    from tvmq.boards import get_board, host_cpu_name
    from tvmq.schedules import gemv_select
    from tvmq.schedules.strategy import strategy_for

    mcpu = str(get_board("host").target.get("mcpu", ""))
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": args.threads})
    st = strategy_for(target)
    rows = []
    for k_in, n_out in SHAPES:
        for k in args.k:
            t0 = time.perf_counter()
            row = bench_shape(k_in, n_out, k, target, st, args.rounds, args.min_ms)
            rows.append(row)
            print(f"{k_in:>5}x{n_out:<5} K={k:<3} direct {row['direct_ms']:.4f} ms  "
                  f"lut {row['lut_ms']:.4f} ms  lut/direct {row['lut_over_direct']:.2f}  "
                  f"exact {row['exact']}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    result = {"cpu": host_cpu_name(), "mcpu": mcpu, "threads": args.threads,
              "tvm_version": TVM_VERSION, "batch": 1, "activations": "uint8",
              "rounds": args.rounds, "min_sample_ms": args.min_ms,
              "load_average": [round(v, 2) for v in os.getloadavg()], "results": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    if args.write_table is not None:
        path = Path(args.write_table) if args.write_table else gemv_select.table_path(mcpu)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = {"mcpu": mcpu, "cpu": result["cpu"], "threads": args.threads,
                 "source": "scripts/bench_lut_gemv.py",
                 "entries": gemv_select.table_entries(
                     [r for r in rows if all(r["exact"].values())])}
        path.write_text(json.dumps(table, indent=2) + "\n")
        print(f"selection table: {path}")
    return 0 if all(all(r["exact"].values()) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
