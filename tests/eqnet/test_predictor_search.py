"""Predictor ranking on a synthetic monotone accuracy; GA against random search."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import tvmq.eqnet as eqnet
from tvmq.eqnet.search import LayerCosts
from tvmq.mixed import BopsBudget, SizeBudget
from tvmq.mixed.sensitivity import LayerSensitivity

LAYERS = [f"l{i}" for i in range(8)]
SPACE = eqnet.ElasticSpace()
IMPORTANCE = {n: 1.0 + (i % 4) for i, n in enumerate(LAYERS)}


def synthetic_accuracy(sub: eqnet.Subnet) -> float:
    """Monotone in every bit width; layers matter unequally; per-channel helps."""
    loss = sum(IMPORTANCE[n] * (2.0 ** -w + 0.5 * 2.0 ** -a) for n, (w, a) in sub.bits.items())
    return 100.0 - 10 * loss + (0.5 if sub.per_channel else 0.0)


def _costs() -> LayerCosts:
    sizes = [200, 3000, 5000, 800, 9000, 1200, 4000, 100]
    return LayerCosts([LayerSensitivity(n, s, s * 16, 0.0, None, {}, {})
                       for n, s in zip(LAYERS, sizes)])


class _Net:  # the two attributes sample_subnets / fit_predictor read
    space, layers = SPACE, LAYERS

    def sample(self, rng, **cond):
        return SPACE.sample(LAYERS, rng, **cond)


def test_predictor_ranks_a_monotone_function():
    subs = eqnet.sample_subnets(_Net(), 260, seed=0)
    accs = [synthetic_accuracy(s) for s in subs]
    pred = eqnet.fit_predictor(_Net(), subs[:200], accs[:200])
    tau = pred.kendall_tau(subs[200:], accs[200:])
    assert tau >= 0.6, f"Kendall tau {tau:.3f} on 60 held-out subnets"
    assert eqnet.encode(subs[:2], SPACE.elastic_layers(LAYERS)).shape == (2, 2 * 6 + 2)


@pytest.mark.parametrize("budget", [SizeBudget(avg_bits=3), BopsBudget(uniform=(4, 4))])
def test_ga_beats_random_at_equal_evaluations_and_respects_budget(budget):
    costs = _costs()
    ga = eqnet.evolution(SPACE, LAYERS, costs, budget, synthetic_accuracy, population=30,
                         generations=10, seed=0)
    rs = eqnet.random_search(SPACE, LAYERS, costs, budget, synthetic_accuracy,
                             ga.evaluations, seed=0)
    assert rs.evaluations == ga.evaluations
    assert ga.score >= rs.score, (ga.score, rs.score)
    limit = budget.limit(costs)
    assert all(c <= limit * (1 + 1e-9) for _, _, c in ga.history + rs.history)
    assert ga.best.bits["l0"] == (8, 8)  # first/last stay fixed


def test_search_returns_a_plan_within_budget(supernet, digits_data):
    plan = eqnet.search(supernet, synthetic_accuracy_for(supernet),
                        SizeBudget(avg_bits=3), torch.from_numpy(digits_data[1].x[:1]),
                        population=10, generations=3, progress=False)
    assert plan.predicted["avg_bits"] <= 3 + 1e-9
    assert plan.bits == plan.subnet.bits and plan.search.evaluations > 10


def synthetic_accuracy_for(net):
    return lambda sub: -sum(2.0 ** -w for w, _ in sub.bits.values())


def test_several_budgets_all_hold():
    costs = _costs()
    budgets = [SizeBudget(avg_bits=3), BopsBudget(uniform=(3, 3))]
    ga = eqnet.evolution(SPACE, LAYERS, costs, budgets, synthetic_accuracy, population=20,
                         generations=5, seed=1)
    for sub, _, _ in ga.history:
        for b in budgets:
            assert costs.cost(b, sub) <= b.limit(costs) * (1 + 1e-9)
    # acts are not free any more: the BOPs budget pulls them below 8 somewhere
    assert any(a < 8 for n, (_, a) in ga.best.bits.items() if n not in ("l0", "l7"))
