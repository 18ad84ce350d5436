"""The elastic space of a supernet, and one point of it (a :class:`Subnet`).

A subnet fixes, for every quantized layer, its weight and activation bit widths, plus one
*condition* for the whole network: per-channel or per-tensor weight scales, symmetric or
asymmetric activations. The first and last layers stay at ``first_last_bits`` (8) unless the
space is widened (``first_last_bits=None``), as in EQ-Net and every QAT recipe since DoReFa.

>>> space = ElasticSpace(weight_bits=(2, 3, 4, 8), act_bits=(4, 8))
>>> sub = space.largest(["conv1", "conv2", "fc"])
>>> sub.bits["conv2"], sub.per_channel, sub.act_symmetric
((8, 8), True, True)
"""
from __future__ import annotations

import dataclasses
import random
from typing import Mapping, Sequence

from tvmq.errors import ConfigError
from tvmq.quant.config import MAX_BITS, MIN_BITS

_ALL_BITS = tuple(range(MIN_BITS, MAX_BITS + 1))


def _call(space: "ElasticSpace", **changes) -> str:
    fields = {f.name: getattr(space, f.name) for f in dataclasses.fields(space)}
    defaults = {f.name: f.default for f in dataclasses.fields(space)}
    fields.update(changes)
    shown = [f"{k}={v!r}" for k, v in fields.items() if k in changes or v != defaults[k]]
    return f"ElasticSpace({', '.join(shown)})"


def _check_bits(space: "ElasticSpace", field: str) -> None:
    bits = getattr(space, field)
    ok = isinstance(bits, tuple) and bits and all(isinstance(b, int) for b in bits)
    if not ok or any(not MIN_BITS <= b <= MAX_BITS for b in bits) or len(set(bits)) != len(bits):
        good = tuple(sorted({min(max(int(b), MIN_BITS), MAX_BITS) for b in bits
                             if isinstance(b, (int, float))})) if isinstance(bits, (tuple, list)) \
            and bits else _ALL_BITS
        raise ConfigError(f"{field}={bits!r} must be distinct bit widths in "
                          f"{MIN_BITS}..{MAX_BITS} (a tuple)",
                          f"use {_call(space, **{field: good or _ALL_BITS})}")


@dataclasses.dataclass(frozen=True)
class ElasticSpace:
    """What a supernet can switch between, step by step.

    Parameters
    ----------
    weight_bits, act_bits : tuple of int
        Bit-width choices (2..8) of every elastic layer's weights and input activations.
    per_channel : tuple of bool
        Weight granularity choices: ``True`` one scale per output channel, ``False`` one per
        tensor.
    act_symmetric : tuple of bool
        Activation choices: ``True`` zero point 0 (unsigned grid after a ReLU), ``False`` a
        learned offset (integer zero point, LSQ+).
    first_last_bits : int or None
        The first and last quantized layers stay at this many bits (weights and activations);
        ``None`` makes them elastic too.
    """

    weight_bits: tuple[int, ...] = _ALL_BITS
    act_bits: tuple[int, ...] = _ALL_BITS
    per_channel: tuple[bool, ...] = (True, False)
    act_symmetric: tuple[bool, ...] = (True, False)
    first_last_bits: int | None = 8

    def __post_init__(self):
        for field in ("weight_bits", "act_bits"):
            val = getattr(self, field)
            if isinstance(val, list):  # accept lists, store tuples (hashable, frozen)
                object.__setattr__(self, field, tuple(val))
            _check_bits(self, field)
        for field in ("per_channel", "act_symmetric"):
            val = getattr(self, field)
            if isinstance(val, bool) or not val or any(not isinstance(v, bool) for v in val):
                fixed = (val,) if isinstance(val, bool) else (True, False)
                raise ConfigError(f"{field}={val!r} must be a non-empty tuple of bools",
                                  f"use {_call(self, **{field: fixed})}")
            object.__setattr__(self, field, tuple(val))
        fl = self.first_last_bits
        if fl is not None and (not isinstance(fl, int) or not MIN_BITS <= fl <= MAX_BITS):
            raise ConfigError(f"first_last_bits={fl!r} is outside {MIN_BITS}..{MAX_BITS}",
                              f"use {_call(self, first_last_bits=8)} (or None: elastic too)")

    # -- which layers are elastic ------------------------------------------------------------
    def fixed_layers(self, names: Sequence[str]) -> list[str]:
        """The layers held at ``first_last_bits`` (the first and the last, or none)."""
        if self.first_last_bits is None or not names:
            return []
        return sorted({names[0], names[-1]}, key=list(names).index)

    def elastic_layers(self, names: Sequence[str]) -> list[str]:
        fixed = set(self.fixed_layers(names))
        return [n for n in names if n not in fixed]

    # -- subnets -------------------------------------------------------------------------------
    def _make(self, names, pick_w, pick_a, per_channel, act_symmetric) -> "Subnet":
        fixed, fl = set(self.fixed_layers(names)), self.first_last_bits
        bits = {n: (fl, fl) if n in fixed else (pick_w(), pick_a()) for n in names}
        return Subnet(bits, per_channel, act_symmetric)

    def largest(self, names: Sequence[str], per_channel: bool | None = None,
                act_symmetric: bool | None = None) -> "Subnet":
        """Every elastic layer at the most bits (condition: the first choice unless given)."""
        return self._make(names, lambda: max(self.weight_bits), lambda: max(self.act_bits),
                          self._cond(per_channel, "per_channel"),
                          self._cond(act_symmetric, "act_symmetric"))

    def smallest(self, names: Sequence[str], per_channel: bool | None = None,
                 act_symmetric: bool | None = None) -> "Subnet":
        """Every elastic layer at the fewest bits."""
        return self._make(names, lambda: min(self.weight_bits), lambda: min(self.act_bits),
                          self._cond(per_channel, "per_channel"),
                          self._cond(act_symmetric, "act_symmetric"))

    def uniform(self, names: Sequence[str], w: int, a: int, per_channel: bool | None = None,
                act_symmetric: bool | None = None) -> "Subnet":
        """Every elastic layer at ``w``-bit weights and ``a``-bit activations."""
        if w not in self.weight_bits or a not in self.act_bits:
            raise ConfigError(f"W{w}A{a} is outside the space (weights {self.weight_bits}, "
                              f"activations {self.act_bits})",
                              f"use {_call(self, weight_bits=tuple(sorted({*self.weight_bits, w})), act_bits=tuple(sorted({*self.act_bits, a})))}")
        return self._make(names, lambda: w, lambda: a, self._cond(per_channel, "per_channel"),
                          self._cond(act_symmetric, "act_symmetric"))

    def sample(self, names: Sequence[str], rng: random.Random, per_channel: bool | None = None,
               act_symmetric: bool | None = None) -> "Subnet":
        """A uniformly random subnet (condition drawn too unless given)."""
        pc = rng.choice(self.per_channel) if per_channel is None else per_channel
        sym = rng.choice(self.act_symmetric) if act_symmetric is None else act_symmetric
        return self._make(names, lambda: rng.choice(self.weight_bits),
                          lambda: rng.choice(self.act_bits), pc, sym)

    def _cond(self, value: bool | None, field: str) -> bool:
        choices = getattr(self, field)
        if value is None:
            return choices[0]
        if value not in choices:
            raise ConfigError(f"{field}={value!r} is not in the space ({choices})",
                              f"use {_call(self, **{field: tuple(choices) + (value,)})}")
        return value

    def check(self, sub: "Subnet", names: Sequence[str]) -> "Subnet":
        """``sub`` if it is a point of this space over ``names``, else a ConfigError."""
        missing = sorted(set(names) - set(sub.bits))
        extra = sorted(set(sub.bits) - set(names))
        if missing or extra:
            raise ConfigError(f"subnet layers differ from the supernet's (missing {missing}, "
                              f"unknown {extra})", f"give bits for exactly {list(names)}")
        fixed, fl = set(self.fixed_layers(names)), self.first_last_bits
        for n, (w, a) in sub.bits.items():
            if n in fixed and (w, a) != (fl, fl):
                raise ConfigError(f"layer {n!r} is fixed at {fl} bits, got W{w}A{a}",
                                  f"use bits {(fl, fl)} for it, or "
                                  f"{_call(self, first_last_bits=None)}")
            if n not in fixed and (w not in self.weight_bits or a not in self.act_bits):
                raise ConfigError(f"layer {n!r} at W{w}A{a} is outside the space",
                                  f"use weight bits from {self.weight_bits} and activation "
                                  f"bits from {self.act_bits}")
        self._cond(sub.per_channel, "per_channel")
        self._cond(sub.act_symmetric, "act_symmetric")
        return sub

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> "ElasticSpace":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclasses.dataclass
class Subnet:
    """One configuration: layer name -> ``(weight bits, act bits)`` plus the condition."""

    bits: dict[str, tuple[int, int]]
    per_channel: bool = True
    act_symmetric: bool = True

    def label(self) -> str:
        """``W3.25A4.50 pc sym``: mean weight and activation bits per layer, the condition."""
        n = max(len(self.bits), 1)
        w = sum(b[0] for b in self.bits.values()) / n
        a = sum(b[1] for b in self.bits.values()) / n
        return (f"W{w:.2f}A{a:.2f} {'pc' if self.per_channel else 'pt'} "
                f"{'sym' if self.act_symmetric else 'asym'}")

    def key(self) -> tuple:
        return (tuple(sorted(self.bits.items())), self.per_channel, self.act_symmetric)

    def to_json(self) -> dict:
        return {"bits": {n: list(b) for n, b in self.bits.items()},
                "per_channel": self.per_channel, "act_symmetric": self.act_symmetric}

    @classmethod
    def from_json(cls, d: Mapping) -> "Subnet":
        if not isinstance(d, Mapping) or not isinstance(d.get("bits"), Mapping):
            raise ConfigError(f"{d!r} is not a subnet",
                              'write {"bits": {"layer": [w, a], ...}, "per_channel": true, '
                              '"act_symmetric": true}')
        return cls({n: (int(b[0]), int(b[1])) for n, b in d["bits"].items()},
                   bool(d.get("per_channel", True)), bool(d.get("act_symmetric", True)))
