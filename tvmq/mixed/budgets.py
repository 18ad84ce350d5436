"""What a bit allocation may spend: model size, BOPs, or measured latency.

Each budget prices one layer at one bit choice (:meth:`Budget.layer_cost`) and gives the
knapsack's capacity (:meth:`Budget.limit`); the allocation refuses a budget outside the range
the bit choices can reach, with that range in the budget's own units.

>>> SizeBudget(avg_bits=3)                    # mean weight bits, weighted by weight count
>>> BopsBudget(uniform=(4, 4))                # the BOPs of the uniform W4A4 model
>>> LatencyBudget(ms=2.0, table=table)        # per-(layer, bits) table measured on a board
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from tvmq.errors import ConfigError

if TYPE_CHECKING:
    from tvmq.mixed.latency import LatencyTable
    from tvmq.mixed.sensitivity import LayerSensitivity, Sensitivity


class Budget:
    """Base class: a per-layer cost and a total."""

    #: cost unit for the exact DP (None: the costs are integers)
    resolution: float | None = None

    def layer_cost(self, layer: "LayerSensitivity", w: int, a: int) -> float:
        raise NotImplementedError

    def describe(self) -> str:
        """The budget as the user wrote it (fields left at ``None`` omitted)."""
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                 if f.repr and getattr(self, f.name) is not None]
        return f"{type(self).__name__}({', '.join(shown)})"

    def limit(self, sens: "Sensitivity") -> float:
        raise NotImplementedError

    def describe_range(self, lo: float, hi: float, sens: "Sensitivity") -> str:
        """The feasible range ``[lo, hi]`` (knapsack units) in the user's units."""
        raise NotImplementedError

    def fix(self, lo: float, hi: float, sens: "Sensitivity") -> str:
        return f"use a budget in {self.describe_range(lo, hi, sens)}"


def _positive(owner, **fields) -> None:
    given = {k: v for k, v in fields.items() if v is not None}
    if len(given) != 1:
        raise ConfigError(f"{type(owner).__name__} needs exactly one of {sorted(fields)}",
                          f"use e.g. {type(owner).__name__}({next(iter(fields))}=...)")


@dataclasses.dataclass(frozen=True)
class SizeBudget(Budget):
    """Weight storage: ``avg_bits`` (mean bits per weight) or ``bytes`` (packed weights).

    Cost of a layer: ``n_l * w`` bits (activation bits are free).
    """

    avg_bits: float | None = None
    bytes: int | None = None

    def __post_init__(self):
        _positive(self, avg_bits=self.avg_bits, bytes=self.bytes)

    def layer_cost(self, layer, w, a):
        return layer.weights * w

    def check_bits(self, weight_bits) -> "SizeBudget":
        """Refuse an ``avg_bits`` the weight choices cannot reach, before any work is done
        (the same message :func:`~tvmq.mixed.allocate` gives). Returns the budget."""
        lo, hi = min(weight_bits), max(weight_bits)
        if self.avg_bits is not None and not lo <= self.avg_bits <= hi:
            side = "below the cheapest" if self.avg_bits < lo else "above the dearest"
            raise ConfigError(f"{self.describe()} is {side} allocation (feasible: "
                              f"{lo:g}..{hi:g} average weight bits)",
                              f"use SizeBudget(avg_bits=...) / --avg-bits between {lo:g} and "
                              f"{hi:g}")
        return self

    def limit(self, sens):
        if self.avg_bits is not None:
            return self.avg_bits * _weights(sens)
        return self.bytes * 8

    def describe_range(self, lo, hi, sens):
        if self.avg_bits is not None:
            n = _weights(sens)
            return f"{lo / n:g}..{hi / n:g} average weight bits"
        return f"{lo / 8:,.0f}..{hi / 8:,.0f} weight bytes"

    def fix(self, lo, hi, sens):
        if self.avg_bits is not None:
            n = _weights(sens)
            return f"use SizeBudget(avg_bits=...) / --avg-bits between {lo / n:g} and {hi / n:g}"
        return f"use SizeBudget(bytes=...) between {lo / 8:.0f} and {hi / 8:.0f}"


@dataclasses.dataclass(frozen=True)
class BopsBudget(Budget):
    """Bit operations ``sum_l macs_l * w_l * a_l`` per sample: ``bops``, or ``uniform=(w, a)``
    (the BOPs of every layer at ``w``-bit weights and ``a``-bit activations)."""

    bops: float | None = None
    uniform: tuple[int, int] | None = None

    def __post_init__(self):
        _positive(self, bops=self.bops, uniform=self.uniform)

    def layer_cost(self, layer, w, a):
        return layer.macs * w * a

    def limit(self, sens):
        if self.bops is not None:
            return float(self.bops)
        w, a = self.uniform
        return float(sum(ly.macs for ly in sens.layers) * w * a)

    def describe_range(self, lo, hi, sens):
        return f"{lo:.4g}..{hi:.4g} BOPs"

    def fix(self, lo, hi, sens):
        return f"use BopsBudget(bops=...) / --bops between {lo:.4g} and {hi:.4g}"


@dataclasses.dataclass(frozen=True)
class LatencyBudget(Budget):
    """Milliseconds per inference on the board ``table`` was measured on.

    Cost of a layer: its measured time at those bits; the budget left for the layers is
    ``ms`` minus what the model spends outside them (``table.overhead_ms``).
    """

    ms: float
    table: "LatencyTable" = dataclasses.field(repr=False)
    resolution: float | None = dataclasses.field(default=1e-4, repr=False)

    def __post_init__(self):
        if not self.ms > 0:
            raise ConfigError(f"LatencyBudget(ms={self.ms!r}) is not positive",
                              "use LatencyBudget(ms=2.5, table=...)")

    def layer_cost(self, layer, w, a):
        return self.table.ms(layer.name, w, a)

    def limit(self, sens):
        return self.ms - self.table.overhead_ms

    def describe(self) -> str:
        return f"LatencyBudget(ms={self.ms!r}) on {self.table.board}"

    def describe_range(self, lo, hi, sens):
        o = self.table.overhead_ms
        return f"{lo + o:.4g}..{hi + o:.4g} ms on {self.table.board}"

    def fix(self, lo, hi, sens):
        o = self.table.overhead_ms
        return f"use LatencyBudget(ms=...) / --latency-ms between {lo + o:.4g} and {hi + o:.4g}"


def _weights(sens) -> int:
    return sum(ly.weights for ly in sens.layers)
