"""GZSQ: calibration images distilled from the weights alone (no BatchNorm statistics).

Each conv/linear layer's pre-activation gets a per-channel band for its standard deviation,
computed from that layer's weights and the per-channel variances of its input as synthesized
so far (``docs/zeroshot.md`` derives both ends):

* lower end, *independent inputs*: ``var_c = sum_k w_ck**2 v_k`` (every patch entry
  uncorrelated; zero padding counted by running the layer's own convolution on the variance
  map);
* upper end, *filter-shaped inputs*: the input's variance lies along the layer's filter
  directions, shared equally (covariance ``T / C_out * sum_j u_j u_j^T`` with ``u_j`` the
  unit filters and ``T = k * sum_i v_i`` the same total variance):
  ``var_c = T / C_out * sum_j (w_c . u_j)**2``.

Beside the band: a Gaussian-tail prior on every pre-activation (nothing beyond
``tail_sigmas`` standard deviations of its channel), a class term (each image's assigned
class wins by one predicted logit standard deviation), and the input prior (standardized
channels, ``|x| <= bound``). A BatchNorm that follows a conv is folded first, as tvmq
deploys it; its statistics are never matched.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from tvmq.calib.base import (SynthesisConfig, channel_dims, optimize, record,
                             register_synthesizer, standard_prior)
from tvmq.errors import ConfigError
from tvmq.quant.graph import fold_conv_bn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclasses.dataclass(frozen=True)
class GZSQConfig(SynthesisConfig):
    """Weight-derived distillation (see the module docstring for the loss).

    Parameters
    ----------
    bound : float
        Input prior: pixels of standardized images stay within ``+-bound`` (ImageNet's
        normalized pixels reach 2.64, MNIST's 2.82, the digits' 1.86).
    tail_sigmas : float
        Pre-activations beyond this many standard deviations of their channel are penalized.
    stat_weight, tail_weight, class_weight : float
        Weights of the band, tail and class terms (the input prior has weight 1).
    fold_bn : bool
        Fold conv -> BatchNorm pairs before deriving the targets (the deployed weights).

    Examples
    --------
    >>> synthesize(model, 256, GZSQConfig(iters=200, class_weight=0.0), input_shape=(1, 8, 8))
    """

    bound: float = 3.0
    floor: float = 0.3
    tail_sigmas: float = 4.0
    stat_weight: float = 1.0
    tail_weight: float = 1.0
    class_weight: float = 1.0
    fold_bn: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.floor, (int, float)) or not 0 <= self.floor <= 1:
            raise ConfigError(f"floor={self.floor!r} is outside [0, 1]",
                              "use GZSQConfig(floor=0.3) (0: the independent-input end alone)")
        for field in ("bound", "tail_sigmas"):
            val = getattr(self, field)
            if not isinstance(val, (int, float)) or not val > 0:
                raise ConfigError(f"{field}={val!r} is not a positive number",
                                  f"use GZSQConfig({field}={getattr(GZSQConfig, field)})")
        for field in ("stat_weight", "tail_weight", "class_weight"):
            val = getattr(self, field)
            if not isinstance(val, (int, float)) or val < 0:
                raise ConfigError(f"{field}={val!r} is not a number >= 0",
                                  f"use GZSQConfig({field}=1.0) (0 switches the term off)")


# -- targets ------------------------------------------------------------------------------------
def weight_band(layer: nn.Module, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper weight-derived standard deviation of each output channel of ``layer``
    (``nn.ConvNd`` or ``nn.Linear``) for an input with ``inp``'s per-channel statistics."""
    inp = inp.detach()
    if isinstance(layer, nn.Linear):
        inp = inp.reshape(-1, inp.shape[-1])
        v = inp.var(0)
        w = layer.weight
        indep = (w ** 2) @ v
        shaped = _shaped_energy(w[None]).reshape(-1) * v.sum()
        return indep.sqrt(), torch.maximum(shaped, indep).sqrt()
    dims = channel_dims(inp)
    m, v = inp.mean(dims), inp.var(dims)
    ones = (1, -1) + (1,) * (inp.dim() - 2)
    like = (1,) + tuple(inp.shape[1:])
    mean_map = layer._conv_forward(m.view(ones).expand(like), layer.weight, layer.bias)
    var_map = layer._conv_forward(v.view(ones).expand(like), layer.weight ** 2, None)
    spread = mean_map.var(channel_dims(mean_map), unbiased=False)  # padding moves the mean
    indep = var_map.mean(channel_dims(var_map))
    groups, k = layer.groups, layer.weight[0, 0].numel()
    w = layer.weight.reshape(groups, -1, layer.weight[0].numel())
    group_var = v.reshape(groups, -1).sum(1)[:, None] * k
    unpadded = ((layer.weight ** 2).reshape(groups, w.shape[1], -1, k).sum(-1)
                * v.reshape(groups, 1, -1)).sum(-1)
    padded = indep.reshape(groups, -1) / unpadded.clamp_min(1e-12)
    shaped = (_shaped_energy(w) * group_var * padded).reshape(-1)
    return (indep + spread).sqrt(), torch.maximum(shaped, indep).add(spread).sqrt()


def _shaped_energy(w: torch.Tensor) -> torch.Tensor:
    """``sum_j (w_c . u_j)**2 / C_out`` per group (``w``: groups, out, fan_in; ``u_j`` the unit
    filters). Unit filters keep channel c's target unchanged when another channel's filter is
    rescaled (a ReLU network computes the same function after such a rescaling)."""
    unit = w / w.norm(dim=2, keepdim=True).clamp_min(1e-12)
    return ((w @ unit.transpose(1, 2)) ** 2).sum(-1) / w.shape[1]


# -- the loss -----------------------------------------------------------------------------------
def _layer_terms(layer, inp, out, cfg: GZSQConfig):
    """The band and tail terms of one layer call, and its lower target (the margin of the
    class term when this layer computes the logits)."""
    lo, hi = weight_band(layer, inp)
    lo = torch.maximum(lo, cfg.floor * hi)
    if isinstance(layer, nn.Linear):
        out = out.reshape(-1, out.shape[-1])
    dims = channel_dims(out)
    sd = out.std(dims)
    band = (F.relu(lo - sd) ** 2 + F.relu(sd - hi) ** 2).mean() / (lo * hi).mean().clamp_min(1e-12)
    view = (1, -1) + (1,) * (out.dim() - 2)
    ref = sd.detach().clamp_min(1e-6).view(view)
    excess = F.relu((out - out.mean(dims).detach().view(view)).abs() - cfg.tail_sigmas * ref)
    return band, ((excess / ref) ** 2).mean(), lo


def _class_term(out: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Hinge: the assigned class's logit wins by ``margin`` (then stops pushing)."""
    own = out.gather(1, labels[:, None])[:, 0]
    rest = out.masked_fill(F.one_hot(labels, out.shape[1]).bool(), float("-inf")).amax(1)
    return F.relu(margin - (own - rest)).mean() / margin


def _loss(model, layers, x, labels, cfg: GZSQConfig) -> torch.Tensor:
    with record(layers) as calls:
        out = model(x)
    loss = standard_prior(x) + (F.relu(x.abs() - cfg.bound) ** 2).mean()
    margin = None
    for layer, inp, o in calls:
        band, tail, lo = _layer_terms(layer, inp, o, cfg)
        loss = loss + cfg.stat_weight * band + cfg.tail_weight * tail
        if o is out:
            margin = lo.mean().clamp_min(1e-3)
    if cfg.class_weight and out.dim() == 2 and out.shape[1] > 1:
        margin = margin if margin is not None else torch.tensor(1.0)
        loss = loss + cfg.class_weight * _class_term(out, labels, margin)
    return loss


@register_synthesizer(GZSQConfig, "gzsq")
def _gzsq(model: nn.Module, x0: torch.Tensor, cfg: GZSQConfig, bar) -> torch.Tensor:
    if cfg.fold_bn:
        model = fold_conv_bn(model)
        for p in model.parameters():
            p.requires_grad_(False)
    layers = [m for m in model.modules() if isinstance(m, _CONV + (nn.Linear,))]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no conv or linear layer to derive "
                          "targets from", "use method='noise' for this model")
    with torch.no_grad():
        classes = model(x0[:1]).shape[-1]
    labels = torch.arange(len(x0)) % max(classes, 1)
    x0 = x0.clamp(-cfg.bound, cfg.bound)
    return optimize(x0, lambda x: _loss(model, layers, x, labels, cfg), cfg, bar)
