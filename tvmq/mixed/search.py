"""What ``tvmq search-bits`` runs, as library calls: budgets from numbers, a sweep of budgets
for the Pareto plot, a quick PTQ accuracy of a plan, and the plan printed as a table."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import numpy as np

from tvmq.errors import ConfigError
from tvmq.mixed import knapsack
from tvmq.mixed.allocate import _groups, allocate, uniform_plan
from tvmq.mixed.budgets import Budget, BopsBudget, LatencyBudget, SizeBudget
from tvmq.mixed.plans import MixedPlan
from tvmq.mixed.sensitivity import Sensitivity


def parse_bops(text: str) -> BopsBudget:
    """``--bops``: a number (``3.2e9``) or a uniform model's (``w4a4``)."""
    t = text.strip().lower()
    if t.startswith("w") and "a" in t:
        w, _, a = t[1:].partition("a")
        if w.isdigit() and a.isdigit():
            return BopsBudget(uniform=(int(w), int(a)))
    try:
        return BopsBudget(bops=float(t))
    except ValueError:
        raise ConfigError(f"--bops {text!r} is neither a number nor WxAy",
                          "write --bops 3.2e9 or --bops w4a4 (the BOPs of uniform W4A4)") from None


def with_limit(budget: Budget, sens: Sensitivity, limit: float) -> Budget:
    """A budget of the same kind whose capacity is ``limit`` (knapsack units)."""
    if isinstance(budget, SizeBudget):
        return SizeBudget(avg_bits=limit / sum(ly.weights for ly in sens.layers))
    if isinstance(budget, BopsBudget):
        return BopsBudget(bops=limit)
    if isinstance(budget, LatencyBudget):
        return dataclasses.replace(budget, ms=limit + budget.table.overhead_ms)
    raise ConfigError(f"cannot sweep {type(budget).__name__}", "use a tvmq.mixed budget")


def sweep(sens: Sensitivity, budget: Budget, points: int = 6, solver: str = "greedy"
          ) -> list[MixedPlan]:
    """Plans at ``points`` budgets of ``budget``'s kind spread over the feasible range
    (cheapest to dearest), plus ``budget``'s own; duplicates removed."""
    groups = _groups(sens, budget)[0]
    lo, hi = knapsack.cost_range(groups)
    limits = sorted(set(np.linspace(lo, hi, max(points, 2)).tolist() + [budget.limit(sens)]))
    plans, seen = [], set()
    for limit in limits:
        plan = allocate(sens, with_limit(budget, sens, min(max(limit, lo), hi)), solver)
        key = tuple(sorted(plan.bits.items()))
        if key not in seen:
            seen.add(key)
            plans.append(plan)
    return plans


def ptq_accuracy(model, plan: MixedPlan, calibration, test, max_batches: int = 4) -> float:
    """Accuracy (%) of ``model`` quantized by PTQ with ``plan`` (PyTorch fake-quant): a
    quick ranking of plans; QAT and the compiled model are what results report."""
    import torch

    import tvmq.quant as tq
    from tvmq.train import accuracy, predict

    base = next(iter(plan.values()))
    q = copy.deepcopy(model).eval()
    with torch.no_grad():
        tq.quantize_(q, tq.PTQConfig(base, calibration=calibration, overrides=dict(plan),
                                     max_batches=max_batches, progress=False))
    return accuracy(predict(q, test.x), test.y)


def pareto_points(model, sens: Sensitivity, plans: Sequence[MixedPlan], calibration, test,
                  table=None, progress: bool = True) -> list[dict[str, Any]]:
    """PTQ accuracy, predicted size (and latency) of ``plans`` and of the uniform plans."""
    from tqdm.auto import tqdm

    every = [("mckp", p) for p in plans]
    every += [("uniform", uniform_plan(sens, w, max(sens.act_bits), table))
              for w in sens.weight_bits]
    out = []
    for kind, plan in tqdm(every, desc="pareto (PTQ)", disable=not progress, leave=False):
        out.append({"kind": kind, "label": plan.label(), "bits": plan.bits,
                    "size_bytes": plan.predicted["size_bytes"],
                    "latency_ms": plan.predicted.get("latency_ms"),
                    "bops": plan.predicted["bops"],
                    "accuracy": ptq_accuracy(model, plan, calibration, test)})
    return out


def format_plan(plan: MixedPlan, sens: Sensitivity, table=None) -> str:
    """The plan as a table: layer, bits, weights, MACs, Omega (and ms from ``table``)."""
    head = f"{'layer':<28}{'W':>3}{'A':>3}{'weights':>10}{'MACs':>12}{'Omega':>11}"
    rows = [head + ("  ms" if table else "")]
    for name, (w, a) in plan.bits.items():
        ly = sens.layer(name)
        row = f"{name[:27]:<28}{w:>3}{a:>3}{ly.weights:>10}{ly.macs:>12}{ly.omega(w, a):>11.3e}"
        rows.append(row + (f"  {table.ms(name, w, a):.4f}" if table else ""))
    p = plan.predicted
    rows.append(f"predicted: {p['size_bytes']:,} weight bytes (mean {p['avg_bits']:.3f} bits), "
                f"{p['bops']:.4g} BOPs, Omega {p['omega']:.4g}"
                + (f", {p['latency_ms']:.4f} ms" if p.get("latency_ms") is not None else ""))
    return "\n".join(rows)
