"""Allocation on synthetic sensitivities: budgets respected, solvers agree, baselines, plans
that quantize_ applies literally."""
from __future__ import annotations

import pytest

import tvmq.quant as tq
from tvmq.errors import ConfigError
from tvmq.mixed import (BopsBudget, LatencyBudget, LatencyTable, SizeBudget, allocate, bits_of,
                        random_plan, uniform_plan)
from tvmq.mixed.allocate import _groups

from .conftest import synthetic_sensitivity

BUDGETS = [SizeBudget(avg_bits=3), SizeBudget(avg_bits=2.5), BopsBudget(uniform=(4, 4)),
           BopsBudget(uniform=(3, 6))]


def _spent(sens, plan, budget):
    return sum(budget.layer_cost(sens.layer(n), w, a) for n, (w, a) in plan.bits.items())


@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: b.describe())
def test_solvers_respect_budget_and_agree(budget):
    for seed in range(5):
        sens = synthetic_sensitivity(8, seed)
        plans = {s: allocate(sens, budget, solver=s) for s in ("greedy", "dp", "milp")}
        for plan in plans.values():
            assert _spent(sens, plan, budget) <= budget.limit(sens) * (1 + 1e-12)
            assert set(plan) == {ly.name for ly in sens.layers}
        omega = {s: p.predicted["omega"] for s, p in plans.items()}
        assert omega["dp"] == pytest.approx(omega["milp"], rel=1e-9)
        assert omega["greedy"] >= omega["dp"] * (1 - 1e-9)
        uni = uniform_plan(sens, *budget.uniform) if isinstance(budget, BopsBudget) else None
        if uni is not None:  # the uniform plan is feasible, so the optimum is no worse
            assert omega["dp"] <= uni.predicted["omega"] * (1 + 1e-9)


def test_size_budget_keeps_activations_at_their_best(sens):
    plan = allocate(sens, SizeBudget(avg_bits=3))
    assert {a for _, a in plan.bits.values()} == {8}  # activation bits cost no storage
    assert plan.predicted["avg_bits"] <= 3
    assert plan.label().startswith("W") and plan.label().endswith("A8")


def test_more_budget_never_hurts(sens):
    omegas = [allocate(sens, SizeBudget(avg_bits=b), "dp").predicted["omega"]
              for b in (2, 2.5, 3, 4, 6, 8)]
    assert all(x >= y for x, y in zip(omegas, omegas[1:])), omegas


@pytest.mark.parametrize("budget, match", [
    (SizeBudget(avg_bits=1.9), r"below the cheapest.*2\.\.8 average weight bits"),
    (SizeBudget(avg_bits=8.5), r"above the dearest.*2\.\.8 average weight bits"),
    (SizeBudget(bytes=10), "weight bytes"),
    (BopsBudget(bops=1.0), "BOPs"),
])
def test_budget_outside_feasible_range(sens, budget, match):
    with pytest.raises(ConfigError, match=match):
        allocate(sens, budget)


def test_budget_construction_errors(sens):
    with pytest.raises(ConfigError, match="exactly one"):
        SizeBudget()
    with pytest.raises(ConfigError, match="exactly one"):
        SizeBudget(avg_bits=3, bytes=100)
    with pytest.raises(ConfigError, match="solver"):
        allocate(sens, SizeBudget(avg_bits=3), solver="annealing")
    with pytest.raises(ConfigError, match="not a budget"):
        allocate(sens, 3.0)


def test_tied_layers_share_bits():
    sens = synthetic_sensitivity(6, 3, ties=[["layer1", "layer4"]])
    for seed in range(4):
        plan = random_plan(sens, SizeBudget(avg_bits=4), seed)
        assert plan.bits["layer1"] == plan.bits["layer4"]
    for solver in ("greedy", "dp"):
        plan = allocate(sens, BopsBudget(uniform=(4, 6)), solver)
        assert plan.bits["layer1"] == plan.bits["layer4"]


def test_random_plans_spend_the_budget(sens):
    budget = BopsBudget(uniform=(4, 4))
    groups, names, items = _groups(sens, budget)
    best = allocate(sens, budget, "dp").predicted["omega"]
    seen = set()
    for seed in range(5):
        plan = random_plan(sens, budget, seed)
        spent, cap = _spent(sens, plan, budget), budget.limit(sens)
        assert spent <= cap and plan.predicted["omega"] >= best * (1 - 1e-9)
        # no layer can take a dearer choice any more
        for (costs, _), group in zip(groups, names):
            cur = costs[items.index(plan.bits[group[0]])]
            assert all(c <= cur or spent + c - cur > cap for c in costs)
        seen.add(tuple(sorted(plan.bits.items())))
    assert len(seen) > 1


def test_uniform_plan_costs(sens):
    plan = uniform_plan(sens, 4, 4)
    assert plan.predicted["bops"] == BopsBudget(uniform=(4, 4)).limit(sens)
    assert plan.predicted["avg_bits"] == 4
    assert plan.predicted["size_bytes"] == sum(ly.weights // 2 for ly in sens.layers)


def test_latency_budget(sens):
    entries = {ly.name: {f"w{w}a8": 0.01 * (i + 1) * (1 + w / 8) for w in sens.weight_bits}
               for i, ly in enumerate(sens.layers)}
    table = LatencyTable("host", "cpu", "m", "tvm", "local", entries,
                         {"w8a8": {"total_ms": 1.0, "layers_ms": 0.8}})
    sens.act_bits = (8,)
    lo = table.predict({n: (2, 8) for n in entries})
    plan = allocate(sens, LatencyBudget(ms=lo * 1.2, table=table), solver="dp")
    assert plan.predicted["latency_ms"] <= lo * 1.2 + 1e-9
    assert plan.predicted["latency_ms"] > lo  # it spent some of the slack
    with pytest.raises(ConfigError, match=r"feasible: .* ms on host"):
        allocate(sens, LatencyBudget(ms=lo * 0.9, table=table))


def test_plan_json_round_trip_and_literal_application(tmp_path, trained_digits_cnn):
    import copy

    from tvmq.quant.layers import QUANT_LAYERS
    from tvmq.mixed import MixedPlan

    bits = {"features.0": (2, 8), "features.3": (3, 4), "features.6": (8, 6),
            "classifier": (4, 8)}
    plan = MixedPlan.from_bits(tq.get_preset("w8a8"), bits)
    loaded = tq.load_plan(tq.save_plan(plan, tmp_path / "plan.json"))
    assert bits_of(loaded) == bits
    model = copy.deepcopy(trained_digits_cnn)
    tq.quantize_(model, tq.QATConfig(tq.get_preset("w4a4"), overrides=loaded))
    for name, (w, a) in bits.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, QUANT_LAYERS)
        assert layer.weight_quant.bits == w, name  # first/last layers not raised to 8
        if layer.input_quant is None:  # reads the pool's 8-bit output quantizer instead
            assert a == 8 and name == "classifier"
        else:
            assert layer.input_quant.bits == a, name
    with pytest.raises(ConfigError, match="float"):
        bits_of({"features.0": None})
