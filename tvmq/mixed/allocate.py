"""Bit allocation: the sensitivity and a budget as a multiple-choice knapsack, solved.

Groups are layers (or tied layers), items their ``(weight bits, act bits)`` choices, value
``-Omega`` and cost the budget's. Also the baselines a results table compares with: the
uniform plan and random plans of the same cost.

>>> plan = allocate(sens, SizeBudget(avg_bits=3))            # greedy (Chen et al.)
>>> plan = allocate(sens, BopsBudget(uniform=(4, 4)), solver="dp")
>>> plan.bits["layer1.0.conv1"], plan.predicted["size_bytes"]
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Mapping

from tvmq.errors import ConfigError
from tvmq.mixed import knapsack
from tvmq.mixed.budgets import Budget, LatencyBudget
from tvmq.mixed.plans import MixedPlan, packed_bytes
from tvmq.mixed.sensitivity import Sensitivity


def _items(sens: Sensitivity) -> list[tuple[int, int]]:
    return list(itertools.product(sens.weight_bits, sens.act_bits))


def _groups(sens: Sensitivity, budget: Budget):
    """Knapsack groups: (costs, values) per tied group, with its layer names."""
    items, out, names = _items(sens), [], sens.groups()
    for group in names:
        layers = [sens.layer(n) for n in group]
        costs = [sum(budget.layer_cost(ly, w, a) for ly in layers) for w, a in items]
        values = [-sum(ly.omega(w, a) for ly in layers) for w, a in items]
        out.append((costs, values))
    return out, names, items


def _check_range(sens, budget, groups) -> float:
    """The capacity, or a ConfigError saying the feasible range."""
    cap = budget.limit(sens)
    lo, hi = knapsack.cost_range(groups)
    if cap < lo * (1 - 1e-9) or cap > hi * (1 + 1e-9):
        side = "below the cheapest" if cap < lo else "above the dearest"
        raise ConfigError(f"{budget.describe()} is {side} allocation (feasible: "
                          f"{budget.describe_range(lo, hi, sens)})", budget.fix(lo, hi, sens))
    return cap


def allocate(sens: Sensitivity, budget: Budget, solver: str = "greedy",
             resolution: float | None = None) -> MixedPlan:
    """The plan minimizing the summed ``Omega`` within ``budget``.

    Parameters
    ----------
    sens : Sensitivity
        From :func:`tvmq.mixed.sensitivity`.
    budget : SizeBudget, BopsBudget or LatencyBudget
    solver : {"greedy", "dp", "milp"}
        ``greedy``: Chen et al.'s (fast, near-optimal); ``dp``: exact dynamic program
        (integer costs, or float costs rounded up to ``resolution``); ``milp``: exact, HiGHS.
    resolution : float, optional
        Cost unit of ``dp`` (default: the budget's, 1e-4 ms for latency).

    Returns
    -------
    MixedPlan
        Module name -> method config for every allocated layer (apply it with
        ``QATConfig(base, overrides=plan)``); ``plan.bits``, ``plan.predicted``.
    """
    if solver not in knapsack.SOLVERS:
        raise ConfigError(f"solver={solver!r} is not a knapsack solver",
                          f"use one of {sorted(knapsack.SOLVERS)}")
    if not isinstance(budget, Budget):
        raise ConfigError(f"budget={budget!r} is not a budget",
                          "use SizeBudget(avg_bits=...), BopsBudget(...) or LatencyBudget(...)")
    groups, names, items = _groups(sens, budget)
    cap = _check_range(sens, budget, groups)
    kwargs: dict[str, Any] = {}
    if solver == "dp":
        kwargs["resolution"] = resolution if resolution is not None else budget.resolution
    choice = knapsack.SOLVERS[solver](groups, cap, **kwargs)
    bits = {n: items[k] for group, k in zip(names, choice) for n in group}
    return _plan(sens, bits, budget, solver)


def _plan(sens, bits, budget=None, solver=None) -> MixedPlan:
    ordered = {ly.name: bits[ly.name] for ly in sens.layers}
    table = budget.table if isinstance(budget, LatencyBudget) else None
    predicted = predict(sens, ordered, table)
    if budget is not None:
        predicted.update(budget=budget.describe(), limit=budget.limit(sens), solver=solver)
    return MixedPlan.from_bits(sens.method, ordered, predicted)


def predict(sens: Sensitivity, bits: Mapping[str, tuple[int, int]], table=None) -> dict:
    """What ``bits`` costs by the sensitivity's own counts: ``omega``, packed
    ``size_bytes``, ``avg_bits``, ``bops`` (and ``latency_ms`` from ``table``)."""
    layers = [sens.layer(n) for n in bits]
    out = {"omega": sum(ly.omega(*bits[ly.name]) for ly in layers),
           "size_bytes": sum(packed_bytes(ly.weights, bits[ly.name][0]) for ly in layers),
           "avg_bits": sum(ly.weights * bits[ly.name][0] for ly in layers)
           / sum(ly.weights for ly in layers),
           "bops": sum(ly.macs * bits[ly.name][0] * bits[ly.name][1] for ly in layers)}
    if table is not None:
        out["latency_ms"] = table.predict(bits)
    return out


def uniform_plan(sens: Sensitivity, weight_bits: int, act_bits: int, table=None) -> MixedPlan:
    """Every layer at ``weight_bits`` / ``act_bits`` (written out per layer, as a plan)."""
    bits = {ly.name: (weight_bits, act_bits) for ly in sens.layers}
    plan = _plan(sens, bits)
    if table is not None:
        plan.predicted["latency_ms"] = table.predict(bits)
    return plan


def random_plan(sens: Sensitivity, budget: Budget, seed: int = 0) -> MixedPlan:
    """A random allocation that spends the budget: from the cheapest choice, raise a random
    group to its next dearer choice that still fits, until none fits (so its cost is within
    one step of the budget)."""
    groups, names, items = _groups(sens, budget)
    cap = _check_range(sens, budget, groups)
    rng = random.Random(seed)
    choice = [min(range(len(c)), key=lambda k, c=c: (c[k], rng.random())) for c, _ in groups]
    spent = knapsack.total(groups, choice)[0]
    while True:
        moves = []
        for g, (costs, _) in enumerate(groups):
            dearer = [k for k in range(len(costs)) if costs[k] > costs[choice[g]]
                      and spent + costs[k] - costs[choice[g]] <= cap]
            if dearer:
                moves.append((g, min(dearer, key=lambda k, c=costs: (c[k], rng.random()))))
        if not moves:
            break
        g, k = rng.choice(moves)
        spent += groups[g][0][k] - groups[g][0][choice[g]]
        choice[g] = k
    bits = {n: items[k] for group, k in zip(names, choice) for n in group}
    return _plan(sens, bits, budget, f"random(seed={seed})")
