"""Tuned vs default schedules on the zoo's int8 models, and a tuning curve (issue: tuning).

For each model: onnxruntime ``quantize_static`` QDQ graph -> ``tvmq.compile`` twice, with the
board's shipped database (``tvmq/schedules/<board>/``, or ``--db``) and without it
(default schedules); outputs must be identical; both timed alternately in the same process
(batch 1, 2 threads, each sample at least 20 ms of calls). ``speedup`` is the median of the
per-round ratios default / tuned (paired samples), with the share of rounds in which the
tuned build was faster, and a 95% bootstrap interval of that median (rounds resampled).
``--control`` also times the default build against a second, separately compiled default
build the same way: the identical-code ratio shows how far apart two equal builds measure
(the noise band a speedup must clear). Writes JSON and a plot.

    python scripts/bench_tuned.py --models resnet18 mobilenet_v2 -o out/bench_tuned.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

import tvmq
from tvmq.device.paired import paired_ms
from tvmq.onnx_tools import export_float, ort_quantize_static


def median_ci(ratios, level: float = 0.95, n_boot: int = 2000, seed: int = 0):
    """``(low, high)``: bootstrap percentile interval of the median of ``ratios``."""
    r = np.asarray(ratios, np.float64)
    rng = np.random.default_rng(seed)
    meds = np.median(r[rng.integers(0, len(r), (n_boot, len(r)))], axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(meds, tail)), float(np.percentile(meds, 100 - tail))


def _paired_ratio(run_a, run_b, rounds: int) -> dict:
    a_ms, b_ms = paired_ms(run_a, run_b, rounds, min_inner=5)
    ratios = [a / b for a, b in zip(a_ms, b_ms)]
    return {"ms": (statistics.median(a_ms), statistics.median(b_ms)),
            "median": statistics.median(ratios), "ci95": median_ci(ratios),
            "rounds_b_faster": sum(r > 1 for r in ratios) / len(ratios)}


def bench(name: str, board: str, db: str | None, rounds: int, tmp: Path,
          control: bool = False) -> dict:
    shape = tvmq.models.input_shape(name)
    fp32 = export_float(tvmq.models.create(name), shape, tmp / f"{name}.onnx")
    qdq = ort_quantize_static(fp32, tmp / f"{name}.qdq.onnx")
    default = tvmq.compile(qdq, board=board,
                           options=tvmq.PipelineOptions(use_shipped_database=False))
    tuned = tvmq.compile(qdq, board=board, options=tvmq.PipelineOptions(database=db))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    same = all(np.array_equal(a, b) for a, b in zip(default.run(x), tuned.run(x)))
    # paired: each round's two samples ran back to back (order alternating, >= 20 ms each),
    # so their ratio cancels the machine's drift; both builds share one TVM thread pool
    pair = _paired_ratio(lambda: default.run(x), lambda: tuned.run(x), rounds)
    times = {"default": pair["ms"][0], "tuned": pair["ms"][1]}
    row = {"model": name, "latency_ms": times, "speedup": pair["median"],
           "speedup_ci95": pair["ci95"], "speedup_of_medians": times["default"] / times["tuned"],
           "rounds_tuned_faster": pair["rounds_b_faster"],
           "outputs_identical": same, "tuned_funcs": tuned.meta["schedules"]["tuned_funcs"],
           "database": tuned.meta["schedules"]["database"]}
    if control:  # identical code, compiled again: the ratio two equal builds measure
        default2 = tvmq.compile(qdq, board=board,
                                options=tvmq.PipelineOptions(use_shipped_database=False))
        ctl = _paired_ratio(lambda: default.run(x), lambda: default2.run(x), rounds)
        row["control"] = {"ratio": ctl["median"], "ci95": ctl["ci95"]}
    return row


def _plot(rows, curve, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    names = [r["model"] for r in rows]
    x = np.arange(len(rows))

    def _bars(pairs, offset, label):  # pairs: (median ratio, (ci low, ci high)) per model
        vals = np.array([v for v, _ in pairs])
        err = np.abs(np.array([[ci[0] for _, ci in pairs], [ci[1] for _, ci in pairs]]) - vals)
        axes[0].bar(x + offset, vals, 0.4, yerr=err, capsize=3, label=label)

    _bars([(r["speedup"], r["speedup_ci95"]) for r in rows], 0.0, "default / tuned")
    if all("control" in r for r in rows):
        _bars([(r["control"]["ratio"], r["control"]["ci95"]) for r in rows], 0.4,
              "control: default / default")
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_xticks(x + 0.2, names, rotation=30, ha="right")
    axes[0].set_ylabel("paired speedup (median, 95% CI)")
    lo = min(min(r["speedup_ci95"][0] for r in rows), 0.95)
    axes[0].set_ylim(lo - 0.02, None)
    axes[0].legend()
    if curve:
        axes[1].plot([c[0] for c in curve], [c[1] / 1e3 for c in curve])
        axes[1].set_xlabel("trials")
        axes[1].set_ylabel("estimated model latency (ms)")
        axes[1].set_title("tuning curve")
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet18", "mobilenet_v2"])
    ap.add_argument("--board", default="host")
    ap.add_argument("--db", help="database directory (default: the board's shipped one)")
    ap.add_argument("--curve", help="tune_report.json with the tuning curve to plot")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--control", action="store_true",
                    help="also time two separately compiled default builds (noise band)")
    ap.add_argument("-o", "--output", default="out/bench_tuned.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(m, args.board, args.db, args.rounds, Path(tmp), args.control)
                for m in args.models]
    curve = json.loads(Path(args.curve).read_text())["curve"] if args.curve else []
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"board": args.board, "rows": rows, "curve": curve}, indent=2))
    _plot(rows, curve, out.with_suffix(".png"))
    for r in rows:
        lo, hi = r["speedup_ci95"]
        ctl = r.get("control")
        ctl_txt = (f"  control x{ctl['ratio']:.3f} [{ctl['ci95'][0]:.3f}, {ctl['ci95'][1]:.3f}]"
                   if ctl else "")
        print(f"{r['model']:<14} default {r['latency_ms']['default']:8.3f} ms  tuned "
              f"{r['latency_ms']['tuned']:8.3f} ms  x{r['speedup']:.3f} [{lo:.3f}, {hi:.3f}] "
              f"(paired; tuned faster in {r['rounds_tuned_faster']:.0%} of rounds){ctl_txt}  "
              f"identical={r['outputs_identical']}  tuned kernels={len(r['tuned_funcs'])}")


if __name__ == "__main__":
    main()
