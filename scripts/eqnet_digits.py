"""EQ-Net on digits: one supernet vs individually trained LSQ, searched subnets vs uniform and
MCKP, predictor Kendall's tau, GA vs random search; every deployed row TVM-compiled.

For each model: train fp32 (zoo recipe) on 80% of the digits training split (20% held out as
the predictor's validation set); train the supernet (GPG + WDR, ``--epochs``); then

* uniform subnets W8A8/W4A4/W3A3/W2A2 of the supernet (per-channel weights, symmetric
  activations, BN recalibrated) vs the same presets trained individually with LSQ for the same
  epochs (``tq.fit``, same learning rate);
* the conditional predictor: ``--measure`` random subnets measured on the validation set, fit
  on 75%, Kendall's tau on the rest;
* GA search at the weight size of uniform W3A3 (3 bits in every layer but the first and last,
  which stay at 8 as in every preset: ~3.1 average bits; activations free, size does not price
  them) and at that size + the BOPs of uniform W3A3; uniform W3A8 and W3A3; the MCKP plan of
  ``tvmq.mixed`` at that size, A8 (first/last pinned at 8 bits like the supernet's space),
  both as a supernet subnet and QAT-trained with LSQ for the same epochs;
* GA vs random search at equal predictor evaluations (3 seeds), the two bests measured.

Each deployed row: ``Supernet.to_quantized`` (or LSQ convert) -> ``tq.export`` ->
``tvmq.compile`` -> the test set one image at a time: accuracy of the compiled model and the
SQNR of its logits against the fp32 model's (dB). The JSON is rewritten after every row; a rerun
with the same output skips what it holds (and reuses the saved fp32 model and supernet).

    python scripts/eqnet_digits.py -o out/eqnet_digits.json
    python scripts/eqnet_digits.py --models digits_cnn --epochs 5 --measure 40   # quick look
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

import tvmq.eqnet as eqnet
import tvmq.mixed as mixed
import tvmq.quant as tq
from tvmq import data, models
from tvmq.artifact import atomic_write
from tvmq.eqnet.workflow import fit_on_measured, split_validation
from tvmq.train import accuracy, predict, train

from qat_digits import tvm_logits

UNIFORM = [(8, 8), (4, 4), (3, 3), (2, 2)]
EPOCHS = {"digits_cnn": 30, "resnet20_digits": 6}
#: supernet and LSQ learning rate per model: on ResNet-20 lr 1e-2 wrecked the supernet (6 GPG
#: epochs: W8A8 90.9%, W4A4 74.7%); 2e-3 kept W8A8 at 97% after one epoch (docs/eqnet.md)
LR = {"digits_cnn": 1e-2, "resnet20_digits": 2e-3}


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """10 log10(|ref|^2 / |out - ref|^2) over all logits."""
    noise = float(((out - ref) ** 2).sum())
    return float("inf") if noise == 0 else float(10 * np.log10(float((ref ** 2).sum()) / noise))


def cpu_info(label: str) -> dict:
    """The CPU the numbers were measured on: /proc/cpuinfo's name, family/model, SIMD."""
    info = {"label": label, "threads_used": torch.get_num_threads()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    first = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    first = {k.strip(): v.strip() for k, v in first.items()}
    flags = set(first.get("flags", "").split())
    info.update(model_name=first.get("model name"), family=first.get("cpu family"),
                model=first.get("model"), logical_cpus=text.count("processor\t:"),
                avx2="avx2" in flags, avx512_vnni="avx512_vnni" in flags)
    return info


class Results:
    """Rows and sections on disk, rewritten (atomically) after each change."""

    def __init__(self, path: Path, config: dict):
        self.path = path
        old = json.loads(path.read_text()) if path.is_file() else {}
        self.rows: list[dict] = old.get("rows", [])
        self.sections: dict = old.get("sections", {})
        self.config = config

    def has(self, **key) -> dict | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.save()
        print(json.dumps({k: row.get(k) for k in ("model", "kind", "label", "acc_tvm",
                                                    "sqnr_db", "seconds")}), flush=True)

    def section(self, model: str, name: str, value) -> None:
        self.sections.setdefault(model, {})[name] = value
        self.save()

    def save(self) -> None:
        text = json.dumps({"config": self.config, "rows": self.rows, "sections": self.sections,
                           "summary": summarize(self.rows)}, indent=1, default=str).encode()
        atomic_write(self.path, lambda f: f.write(text))


def summarize(rows: list[dict]) -> list[dict]:
    keys = ("model", "kind", "label", "avg_bits", "bops", "acc_torch", "acc_tvm", "sqnr_db",
            "sqnr_vs_supernet_w8a8_db")
    return [{k: r.get(k) for k in keys} for r in rows]


def deploy(model, name: str, kind: str, label: str, ctx: dict, extra: dict) -> dict:
    """Export, compile with tvmq, run the test set; the row. The compiled model's logits are
    kept (``.npy`` in the work directory) for the SQNR against the supernet's own W8A8."""
    start = time.perf_counter()
    test = ctx["test"]
    with tempfile.TemporaryDirectory() as tmp:
        path = tq.export(model, torch.from_numpy(test.x[:1]), Path(tmp) / "m.onnx")
        logits = tvm_logits(path, test)
    torch_logits = predict(model, test.x)
    tag = f"{name}_{kind}_{label}".replace(" ", "").replace("(", "_").replace(")", "")
    np.save(ctx["workdir"] / f"{tag}.npy", logits)
    row = {"model": name, "kind": kind, "label": label,
           "acc_torch": accuracy(torch_logits, test.y),
           "acc_tvm": accuracy(logits, test.y), "sqnr_db": sqnr_db(ctx["fp32_logits"], logits),
           "sqnr_tvm_vs_torch_db": sqnr_db(torch_logits, logits),
           "acc_fp32": ctx["fp32_acc"], **extra}
    if kind != "lsq_individual" and kind != "mckp_qat" and "w8a8_logits" in ctx:
        row["sqnr_vs_supernet_w8a8_db"] = sqnr_db(ctx["w8a8_logits"], logits)
    row["seconds_compile_run"] = round(time.perf_counter() - start, 1)
    return row


def supernet_row(net, sub, name, kind, label, ctx, results: Results, extra=None) -> None:
    if results.has(model=name, kind=kind, label=label):
        return
    q = net.to_quantized(sub, calibration=ctx["train"])
    cost = ctx["costs"].summary(sub)
    results.add(deploy(q, name, kind, label, ctx, {**cost, "bits": sub.bits,
                                                   "subnet": sub.label(), **(extra or {})}))


def lsq_row(fp32, plan_or_preset, name, kind, label, ctx, args, results, bits=None) -> None:
    """The same epochs and learning rate as the supernet, one model per configuration."""
    if results.has(model=name, kind=kind, label=label):
        return
    start = time.perf_counter()
    model = copy.deepcopy(fp32)
    if isinstance(plan_or_preset, str):
        cfg = tq.QATConfig(tq.get_preset(plan_or_preset))
    else:
        cfg = tq.QATConfig(tq.get_preset("w8a8"), overrides=dict(plan_or_preset))
    tq.quantize_(model, cfg)
    loss_fn = None
    if args.kd:  # the same teacher as the supernet's largest subnet
        def loss_fn(m, x, y):
            with torch.no_grad():
                soft = fp32(x)
            return eqnet.distill_loss(m(x), soft, y)
    tq.fit(model, ctx["train"], epochs=ctx["epochs"], lr=ctx["lr"], seed=args.seed,
           progress=False, loss_fn=loss_fn)
    tq.quantize_(model, dataclasses.replace(cfg, step="convert"))
    seconds = round(time.perf_counter() - start, 1)
    extra = {"train_seconds": seconds}
    if bits is not None:
        sub = eqnet.Subnet(bits)
        extra.update(ctx["costs"].summary(sub), bits=bits)
    results.add(deploy(model, name, kind, label, ctx, extra))


def load_or_train_fp32(name, train_set, workdir: Path, seed: int):
    path = workdir / f"{name}_fp32_s{seed}.pt"
    model = models.create(name, seed=seed)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), None
    start = time.perf_counter()
    train(model, train_set, epochs=models.train_epochs(name), lr=models.train_lr(name),
          seed=seed, progress=False)
    torch.save(model.state_dict(), path)
    return model.eval(), round(time.perf_counter() - start, 1)


def load_or_train_supernet(fp32, name, ctx, args, workdir: Path, results: Results):
    kd = "_kd" if args.kd else ""
    path = workdir / f"{name}_supernet_s{args.seed}_e{ctx['epochs']}_lr{ctx['lr']:g}{kd}.pt"
    if path.is_file():
        return eqnet.Supernet.load(fp32, path)
    start = time.perf_counter()
    gpg = eqnet.GPGConfig(num_subnets=args.subnets, kurtosis_rate=args.wdr,
                          skewness_rate=args.wdr)
    net = eqnet.train(eqnet.Supernet(fp32, eqnet.ElasticSpace()), ctx["train"],
                      epochs=ctx["epochs"], lr=ctx["lr"], gpg=gpg, seed=args.seed, progress=True,
                      teacher=fp32 if args.kd else None)
    net.save(path, meta={"model": name, "epochs": ctx["epochs"]})
    results.section(name, "supernet_train_seconds", round(time.perf_counter() - start, 1))
    return net


def mckp_plan(fp32, ctx, args, layers, budget):
    """MCKP at ``budget`` (activations at 8 bits) with the first/last layers pinned at 8 bits
    (their lower choices priced out), the same constrained problem as the supernet's space."""
    sens = mixed.sensitivity(fp32, ctx["train"], act_bits=(8,), samples=args.samples,
                             max_iter=args.max_iter, seed=args.seed, progress=False)
    pinned = {layers[0], layers[-1]}
    view = dataclasses.replace(sens, layers=[
        dataclasses.replace(ly, omega_w={b: (v if b == 8 or ly.name not in pinned else 1e9)
                                         for b, v in ly.omega_w.items()})
        for ly in sens.layers])
    return mixed.allocate(view, budget)


def ga_vs_random(net, pred, budgets, ctx, seeds=(0, 1, 2), population=40, generations=15):
    out = []
    layers = net.layers
    for seed in seeds:
        ga = eqnet.evolution(net.space, layers, ctx["costs"], budgets, pred, population,
                             generations, seed=seed)
        rs = eqnet.random_search(net.space, layers, ctx["costs"], budgets, pred,
                                 ga.evaluations, seed=seed)
        measured = eqnet.measure(net, [ga.best, rs.best], ctx["val"], ctx["train"],
                                 progress=False)
        out.append({"seed": seed, "evaluations": ga.evaluations,
                     "ga_predicted": ga.score, "random_predicted": rs.score,
                     "ga_val_acc": measured[0], "random_val_acc": measured[1],
                     "ga_subnet": ga.best.label(), "random_subnet": rs.best.label()})
    return out


def run_model(name: str, args, results: Results, workdir: Path) -> None:
    torch.manual_seed(args.seed)
    full, test = data.digits(size=models.input_shape(name)[-1])
    train_set, val = split_validation(full, 0.2, seed=args.seed)
    fp32, secs = load_or_train_fp32(name, train_set, workdir, args.seed)
    if secs is not None:
        results.section(name, "fp32_train_seconds", secs)
    fp32_logits = predict(fp32, test.x)
    epochs = args.epochs or EPOCHS[name]
    ctx = {"train": train_set, "val": val, "test": test, "fp32_logits": fp32_logits,
           "fp32_acc": accuracy(fp32_logits, test.y), "epochs": epochs,
           "lr": args.lr or LR[name]}
    results.section(name, "fp32_acc", ctx["fp32_acc"])
    results.section(name, "epochs", epochs)
    results.section(name, "lr", ctx["lr"])
    net = load_or_train_supernet(fp32, name, ctx, args, workdir, results)
    ctx["costs"] = eqnet.layer_costs(net.model, torch.from_numpy(test.x[:1]), net.layers)
    ctx["workdir"] = workdir
    for w, a in UNIFORM:
        supernet_row(net, net.uniform(w, a), name, "supernet_uniform", f"W{w}A{a}", ctx, results)
        if (w, a) == (8, 8):
            ctx["w8a8_logits"] = np.load(workdir / f"{name}_supernet_uniform_W8A8.npy")
        lsq_row(fp32, f"w{w}a{a}", name, "lsq_individual", f"W{w}A{a}", ctx, args, results,
                bits=net.uniform(w, a).bits)
    predictor_part(net, name, ctx, args, results, workdir)
    search_part(net, fp32, name, ctx, args, results)


def predictor_part(net, name, ctx, args, results: Results, workdir: Path):
    if "predictor" in results.sections.get(name, {}) and name in PREDICTORS:
        return
    start = time.perf_counter()
    pred, report = fit_on_measured(net, ctx["train"], ctx["val"], args.measure, seed=args.seed,
                                   progress=True)
    PREDICTORS[name] = pred
    accs = report["accuracies"]
    results.section(name, "predictor", {
        "kind": pred.kind, "tau_heldout": report["tau"], "n_fit": report["n_fit"],
        "n_heldout": len(accs) - report["n_fit"], "val_size": len(ctx["val"]),
        "measured_range": [min(accs), max(accs)], "distinct_accuracies": len(set(accs)),
        "seconds": round(time.perf_counter() - start, 1),
        "heldout": [{"subnet": s.label(), "measured": m, "predicted": p} for s, m, p in zip(
            report["subnets"][report["n_fit"]:], report["measured"], report["predicted"])]})
    REPORTS[name] = report


PREDICTORS: dict = {}
REPORTS: dict = {}


def search_part(net, fp32, name, ctx, args, results: Results):
    pred = PREDICTORS[name]
    example = torch.from_numpy(ctx["test"].x[:1])
    w3a3 = ctx["costs"].summary(net.uniform(3, 3))
    size = mixed.SizeBudget(avg_bits=w3a3["avg_bits"])
    budgets = {"size(W3A3)": [size],
               "size(W3A3) + BOPs(W3A3)": [size, mixed.BopsBudget(bops=w3a3["bops"])]}
    for label, budget in budgets.items():
        plan = eqnet.search(net, pred, budget, example, args.population, args.generations,
                            seed=args.seed, progress=False)
        supernet_row(net, plan.subnet, name, "eqnet_search", label, ctx, results,
                     {"predicted_acc": plan.predicted["accuracy"],
                      "evaluations": plan.predicted["evaluations"]})
        if label == "size(W3A3)" and args.plot:
            from tvmq.eqnet.plot import plot_search

            plot_search(plan.search, REPORTS[name], Path(args.output).with_name(
                f"{Path(args.output).stem}_{name}_search.png"), budget=label)
        key = f"ga_vs_random {label}"
        if key not in results.sections.get(name, {}):
            results.section(name, key, ga_vs_random(net, pred, budget, ctx,
                                                    population=args.population,
                                                    generations=args.generations))
    supernet_row(net, net.uniform(3, 8), name, "supernet_uniform", "W3A8", ctx, results)
    if not results.has(model=name, kind="mckp_qat", label="size(W3A3)"):
        plan = mckp_plan(fp32, ctx, args, net.layers, size)
        sub = eqnet.Subnet(dict(plan.bits))
        supernet_row(net, sub, name, "mckp_supernet", "size(W3A3)", ctx, results,
                     {"predicted_acc": pred(sub)})
        lsq_row(fp32, plan, name, "mckp_qat", "size(W3A3)", ctx, args, results,
                bits=dict(plan.bits))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="out/eqnet_digits.json")
    ap.add_argument("--models", nargs="+", default=["digits_cnn", "resnet20_digits"])
    ap.add_argument("--epochs", type=int, default=None,
                    help=f"supernet and LSQ epochs (default per model: {EPOCHS})")
    ap.add_argument("--lr", type=float, default=None,
                    help=f"supernet and LSQ learning rate (default per model: {LR})")
    ap.add_argument("--subnets", type=int, default=4, help="subnets per GPG step")
    ap.add_argument("--wdr", type=float, default=0.01)
    ap.add_argument("--measure", type=int, default=160, help="subnets measured (predictor)")
    ap.add_argument("--population", type=int, default=40)
    ap.add_argument("--generations", type=int, default=15)
    ap.add_argument("--samples", type=int, default=128, help="Hessian samples (MCKP)")
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", action="store_true", help="search plot PNG next to the JSON")
    ap.add_argument("--kd", action="store_true",
                    help="distill the supernet's largest subnet and every LSQ/MCKP baseline "
                         "from the fp32 model (default: labels only, as the reference)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", default="AMD EPYC Zen 3, AVX2, 2 cores",
                    help="how to name the CPU in the JSON (with /proc/cpuinfo's fields)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    workdir = out.parent / "eqnet_digits_work"
    workdir.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items()}
    config["cpu"] = cpu_info(args.cpu)
    config["command"] = "python scripts/eqnet_digits.py " + " ".join(argv or [])
    results = Results(out, config)
    for name in args.models:
        run_model(name, args, results, workdir)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
