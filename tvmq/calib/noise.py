"""Gaussian-noise baseline: standard normal pixels (the standardized-input prior), no
optimization."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from tvmq.calib.base import SynthesisConfig, register_synthesizer


@dataclasses.dataclass(frozen=True)
class NoiseConfig(SynthesisConfig):
    """Pixels drawn from N(0, 1); ``iters`` and ``lr`` are not used."""

    iters: int = 0


@register_synthesizer(NoiseConfig, "noise")
def _noise(model: nn.Module, x0: torch.Tensor, cfg: NoiseConfig, bar) -> torch.Tensor:
    return x0
