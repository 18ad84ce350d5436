"""What ``tvmq eqnet train|search|export`` run, as library calls on zoo models and checkpoints.

A checkpoint (:meth:`Supernet.save`) records the zoo model's name, so ``search`` and
``export`` rebuild the architecture from the zoo and load the trained state into it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tvmq.eqnet.predictor import AccuracyPredictor, fit_predictor, measure, sample_subnets
from tvmq.eqnet.search import search
from tvmq.eqnet.space import ElasticSpace
from tvmq.eqnet.supernet import Supernet, subnet_from_plan
from tvmq.eqnet.train import GPGConfig, train
from tvmq.errors import ConfigError


def split_validation(data, fraction: float = 0.2, seed: int = 0):
    """``(train, val)``: a fixed random ``fraction`` of ``data`` held out to measure subnets
    (the predictor is never fitted on the test set)."""
    from tvmq.data import Dataset

    idx = np.random.default_rng(seed).permutation(len(data))
    n_val = max(1, int(fraction * len(data)))
    pick = lambda i: Dataset(data.x[i], data.y[i], data.classes)  # noqa: E731
    return pick(idx[n_val:]), pick(idx[:n_val])


def train_zoo(model_name: str, train_set, space: ElasticSpace, output, fp32_epochs: int = 30,
              epochs: int = 10, lr: float = 1e-2, gpg: GPGConfig = GPGConfig(), seed: int = 0,
              progress: bool = True) -> Path:
    """Train the zoo model in float, then its supernet; write the checkpoint at ``output``
    (under torchrun: the ranks train together, rank 0 writes)."""
    from tvmq import distributed as dist
    from tvmq import models
    from tvmq.train import train as train_fp32

    fp32 = train_fp32(models.create(model_name, seed=seed), train_set, epochs=fp32_epochs,
                      lr=models.train_lr(model_name), seed=seed, progress=progress)
    net = train(Supernet(fp32, space), train_set, epochs=epochs, lr=lr, gpg=gpg, seed=seed,
                progress=progress)
    if not dist.is_main():
        return Path(output)
    return net.save(output, meta={"model": model_name, "epochs": epochs,
                                  "fp32_epochs": fp32_epochs, "seed": seed})


def load_zoo(checkpoint) -> tuple[Supernet, str]:
    """The supernet of a checkpoint written by :func:`train_zoo`, and its zoo model name."""
    from tvmq import models

    name = Supernet.read_meta(checkpoint).get("model")
    if not name:
        raise ConfigError(f"{checkpoint} records no zoo model",
                          "use Supernet.load(model, path) from Python with your own model")
    return Supernet.load(models.create(name), checkpoint), name


def fit_on_measured(net: Supernet, train_set, val_set, samples: int = 120,
                    holdout: float = 0.25, kind: str = "xgboost", seed: int = 0,
                    progress: bool = True, **cond) -> tuple[AccuracyPredictor, dict[str, Any]]:
    """Measure ``samples`` random subnets on ``val_set`` (BN recalibrated on ``train_set``),
    fit the predictor on all but ``holdout`` of them; returns it and
    ``{"tau": Kendall's tau on the held-out ones, "subnets", "accuracies", "n_fit",
    "predicted" / "measured": the held-out ones'}``."""
    subs = sample_subnets(net, samples, seed=seed, **cond)
    accs = measure(net, subs, val_set, train_set, progress=progress)
    n_fit = max(4, int(round(len(subs) * (1 - holdout))))
    held = subs[n_fit:]
    pred = fit_predictor(net, subs[:n_fit], accs[:n_fit], kind=kind, seed=seed)
    tau = pred.kendall_tau(held, accs[n_fit:]) if len(held) >= 2 else float("nan")
    report = {"tau": tau, "subnets": subs, "accuracies": accs, "n_fit": n_fit,
              "predicted": pred.predict(held).tolist() if held else [],
              "measured": accs[n_fit:]}
    pred = fit_predictor(net, subs, accs, kind=kind, seed=seed)  # refit on all for the search
    return pred, report


def search_checkpoint(checkpoint, data: tuple, budget, output, samples: int = 120,
                      population: int = 40, generations: int = 15, seed: int = 0,
                      plot=None, progress: bool = True, **cond) -> tuple[Any, dict]:
    """Fit the predictor on measured subnets, search under ``budget``, write the plan JSON
    (and a plot); returns the plan and the predictor report."""
    import tvmq.quant as tq

    net, _ = load_zoo(checkpoint)
    train_part, val_set = split_validation(data[0], seed=seed)
    pred, report = fit_on_measured(net, train_part, val_set, samples, seed=seed,
                                   progress=progress, **cond)
    example = torch.from_numpy(data[0].x[:1])
    plan = search(net, pred, budget, example, population, generations, seed=seed,
                  progress=progress, **cond)
    tq.save_plan(plan, output)
    if plot:
        from tvmq.eqnet.plot import plot_search

        plot_search(plan.search, report, plot, budget=plan.predicted["budget"])
    return plan, report


def export_checkpoint(checkpoint, plan_path, train_set, output) -> Path:
    """Export the subnet a plan names (BN recalibrated on ``train_set``) as a QDQ ONNX model
    that ``tvmq.compile`` takes."""
    import tvmq.quant as tq

    net, _ = load_zoo(checkpoint)
    sub = net.space.check(subnet_from_plan(tq.load_plan(plan_path)), net.layers)
    model = net.to_quantized(sub, calibration=train_set)
    return Path(tq.export(model, torch.from_numpy(train_set.x[:1]), output))


def describe(plan, report: dict) -> str:
    """The searched plan and the predictor's quality, as lines for the terminal."""
    lines = [f"{name:24s} W{w}A{a}" for name, (w, a) in plan.bits.items()]
    p = plan.predicted
    lines.append(f"predicted accuracy {p['accuracy']:.2f}%  avg weight bits {p['avg_bits']:.3f}  "
                 f"BOPs {p['bops']:.4g}  ({p['evaluations']} evaluations, {p['budget']})")
    lines.append(f"predictor: Kendall tau {report['tau']:.3f} on "
                 f"{len(report['subnets']) - report['n_fit']} held-out subnets")
    return "\n".join(lines)


def subnet_json(plan) -> str:
    return json.dumps(plan.subnet.to_json(), indent=1)
