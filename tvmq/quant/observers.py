"""Range observers: pick the clipping range ``[lo, hi]`` that quantization parameters come from.

An observer is a frozen dataclass (a config). The statistics live in :class:`RangeStats`,
which each quantizer owns; :meth:`Observer.choose` turns them into a range.

>>> PTQConfig(base, calibration=train_set, observer=PercentileObserver(99.9))
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

ErrorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_SAMPLES_PER_BATCH = 4096
_MAX_SAMPLES = 1 << 17


class RangeStats:
    """Running per-row min/max plus a bounded random sample of the values seen.

    Rows are channels for per-channel weights, a single row otherwise.
    """

    def __init__(self, seed: int = 0):
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        self._gen = torch.Generator().manual_seed(seed)

    def update(self, rows: torch.Tensor, keep_all: bool = False) -> None:
        """Record ``rows`` of shape (C, K)."""
        rows = rows.detach().float()
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if keep_all or rows.shape[1] <= _SAMPLES_PER_BATCH:
            self.samples.append(rows)
        else:
            idx = torch.randint(rows.shape[1], (_SAMPLES_PER_BATCH,), generator=self._gen)
            self.samples.append(rows[:, idx])
        if sum(s.shape[1] for s in self.samples) > _MAX_SAMPLES:
            self.samples.pop(0)

    def values(self) -> torch.Tensor:
        """All retained samples as (C, K)."""
        return torch.cat(self.samples, dim=1)


@dataclasses.dataclass(frozen=True)
class Observer:
    """Base class: ``choose(stats, error_fn)`` returns per-row ``(lo, hi)``."""

    def choose(self, stats: RangeStats, error_fn: ErrorFn) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class MinMaxObserver(Observer):
    """The observed minimum and maximum (no clipping of outliers)."""

    def choose(self, stats, error_fn):
        return stats.lo, stats.hi


@dataclasses.dataclass(frozen=True)
class PercentileObserver(Observer):
    """Clip to the ``percentile`` (and ``100 - percentile``) of the sampled values."""

    percentile: float = 99.99

    def __post_init__(self):
        from tvmq.errors import ConfigError
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile={self.percentile} is outside (50, 100]",
                              "use PercentileObserver(percentile=99.99)")

    def choose(self, stats, error_fn):
        vals = stats.values()
        q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0])
        lo_hi = torch.quantile(vals, q, dim=1)
        return torch.minimum(lo_hi[0], stats.hi), torch.maximum(lo_hi[1], stats.lo)


@dataclasses.dataclass(frozen=True)
class MSEObserver(Observer):
    """Shrink ``[lo, hi]`` by the factor in ``(0, 1]`` that minimizes the quantization MSE.

    The search is a grid of ``steps`` factors, evaluated per row on the sampled values.
    """

    steps: int = 64
    min_ratio: float = 0.05

    def choose(self, stats, error_fn):
        best_err = torch.full_like(stats.lo, float("inf"))
        best_lo, best_hi = stats.lo.clone(), stats.hi.clone()
        for ratio in torch.linspace(self.min_ratio, 1.0, self.steps):
            lo, hi = stats.lo * ratio, stats.hi * ratio
            err = error_fn(lo, hi)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, lo, best_lo)
            best_hi = torch.where(better, hi, best_hi)
        return best_lo, best_hi
