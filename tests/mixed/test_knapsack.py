"""The MCKP solvers: exact ones against brute force, the greedy's gap against the exact."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from tvmq.errors import ConfigError
from tvmq.mixed.knapsack import cost_range, solve_dp, solve_greedy, solve_milp, total

BITS = (2, 3, 4, 5, 6, 8)


def _random_instance(rng, groups: int, integer: bool = True):
    out = []
    for _ in range(groups):
        k = int(rng.integers(2, 5))
        costs = rng.integers(1, 30, size=k) if integer else rng.uniform(0.1, 3.0, size=k)
        out.append((costs.tolist(), rng.uniform(-10, 0, size=k).tolist()))
    return out


def _bit_instance(rng, groups: int):
    """Like a real allocation: cost n * b, value -trace * err(b) with err falling ~4x a bit."""
    out = []
    for _ in range(groups):
        n, tr = int(rng.integers(1, 40)) * 16, rng.lognormal(0, 1.5)
        out.append(([n * b for b in BITS],
                    [-0.5 * tr * n * 4.0 ** -b * rng.uniform(0.7, 1.3) for b in BITS]))
    return out


def _brute(groups, cap):
    best = None
    for choice in itertools.product(*[range(len(c)) for c, _ in groups]):
        cost, value = total(groups, choice)
        if cost <= cap and (best is None or value > best):
            best = value
    return best


def test_exact_solvers_match_brute_force(rng):
    for _ in range(40):
        groups = _random_instance(rng, int(rng.integers(1, 5)))
        lo, hi = cost_range(groups)
        cap = float(rng.integers(lo, hi + 1))
        expect = _brute(groups, cap)
        for solver in (solve_dp, solve_milp):
            choice = solver(groups, cap)
            cost, value = total(groups, choice)
            assert cost <= cap and value == pytest.approx(expect, abs=1e-9), solver.__name__
        g_cost, g_value = total(groups, solve_greedy(groups, cap))
        assert g_cost <= cap and g_value <= expect + 1e-9


def test_dp_float_costs_need_a_resolution(rng):
    groups = _random_instance(rng, 4, integer=False)
    cap = sum(cost_range(groups)) / 2
    with pytest.raises(ConfigError, match="resolution"):
        solve_dp(groups, cap)
    choice = solve_dp(groups, cap, resolution=1e-3)
    assert total(groups, choice)[0] <= cap  # costs round up: the answer always fits
    assert total(groups, choice)[1] <= total(groups, solve_milp(groups, cap))[1] + 1e-9


def test_greedy_optimality_gap_is_small():
    """Relative excess of the summed Omega over the exact optimum, on random allocations of
    realistic size (16..25 layers, 6 weight widths, budgets of 2.2..7 mean bits)."""
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(100):
        groups = _bit_instance(rng, int(rng.integers(16, 26)))
        cap = rng.uniform(2.2, 7) * sum(c[-1] for c, _ in groups) / 8
        greedy = -total(groups, solve_greedy(groups, cap))[1]
        exact = -total(groups, solve_dp(groups, cap))[1]
        assert greedy >= exact * (1 - 1e-9)
        gaps.append(greedy / exact - 1)
    mean, p90 = float(np.mean(gaps)), float(np.percentile(gaps, 90))
    assert mean < 0.02 and p90 < 0.05, f"greedy gap: mean {mean:.4f}, p90 {p90:.4f}"


def test_greedy_spends_the_budget_it_can():
    """Two layers, costs 1 and 10 per step: the greedy must not stop while an upgrade fits."""
    groups = [([1, 2, 3], [-9.0, -4.0, -1.0]), ([10, 20], [-5.0, -0.1])]
    choice = solve_greedy(groups, 23)
    assert choice == [2, 1] and total(groups, choice)[0] == 23


def test_capacity_below_cheapest_is_refused():
    with pytest.raises(ConfigError, match="below the cheapest"):
        solve_greedy([([2, 3], [0.0, 1.0])], 1)


def test_dp_refuses_huge_tables():
    groups = [([0, 999_983], [0.0, 1.0]), ([0, 1_000_003], [0.0, 1.0])]  # primes: no gcd
    with pytest.raises(ConfigError, match="milp"):
        solve_dp(groups, 1_500_000, max_cells=1000)
    assert solve_milp(groups, 1_500_000) in ([1, 0], [0, 1])
