"""Genetic search for a subnet under a budget, the random-search baseline, and ``search``.

Budgets are :mod:`tvmq.mixed`'s (:class:`~tvmq.mixed.SizeBudget`,
:class:`~tvmq.mixed.BopsBudget`, :class:`~tvmq.mixed.LatencyBudget`), priced by their own
``layer_cost`` on the supernet's layer sizes and MACs, so a searched subnet and an MCKP plan at
the same budget cost the same by the same rule. Fixed (first/last) layers count at their bits.

A candidate over budget is *repaired*: a random layer's weight or activation bits drop to the
next choice that lowers the cost, until it fits. The GA (EQ-Net / OFA style): a population
of repaired random subnets; each generation keeps the best ``parent_ratio``, adds mutants
(each elastic gene redrawn with probability ``mutate_prob``) and uniform crossovers of two
parents, all repaired. Random search draws repaired random subnets: at equal evaluations the
two differ only in how candidates are proposed. Ties in fitness go to the subnet that spends
more of the (first) budget.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from tvmq.eqnet.space import ElasticSpace, Subnet
from tvmq.errors import ConfigError
from tvmq.mixed.budgets import Budget
from tvmq.mixed.plans import MixedPlan, packed_bytes
from tvmq.mixed.sensitivity import LayerSensitivity, _macs

Fitness = Callable[[Subnet], float]


@dataclasses.dataclass
class LayerCosts:
    """The layers' sizes and MACs, in the form :mod:`tvmq.mixed` budgets price
    (``layers``: :class:`~tvmq.mixed.LayerSensitivity` with only ``weights`` / ``macs``)."""

    layers: list[LayerSensitivity]

    def cost(self, budget: Budget, sub: Subnet) -> float:
        return sum(budget.layer_cost(ly, *sub.bits[ly.name]) for ly in self.layers)

    def summary(self, sub: Subnet) -> dict[str, float]:
        """``avg_bits`` (per weight), packed ``size_bytes`` and ``bops`` of ``sub``."""
        n = sum(ly.weights for ly in self.layers)
        return {"avg_bits": sum(ly.weights * sub.bits[ly.name][0] for ly in self.layers) / n,
                "size_bytes": sum(packed_bytes(ly.weights, sub.bits[ly.name][0])
                                  for ly in self.layers),
                "bops": float(sum(ly.macs * sub.bits[ly.name][0] * sub.bits[ly.name][1]
                                  for ly in self.layers))}


@torch.no_grad()
def layer_costs(model: nn.Module, example: torch.Tensor, layers: Sequence[str]) -> LayerCosts:
    """Weights and MACs per sample of ``layers`` of ``model`` (a supernet's prepared model or
    any float model), from one forward of ``example``."""
    macs: dict[str, int] = {}
    mods = {n: model.get_submodule(n) for n in layers}
    hooks = [m.register_forward_hook(lambda mod, a, out, n=n: macs.__setitem__(n, _macs(
        getattr(mod, "conv", mod), out))) for n, m in mods.items()]
    was = model.training
    try:
        model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return LayerCosts([LayerSensitivity(n, getattr(m, "conv", m).weight.numel(), macs[n], 0.0,
                                        None, {}, {}) for n, m in mods.items()])


@dataclasses.dataclass
class SearchResult:
    """The best subnet, its fitness, and every evaluation in order (``history``:
    ``(subnet, fitness, cost)``)."""

    best: Subnet
    score: float
    history: list[tuple[Subnet, float, float]]

    @property
    def evaluations(self) -> int:
        return len(self.history)


class _Searcher:
    """Shared pieces: the space, the budget's limit, repair, a cached fitness."""

    def __init__(self, space: ElasticSpace, layers: Sequence[str], costs: LayerCosts,
                 budgets: Sequence[Budget], fitness: Fitness, rng: random.Random, cond: dict):
        self.space, self.layers, self.costs = space, list(layers), costs
        self.budgets = list(budgets)
        self.elastic = space.elastic_layers(self.layers)
        self.fitness, self.rng, self.cond = fitness, rng, cond
        self.limits = [b.limit(costs) for b in self.budgets]
        self.cache: dict[tuple, float] = {}
        self.history: list[tuple[Subnet, float, float]] = []
        small = space.smallest(self.layers, **cond)
        large = space.largest(self.layers, **cond)
        for budget, limit in zip(self.budgets, self.limits):
            cheapest, dearest = costs.cost(budget, small), costs.cost(budget, large)
            if cheapest > limit * (1 + 1e-9):
                raise ConfigError(f"{budget.describe()} is below the smallest subnet "
                                  f"({budget.describe_range(cheapest, dearest, costs)})",
                                  budget.fix(cheapest, dearest, costs))

    def evaluate(self, sub: Subnet) -> float:
        key = sub.key()
        if key not in self.cache:
            self.cache[key] = float(self.fitness(sub))
            self.history.append((sub, self.cache[key], self.costs.cost(self.budgets[0], sub)))
        return self.cache[key]

    def _over(self, bits) -> list[int]:
        """Indices of the budgets ``bits`` exceeds."""
        sub = Subnet(bits)
        return [i for i, (b, lim) in enumerate(zip(self.budgets, self.limits))
                if self.costs.cost(b, sub) > lim]

    def repair(self, sub: Subnet) -> Subnet:
        bits = dict(sub.bits)
        over = self._over(bits)
        while over:
            moves = []
            for n in self.elastic:
                w, a = bits[n]
                lower_w = [b for b in self.space.weight_bits if b < w]
                lower_a = [b for b in self.space.act_bits if b < a]
                if lower_w:
                    moves.append((n, (max(lower_w), a)))
                if lower_a:
                    moves.append((n, (w, max(lower_a))))
            moves = [m for m in moves if any(self._cost_with(bits, m, i) < self._cost_with(
                bits, None, i) for i in over)]
            if not moves:
                break
            n, new = self.rng.choice(moves)
            bits[n] = new
            over = self._over(bits)
        return Subnet(bits, sub.per_channel, sub.act_symmetric)

    def _cost_with(self, bits, move, i: int) -> float:
        if move is not None:
            bits = {**bits, move[0]: move[1]}
        return self.costs.cost(self.budgets[i], Subnet(bits))

    def random(self) -> Subnet:
        return self.repair(self.space.sample(self.layers, self.rng, **self.cond))

    def mutate(self, sub: Subnet, prob: float) -> Subnet:
        bits = dict(sub.bits)
        for n in self.elastic:
            w, a = bits[n]
            if self.rng.random() < prob:
                w = self.rng.choice(self.space.weight_bits)
            if self.rng.random() < prob:
                a = self.rng.choice(self.space.act_bits)
            bits[n] = (w, a)
        return self.repair(Subnet(bits, sub.per_channel, sub.act_symmetric))

    def crossover(self, a: Subnet, b: Subnet) -> Subnet:
        bits = {n: (a if self.rng.random() < 0.5 else b).bits[n] for n in self.layers}
        return self.repair(Subnet(bits, a.per_channel, a.act_symmetric))

    def rank(self, sub: Subnet) -> tuple[float, float]:
        """Fitness, then cost: among equal fitness (a saturated predictor) prefer the subnet
        that spends more of the budget (more bits seldom hurt)."""
        return self.evaluate(sub), self.costs.cost(self.budgets[0], sub)

    def result(self) -> SearchResult:
        sub, score, _ = max(self.history, key=lambda h: (h[1], h[2]))
        return SearchResult(sub, score, list(self.history))


def _budgets(budget) -> list[Budget]:
    """One budget, or several that must all hold."""
    budgets = [budget] if isinstance(budget, Budget) else list(budget) \
        if isinstance(budget, (list, tuple)) else [budget]
    if not budgets or not all(isinstance(b, Budget) for b in budgets):
        raise ConfigError(f"budget={budget!r} is not a budget",
                          "use tvmq.mixed.SizeBudget(avg_bits=3), BopsBudget(...), "
                          "LatencyBudget(...), or a list of them (all must hold)")
    return budgets


def evolution(space: ElasticSpace, layers: Sequence[str], costs: LayerCosts, budget,
              fitness: Fitness, population: int = 40, generations: int = 15,
              parent_ratio: float = 0.25, mutate_ratio: float = 0.5, mutate_prob: float = 0.15,
              seed: int = 0, progress: bool = False, **cond) -> SearchResult:
    """Genetic search maximizing ``fitness`` over subnets within ``budget`` (one budget, or a
    list that must all hold, e.g. ``[SizeBudget(avg_bits=3), BopsBudget(uniform=(3, 3))]``).

    ``cond`` fixes the condition (``per_channel=``, ``act_symmetric=``; default the space's
    first choices). Evaluations: at most ``population * generations`` distinct subnets.
    """
    if population < 4 or generations < 1:
        raise ConfigError(f"population={population}, generations={generations} is too small",
                          "use evolution(..., population=40, generations=15)")
    cond = {k: space._cond(cond.get(k), k) for k in ("per_channel", "act_symmetric")}
    s = _Searcher(space, layers, costs, _budgets(budget), fitness, random.Random(seed), cond)
    pop = [s.random() for _ in range(population)]
    n_parents = max(2, int(parent_ratio * population))
    for _ in tqdm(range(generations), desc="eqnet GA", disable=not progress, leave=False):
        pop.sort(key=s.rank, reverse=True)
        parents = pop[:n_parents]
        n_mut = int(mutate_ratio * population)
        mutants = [s.mutate(s.rng.choice(parents), mutate_prob) for _ in range(n_mut)]
        children = [s.crossover(*s.rng.sample(parents, 2))
                    for _ in range(population - n_parents - n_mut)]
        pop = parents + mutants + children
    for sub in pop:
        s.evaluate(sub)
    return s.result()


def random_search(space: ElasticSpace, layers: Sequence[str], costs: LayerCosts,
                  budget, fitness: Fitness, evaluations: int, seed: int = 0,
                  **cond) -> SearchResult:
    """The best of ``evaluations`` distinct repaired random subnets (the GA's baseline)."""
    cond = {k: space._cond(cond.get(k), k) for k in ("per_channel", "act_symmetric")}
    s = _Searcher(space, layers, costs, _budgets(budget), fitness, random.Random(seed), cond)
    for _ in range(50 * evaluations):
        if len(s.history) >= evaluations:
            break
        s.evaluate(s.random())
    return s.result()


def search(net, predictor: Fitness, budget, example: torch.Tensor,
           population: int = 40, generations: int = 15, seed: int = 0,
           progress: bool = True, **cond) -> MixedPlan:
    """The subnet of ``net`` with the best predicted accuracy within ``budget``, as a plan.

    Parameters
    ----------
    net : Supernet
    predictor : AccuracyPredictor or callable ``Subnet -> float``
    budget : tvmq.mixed budget, or a list of them (all must hold)
        ``SizeBudget(avg_bits=3)``, ``BopsBudget(uniform=(4, 4))``, ``LatencyBudget(...)``.
    example : torch.Tensor
        One input (prices the layers' MACs).
    cond : per_channel=, act_symmetric=
        The condition searched under (default: the space's first choices).

    Returns
    -------
    MixedPlan
        Layer name -> LSQ/LSQ+ config (``QATConfig(base, overrides=plan)``,
        :func:`tvmq.quant.save_plan`); ``plan.bits``; ``plan.predicted`` (accuracy, costs);
        ``plan.subnet`` (deploy it with ``net.to_quantized(plan.subnet, ...)``) and
        ``plan.search`` (the :class:`SearchResult`).
    """
    budgets = _budgets(budget)
    costs = layer_costs(net.model, example, net.layers)
    result = evolution(net.space, net.layers, costs, budget, predictor, population,
                       generations, seed=seed, progress=progress, **cond)
    plan = net.plan(result.best)
    plan.predicted.update(costs.summary(result.best), accuracy=result.score,
                          budget=" + ".join(b.describe() for b in budgets),
                          evaluations=result.evaluations)
    plan.subnet, plan.search = result.best, result
    return plan
