"""Bit allocations as per-layer plans (:mod:`tvmq.quant.plan`): module name -> method config.

A :class:`MixedPlan` is a ``dict`` that ``QATConfig(..., overrides=plan)``,
``PTQConfig(..., overrides=plan)`` and ``tvmq.quant.save_plan`` take as they are; it also keeps
the bits it chose (``plan.bits``: name -> ``(weight_bits, act_bits)``) and what it was
predicted to cost (``plan.predicted``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from tvmq.errors import ConfigError
from tvmq.quant.config import MethodConfig


def layer_config(base: MethodConfig, weight_bits: int | None, act_bits: int | None
                 ) -> MethodConfig:
    """``base`` with exactly these bits (``None`` keeps the base's), applied as written
    (``first_last_bits=None``: a plan's bits are never raised)."""
    weight = base.weight if weight_bits is None else base.weight.with_bits(weight_bits)
    act = base.activation if act_bits is None else base.activation.with_bits(act_bits)
    return dataclasses.replace(base, weight=weight, activation=act, first_last_bits=None)


class MixedPlan(dict):
    """Module name -> method config, plus ``bits`` (name -> (w, a)) and ``predicted`` costs."""

    bits: dict[str, tuple[int, int]]
    predicted: dict[str, Any]

    @classmethod
    def from_bits(cls, base: MethodConfig, bits: Mapping[str, tuple[int, int]],
                  predicted: dict[str, Any] | None = None) -> "MixedPlan":
        plan = cls({name: layer_config(base, w, a) for name, (w, a) in bits.items()})
        plan.bits = {name: (int(w), int(a)) for name, (w, a) in bits.items()}
        plan.predicted = dict(predicted or {})
        return plan

    def label(self) -> str:
        """``W3.12A8``-style: mean weight bits (per weight when the plan was priced, else per
        layer) and the activation bits used."""
        acts = sorted({a for _, a in self.bits.values()})
        mean_w = self.predicted.get("avg_bits") or \
            sum(w for w, _ in self.bits.values()) / max(len(self.bits), 1)
        return f"W{mean_w:.2f}A{'/'.join(map(str, acts))}"


def bits_of(plan: Mapping[str, MethodConfig | None]) -> dict[str, tuple[int, int]]:
    """Name -> (weight bits, activation bits) of any plan (a loaded JSON plan included)."""
    if isinstance(plan, MixedPlan):
        return dict(plan.bits)
    out = {}
    for name, cfg in plan.items():
        if cfg is None or cfg.weight is None or cfg.activation is None:
            raise ConfigError(f"plan entry {name!r} keeps the layer (partly) float",
                              "give every layer of a mixed-precision plan weight and "
                              "activation bits")
        out[name] = (cfg.weight.bits, cfg.activation.bits)
    return out


def packed_bytes(weights: int, bits: int) -> int:
    """Bytes of ``weights`` values stored at ``bits`` bits (the artifact packs sub-byte)."""
    return math.ceil(weights * bits / 8)
