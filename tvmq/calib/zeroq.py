"""ZeroQ baseline (Cai et al., CVPR 2020): distill images whose statistics at every
BatchNorm input match that BN's running mean and standard deviation, from standard noise.

The loss is the paper's (eq. 4): at every BatchNorm, the per-channel mean and standard
deviation of its input over the batch and positions against the BN's running mean and
``sqrt(running_var + eps)``, as squared L2 distances summed over BNs, plus the same for the
input against mean 0 and standard deviation 1. No class term. (ZeroQ's released code takes
the statistics per image instead; on the digits' 4x4 feature maps that variant made every
image's pooled features nearly equal and calibrated the last activation 4x too narrow: 6.6 dB
logit SQNR at W8A8 on the BN digits CNN against 36.3 dB for the batch form.) A model without
BatchNorm statistics has nothing to match and is refused with
:class:`~tvmq.errors.ConfigError`.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from tvmq.calib.base import SynthesisConfig, channel_dims, optimize, record, register_synthesizer
from tvmq.errors import ConfigError

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclasses.dataclass(frozen=True)
class ZeroQConfig(SynthesisConfig):
    """BatchNorm-statistics matching; fields as :class:`~tvmq.calib.SynthesisConfig`."""

    def check(self, model: nn.Module) -> None:
        if not bn_layers(model):
            raise ConfigError(f"ZeroQ matches BatchNorm running statistics and "
                              f"{type(model).__name__} has no BatchNorm layer with running "
                              "statistics", "use method='gzsq' (targets from the weights "
                              "alone, works without BatchNorm) or method='noise'")


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that hold running statistics."""
    return [m for m in model.modules()
            if isinstance(m, _BN) and m.track_running_stats and m.running_mean is not None]


def _norms(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances of the batch's channel means and standard deviations."""
    dims = channel_dims(x)
    got_std = x.var(dims, unbiased=False).add(1e-5).sqrt()
    return ((x.mean(dims) - mean) ** 2).sum() + ((got_std - std) ** 2).sum()


def _loss(model: nn.Module, bns: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    with record(bns) as calls:
        model(x)
    loss = _norms(x, torch.zeros(x.shape[1]), torch.ones(x.shape[1]))
    for bn, inp, _ in calls:
        loss = loss + _norms(inp, bn.running_mean, bn.running_var.add(bn.eps).sqrt())
    return loss


@register_synthesizer(ZeroQConfig, "zeroq")
def _zeroq(model: nn.Module, x0: torch.Tensor, cfg: ZeroQConfig, bar) -> torch.Tensor:
    cfg.check(model)
    bns = bn_layers(model)
    return optimize(x0, lambda x: _loss(model, bns, x), cfg, bar)
