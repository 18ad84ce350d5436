"""Mixed precision on digits: MCKP bit allocation vs uniform vs random, TVM-compiled.

For each model and seed: train fp32 (zoo recipe), estimate the Hessian sensitivity
(``tvmq.mixed.sensitivity``), and at each budget QAT (same recipe for every allocation) the
MCKP plan, the uniform plan of that cost (or the nearest below), and ``--randoms`` random
plans that spend the same budget; each is exported, compiled by tvmq and run here. Rows:
accuracy of the compiled model (``acc_tvm``) and of PyTorch fake-quant, SQNR of the compiled
model's logits against the fp32 model's (dB, test set), the artifact's weight bytes against
the plan's prediction, and the compiled model's measured latency on this host. Then, for
``--latency-model`` (seed 0): a per-layer latency table, a latency-budget plan (predicted vs
measured latency) and the size-budget plan of equal predicted latency.

The JSON is rewritten after every row; a rerun with the same output skips rows it holds.

    python scripts/mixed_digits.py -o out/mixed_digits.json
    python scripts/mixed_digits.py --models digits_cnn --seeds 0 --randoms 2   # quick look
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import tvmq
import tvmq.mixed as mixed
import tvmq.quant as tq
from tvmq import data, device, models
from tvmq.artifact import atomic_write
from tvmq.mixed import knapsack
from tvmq.mixed.allocate import _groups
from tvmq.train import accuracy, predict, train

from qat_digits import ort_accuracy

#: budget name -> (budget, activation choices, uniform plan of equal or next lower cost)
BUDGETS = {"avg_bits=3 A8": (mixed.SizeBudget(avg_bits=3), (8,), (3, 8)),
           "avg_bits=2.5 A8": (mixed.SizeBudget(avg_bits=2.5), (8,), (2, 8)),
           "bops=W4A4": (mixed.BopsBudget(uniform=(4, 4)), (4, 6, 8), (4, 4))}
QAT_EPOCHS = {"digits_cnn": 15, "resnet20_digits": 1}  # ResNet-20: ~45 s an epoch here


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """10 log10(|ref|^2 / |out - ref|^2) over all logits."""
    noise = float(((out - ref) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref ** 2).sum()) / noise)


def qat(fp32, plan, train_set, args, seed: int):
    """The one QAT recipe every allocation gets (base w8a8: LSQ; the plan sets every layer)."""
    model, base = copy.deepcopy(fp32), tq.get_preset("w8a8")
    tq.quantize_(model, tq.QATConfig(base, overrides=dict(plan),
                                     freeze_bn_after=args.freeze_bn_after))
    tq.fit(model, train_set, epochs=args.epochs_of(fp32.tvmq_name), lr=args.lr, seed=seed,
           progress=False)
    return tq.quantize_(model, tq.QATConfig(base, step="convert", overrides=dict(plan)))


def compile_and_run(model, test, workdir: Path, tag: str):
    """Export, compile with tvmq, run the test set one image at a time; artifact dir + logits."""
    path = tq.export(model, torch.from_numpy(test.x[:1]), workdir / f"{tag}.onnx")
    art = tvmq.compile(path, input_shapes={"input": (1, *test.x.shape[1:])})
    logits = np.concatenate([art.run(test.x[i:i + 1])[0] for i in range(len(test.x))])
    return art.save(workdir / tag), path, logits


def bench_ms(art_dirs: list[Path], rounds: int = 3) -> list[float]:
    """Latency of each artifact: timed alternately in ``rounds`` rounds, each a median; the
    fastest round (as the latency table keeps: other processes only add time)."""
    samples: dict[Path, list[float]] = {p: [] for p in art_dirs}
    with device.connect("local") as board:
        for _ in range(rounds):
            for p in art_dirs:
                samples[p].append(board.bench(p, number=20, repeat=5, check=False).median_ms)
    return [min(samples[p]) for p in art_dirs]


def evaluate(fp32, plan, kind, budget, index, ctx, workdir: Path) -> dict:
    start = time.perf_counter()
    model = qat(fp32, plan, ctx["train"], ctx["args"], ctx["seed"])
    # a fresh directory per row: the process keeps a loaded lib.so by its path, so benching
    # a new artifact saved over an old one's path would time the old one
    tag = f"{fp32.tvmq_name}_s{ctx['seed']}_{budget}_{kind}{index}"
    tag = tag.replace(" ", "_").replace("=", "")
    art_dir, onnx_path, logits = compile_and_run(model, ctx["test"], workdir, tag)
    meta = tvmq.load(art_dir).meta
    stored = sum(ly["weight_bytes"] for ly in meta["layers"])
    test = ctx["test"]
    row = {"model": fp32.tvmq_name, "seed": ctx["seed"], "budget": budget, "kind": kind,
           "index": index, "label": plan.label(), "bits": plan.bits,
           "predicted": plan.predicted,
           "acc_torch": accuracy(predict(model, test.x), test.y),
           "acc_onnxruntime": ort_accuracy(onnx_path, test),
           "acc_tvm": accuracy(logits, test.y), "sqnr_db": sqnr_db(ctx["fp32_logits"], logits),
           "weight_bytes": stored,
           "size_error": stored / plan.predicted["size_bytes"] - 1,
           "compiled_bits": {ly["name"]: [ly["weight_bits"], ly["act_bits"]]
                             for ly in meta["layers"]},
           "latency_ms": bench_ms([art_dir])[0]}
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row, art_dir


class Results:
    """Rows on disk, rewritten (atomically) after each one; rows already there are skipped."""

    def __init__(self, path: Path, config: dict):
        self.path, self.config = path, config
        old = json.loads(path.read_text()) if path.is_file() else {}
        self.rows = old.get("rows", [])
        self.extra = old.get("latency", {})

    def has(self, **key) -> dict | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.save()
        print(json.dumps({k: row.get(k) for k in ("model", "seed", "budget", "kind", "index",
                                                    "label", "acc_tvm", "sqnr_db", "size_error",
                                                    "latency_ms", "seconds")}), flush=True)

    def save(self) -> None:
        text = json.dumps({"config": self.config, "rows": self.rows, "latency": self.extra,
                           "summary": summarize(self.rows)}, indent=1, default=str).encode()
        atomic_write(self.path, lambda f: f.write(text))


def plans_for(sens, budget_name: str, randoms: int):
    budget, acts, (uw, ua) = BUDGETS[budget_name]
    view = dataclasses.replace(sens, act_bits=acts)
    yield "mckp", 0, mixed.allocate(view, budget)
    yield "uniform", 0, mixed.uniform_plan(view, uw, ua)
    for i in range(randoms):
        yield "random", i, mixed.random_plan(view, budget, seed=1000 + i)


def run_seed(name: str, seed: int, args, results: Results, workdir: Path):
    train_set, test_set = data.digits(size=models.input_shape(name)[-1])
    fp32 = train(models.create(name, seed=seed), train_set, epochs=models.train_epochs(name),
                 lr=models.train_lr(name), seed=seed, progress=False)
    fp32.tvmq_name = name
    sens = mixed.sensitivity(fp32, train_set, samples=args.samples, max_iter=args.max_iter,
                             seed=seed, progress=False)
    ctx = {"train": train_set, "test": test_set, "args": args, "seed": seed,
           "fp32_logits": predict(fp32, test_set.x)}
    fp32_acc = accuracy(ctx["fp32_logits"], test_set.y)
    for budget_name in args.budgets:
        for kind, index, plan in plans_for(sens, budget_name, args.randoms):
            if results.has(model=name, seed=seed, budget=budget_name, kind=kind, index=index):
                continue
            row, _ = evaluate(fp32, plan, kind, budget_name, index, ctx, workdir)
            row["acc_fp32"] = fp32_acc
            results.add(row)
    return fp32, sens, ctx


def equal_latency_size_plan(sens, table, target_ms: float):
    """The size-budget plan whose predicted latency is closest to ``target_ms`` (from below
    when one exists), scanning mean weight bits."""
    view = dataclasses.replace(sens, act_bits=(8,))
    best = None
    for avg in np.arange(min(view.weight_bits), max(view.weight_bits) + 1e-9, 0.05):
        plan = mixed.allocate(view, mixed.SizeBudget(avg_bits=float(avg)))
        ms = table.predict(plan.bits)
        key = (ms > target_ms, abs(ms - target_ms))
        if best is None or key < best[0]:
            plan.predicted["latency_ms"] = ms
            best = (key, plan)
    return best[1]


def latency_part(name: str, fp32, sens, ctx, args, results: Results, workdir: Path):
    """Latency budget at the middle of the feasible range: predicted vs measured latency,
    and accuracy against the size-budget plan of equal predicted latency."""
    cache = Path(args.output).with_name(f"latency_{name}.json")
    table = mixed.latency_table(fp32, ctx["train"], name, weight_bits=sens.weight_bits,
                                act_bits=(8,), cache=cache, progress=False)
    view = dataclasses.replace(sens, act_bits=(8,))
    probe = mixed.LatencyBudget(ms=1.0, table=table)
    lo, hi = knapsack.cost_range(_groups(view, probe)[0])
    budget = mixed.LatencyBudget(ms=table.overhead_ms + lo + args.latency_fraction * (hi - lo),
                                 table=table)
    lat_plan = mixed.allocate(view, budget)
    size_plan = equal_latency_size_plan(sens, table, lat_plan.predicted["latency_ms"])
    rows, dirs = [], []
    for kind, plan in (("latency_mckp", lat_plan), ("size_at_equal_latency", size_plan)):
        if results.has(model=name, seed=0, budget="latency", kind=kind) is None:
            row, art_dir = evaluate(fp32, plan, kind, "latency", 0, ctx, workdir)
            rows.append(row)
            dirs.append(art_dir)
    # timed alternately (the host is noisy), then filed
    for row, ms in zip(rows, bench_ms(dirs, rounds=args.latency_rounds) if dirs else []):
        row["latency_ms"] = ms
        row["latency_error"] = ms / row["predicted"]["latency_ms"] - 1
        results.add(row)
    results.extra = {"model": name, "budget_ms": budget.ms, "range_ms": [lo + table.overhead_ms,
                     hi + table.overhead_ms], "table": dataclasses.asdict(table)}
    results.save()


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def summarize(rows: list[dict]) -> list[dict]:
    """Mean over seeds (and over the random plans) per model, budget and kind."""
    out = []
    keys = sorted({(r["model"], r["budget"], r["kind"]) for r in rows})
    for model, budget, kind in keys:
        mine = [r for r in rows if (r["model"], r["budget"], r["kind"]) == (model, budget, kind)]
        out.append({"model": model, "budget": budget, "kind": kind, "n": len(mine),
                    "seeds": sorted({r["seed"] for r in mine}),
                    "acc_tvm": _mean([r["acc_tvm"] for r in mine]),
                    "acc_torch": _mean([r["acc_torch"] for r in mine]),
                    "sqnr_db": _mean([r["sqnr_db"] for r in mine]),
                    "avg_bits": _mean([r["predicted"]["avg_bits"] for r in mine]),
                    "bops": _mean([r["predicted"]["bops"] for r in mine]),
                    "max_abs_size_error": max(abs(r["size_error"]) for r in mine),
                    "latency_ms": _mean([r.get("latency_ms") for r in mine])})
    return out


def plot(results: Results, out: Path) -> None:
    for model in sorted({r["model"] for r in results.rows}):
        points = [{**r, "size_bytes": r["weight_bytes"]} for r in results.rows
                  if r["model"] == model and r["seed"] == 0]
        for key, label in (("acc_tvm", "accuracy of the compiled model (%)"),
                           ("sqnr_db", "SQNR of compiled logits vs fp32 (dB)")):
            mixed.plot_pareto(points, out.with_name(f"{out.stem}_{model}_{key}.png"),
                              quality=key, quality_label=label, title=f"{model}, seed 0")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="out/mixed_digits.json")
    ap.add_argument("--models", nargs="+", default=["digits_cnn", "resnet20_digits"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--randoms", type=int, default=5)
    ap.add_argument("--qat-epochs", type=int, default=None,
                    help=f"QAT epochs for every model (default per model: {QAT_EPOCHS})")
    ap.add_argument("--lr", type=float, default=5e-3, help="QAT learning rate")
    ap.add_argument("--freeze-bn-after", type=int, default=10)
    ap.add_argument("--samples", type=int, default=128, help="Hessian samples")
    ap.add_argument("--max-iter", type=int, default=30, help="Hutchinson samples at most")
    ap.add_argument("--latency-model", default="resnet20_digits",
                    help="model of the latency-budget part ('none' skips it)")
    ap.add_argument("--latency-fraction", type=float, default=0.5,
                    help="latency budget: this far from the fastest to the slowest plan")
    ap.add_argument("--latency-rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on 2 shared cores a second one slowed QAT 4x)")
    args = ap.parse_args(argv)
    args.epochs_of = lambda name: args.qat_epochs or QAT_EPOCHS.get(name, 15)
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    config = {k: v for k, v in vars(args).items() if k != "epochs_of"}
    config.update(qat_epochs={m: args.epochs_of(m) for m in args.models},
                  tvm=tvmq._tvm.TVM_VERSION if hasattr(tvmq, "_tvm") else None)
    results = Results(out, config)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for seed in args.seeds:
                fp32, sens, ctx = run_seed(name, seed, args, results, Path(tmp))
                if name == args.latency_model and seed == args.seeds[0]:
                    latency_part(name, fp32, sens, ctx, args, results, Path(tmp))
    results.save()
    plot(results, out)
    for s in summarize(results.rows):
        print(f"{s['model']:16s} {s['budget']:16s} {s['kind']:22s} n={s['n']:2d} "
              f"tvm {s['acc_tvm']:6.2f}  sqnr {s['sqnr_db']:6.2f} dB  "
              f"bits {s['avg_bits']:.2f}  size err {s['max_abs_size_error']:.2%}")


if __name__ == "__main__":
    main()
