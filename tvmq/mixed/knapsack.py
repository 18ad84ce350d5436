"""The multiple-choice knapsack problem (MCKP): pick exactly one item from every group,
maximizing the summed value with the summed cost at most a capacity.

Bit allocation is an MCKP (Chen et al., ICCV 2021): a group is a layer (or a tied group of
layers), an item one of its bit choices, its value ``-Omega`` (the predicted loss increase)
and its cost the budget's (bits of storage, BOPs, measured milliseconds). Three solvers:

* :func:`solve_greedy`, the paper's: from the cheapest item of every group, repeatedly take
  the upgrade with the best value gained per cost added that still fits;
* :func:`solve_dp`, exact dynamic programming over integer costs (costs are divided by their
  greatest common divisor; float costs are first rounded *up* to a ``resolution``, so the
  answer always fits and is optimal for the rounded costs);
* :func:`solve_milp`, exact for any size: a 0-1 program solved by HiGHS
  (``scipy.optimize.milp``).

Each returns the chosen item index of every group. A group's ``costs`` and ``values`` are
1-D sequences of equal length.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import numpy as np

from tvmq.errors import ConfigError

Groups = Sequence[tuple[Sequence[float], Sequence[float]]]  # (costs, values) per group


def total(groups: Groups, choice: Sequence[int]) -> tuple[float, float]:
    """``(cost, value)`` of ``choice`` (one item index per group)."""
    cost = sum(float(c[k]) for (c, _), k in zip(groups, choice))
    value = sum(float(v[k]) for (_, v), k in zip(groups, choice))
    return cost, value


def cost_range(groups: Groups) -> tuple[float, float]:
    """The cheapest and the dearest total cost any choice can have."""
    return (sum(min(map(float, c)) for c, _ in groups),
            sum(max(map(float, c)) for c, _ in groups))


def _check(groups: Groups, capacity: float) -> None:
    if not groups:
        raise ConfigError("the knapsack has no groups", "allocate bits to at least one layer")
    for i, (c, v) in enumerate(groups):
        if len(c) != len(v) or not len(c):
            raise ConfigError(f"group {i} has {len(c)} costs and {len(v)} values",
                              "give every group one cost and one value per item")
    low = cost_range(groups)[0]
    if capacity < low * (1 - 1e-12):
        raise ConfigError(f"capacity {capacity:g} is below the cheapest choice ({low:g})",
                          f"use a capacity >= {low:g}")


def _cheapest(costs, values) -> int:
    """The cheapest item; among equally cheap ones the most valuable."""
    return min(range(len(costs)), key=lambda k: (float(costs[k]), -float(values[k])))


def solve_greedy(groups: Groups, capacity: float) -> list[int]:
    """The greedy of Chen et al.: upgrade by the best value per cost while the budget allows.

    Starts from every group's cheapest item. Each step looks, in every group, at the items
    worth more than the current one and fitting the remaining budget; an item that also costs
    no more is taken at once, otherwise the one with the largest ``delta value / delta cost``
    over all groups is. Stops when no upgrade fits.
    """
    _check(groups, capacity)
    choice = [_cheapest(c, v) for c, v in groups]
    spent = total(groups, choice)[0]
    while True:
        best, best_ratio = None, -math.inf
        for g, (costs, values) in enumerate(groups):
            cur = choice[g]
            for k in range(len(costs)):
                dv = float(values[k]) - float(values[cur])
                dc = float(costs[k]) - float(costs[cur])
                if dv <= 0 or spent + dc > capacity * (1 + 1e-12):
                    continue
                ratio = math.inf if dc <= 0 else dv / dc
                if ratio > best_ratio:
                    best, best_ratio = (g, k, dc), ratio
        if best is None:
            return choice
        g, k, dc = best
        choice[g] = k
        spent += dc


def _integer_costs(groups: Groups, capacity: float, resolution: float | None):
    """Costs and capacity as integers (rounded to ``resolution``, divided by their gcd)."""
    if resolution is None:
        flat = [Fraction(float(x)) for c, _ in groups for x in c]
        if any(f.denominator != 1 for f in flat):
            raise ConfigError("solve_dp needs integer costs (these have fractions)",
                              "pass resolution=<cost unit>, or use solver='milp'")
        ints = [[int(x) for x in c] for c, _ in groups]
        cap = math.floor(capacity + 1e-9)
    else:
        ints = [[math.ceil(float(x) / resolution - 1e-9) for x in c] for c, _ in groups]
        cap = math.floor(capacity / resolution + 1e-9)
    # only the slack above every group's cheapest item matters
    cap -= sum(min(c) for c in ints)
    ints = [[x - min(c) for x in c] for c in ints]
    div = math.gcd(*[x for c in ints for x in c]) or 1
    return [[x // div for x in c] for c in ints], cap // div


def solve_dp(groups: Groups, capacity: float, resolution: float | None = None,
             max_cells: int = 50_000_000) -> list[int]:
    """The exact optimum by dynamic programming over the (integer) budget.

    Parameters
    ----------
    groups : sequence of (costs, values)
    capacity : float
    resolution : float, optional
        Cost unit for float costs (e.g. 0.001 ms): each cost is rounded up to a multiple of
        it, the capacity down. Without it the costs must be integers.
    max_cells : int
        Refuse instances whose table (groups x budget steps) is larger.
    """
    _check(groups, capacity)
    costs, cap = _integer_costs(groups, capacity, resolution)
    if cap < 0:
        raise ConfigError("no choice fits once costs are rounded to the resolution",
                          "use a finer resolution")
    cells = len(groups) * (cap + 1)
    if cells > max_cells:
        raise ConfigError(f"the DP table would have {cells:,} cells (> {max_cells:,})",
                          "use solver='milp' (exact, any size) or 'greedy', or a coarser "
                          "resolution")
    best = np.full(cap + 1, -np.inf)
    best[0] = 0.0
    picks = np.zeros((len(groups), cap + 1), dtype=np.int32)
    for g, (c, (_, values)) in enumerate(zip(costs, groups)):
        new = np.full(cap + 1, -np.inf)
        for k, (ck, vk) in enumerate(zip(c, values)):
            if ck > cap:
                continue
            cand = np.full(cap + 1, -np.inf)
            cand[ck:] = best[:cap + 1 - ck] + float(vk)
            better = cand > new
            new[better], picks[g, better] = cand[better], k
        best = new
    return _backtrack(costs, picks, int(np.argmax(best)))


def _backtrack(costs, picks, at: int) -> list[int]:
    choice = []
    for g in range(len(costs) - 1, -1, -1):
        k = int(picks[g, at])
        choice.append(k)
        at -= costs[g][k]
    return choice[::-1]


def solve_milp(groups: Groups, capacity: float) -> list[int]:
    """The exact optimum as a 0-1 program (HiGHS through ``scipy.optimize.milp``)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    _check(groups, capacity)
    sizes = [len(c) for c, _ in groups]
    n = sum(sizes)
    values = np.concatenate([np.asarray(v, float) for _, v in groups])
    costs = np.concatenate([np.asarray(c, float) for c, _ in groups])
    one = np.zeros((len(groups), n))
    start = np.cumsum([0] + sizes)
    for g in range(len(groups)):
        one[g, start[g]:start[g + 1]] = 1.0
    res = milp(-values, integrality=np.ones(n), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(one, 1, 1),
                            LinearConstraint(costs[None, :], -np.inf, capacity)])
    if res.x is None:
        raise ConfigError(f"HiGHS found no solution ({res.message})", "check the budget")
    x = np.round(res.x).astype(int)
    return [int(np.argmax(x[start[g]:start[g + 1]])) for g in range(len(groups))]


SOLVERS = {"greedy": solve_greedy, "dp": solve_dp, "milp": solve_milp}
