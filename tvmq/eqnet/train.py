"""Supernet training: Group Progressive Guidance (GPG) steps with the WDR regularizer.

One GPG step, for one batch, accumulates the gradients of a chain of subnets before a
single optimizer step (EQ-Net, Alg. 1)::

    condition c  ~ the space's granularity / symmetry choices
    largest(c):           CE(logits_0, y)
    random(c) x (n - 2):  alpha * KL(logits_{i-1} || logits_i) + (1 - alpha) * CE(logits_i, y)
    smallest(c):          the same, guided by the last random subnet
    + WDR on the quantized (BN-folded) weights

Each subnet is guided by the previous, slightly larger-on-average one, so the smallest is
not asked to match the largest directly.
"""
from __future__ import annotations

import dataclasses
import random

import torch
import torch.nn.functional as F

from tvmq.eqnet.losses import distill_loss, wdr_loss
from tvmq.eqnet.supernet import Supernet
from tvmq.errors import ConfigError
from tvmq.quant.qat import _param_groups
from tvmq.train import sgd_loop


@dataclasses.dataclass(frozen=True)
class GPGConfig:
    """Knobs of a GPG step.

    Parameters
    ----------
    num_subnets : int
        Subnets per step: the largest, ``num_subnets - 2`` random ones, the smallest (>= 2).
    alpha : float
        Weight of the KL term against cross-entropy for the guided subnets.
    kurtosis_rate, skewness_rate : float
        WDR weights (0 turns WDR off).
    """

    num_subnets: int = 4
    alpha: float = 0.5
    kurtosis_rate: float = 0.01
    skewness_rate: float = 0.01

    def __post_init__(self):
        if not isinstance(self.num_subnets, int) or self.num_subnets < 2:
            raise ConfigError(f"num_subnets={self.num_subnets!r} leaves no chain",
                              "use GPGConfig(num_subnets=4) (largest, 2 random, smallest)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha={self.alpha!r} is outside [0, 1]",
                              "use GPGConfig(alpha=0.5)")
        if self.kurtosis_rate < 0 or self.skewness_rate < 0:
            raise ConfigError("WDR rates must be >= 0",
                              "use GPGConfig(kurtosis_rate=0.01, skewness_rate=0.01)")


def gpg_step(net: Supernet, x: torch.Tensor, y: torch.Tensor, rng: random.Random,
             cfg: GPGConfig = GPGConfig(), teacher_logits: torch.Tensor | None = None
             ) -> dict[str, float]:
    """Backpropagate one GPG step's losses (the caller zeroes and steps the optimizer).

    ``teacher_logits`` (optional, e.g. the float model's): the largest subnet is then
    distilled from them (:func:`distill_loss`) instead of trained on labels alone. Returns the
    loss of each chain member (``"largest"``, ``"random1"``, ..., ``"smallest"``) and ``"wdr"``.
    """
    out: dict[str, float] = {}
    if cfg.kurtosis_rate or cfg.skewness_rate:
        wdr = wdr_loss(net.quantized_weights().values(), cfg.kurtosis_rate, cfg.skewness_rate)
        wdr.backward()
        out["wdr"] = wdr.item()
    cond = {"per_channel": rng.choice(net.space.per_channel),
            "act_symmetric": rng.choice(net.space.act_symmetric)}
    net.set_subnet(net.largest(**cond))
    logits = net(x)
    loss = F.cross_entropy(logits, y) if teacher_logits is None else \
        distill_loss(logits, teacher_logits, y, cfg.alpha)
    loss.backward()
    out["largest"] = loss.item()
    if net.learn_joins == "largest":
        net.train_joins(False)  # shared 8-bit joins follow the largest subnet only
    try:
        _chain(net, x, y, rng, cfg, cond, logits, out)
    finally:
        net.train_joins(net.learn_joins != "none")
    return out


def _chain(net, x, y, rng, cfg, cond, logits, out) -> None:
    for i in range(1, cfg.num_subnets):
        last = i == cfg.num_subnets - 1
        net.set_subnet(net.smallest(**cond) if last else net.sample(rng, **cond))
        teacher, logits = logits.detach(), net(x)
        loss = distill_loss(logits, teacher, y, cfg.alpha)
        loss.backward()
        out["smallest" if last else f"random{i}"] = loss.item()


def train(net: Supernet, data, epochs: int = 10, lr: float = 5e-3, gpg: GPGConfig = GPGConfig(),
          batch_size: int = 64, seed: int = 0, weight_decay: float = 1e-4,
          calibration_batches: int = 4, progress: bool = True,
          teacher: torch.nn.Module | None = None) -> Supernet:
    """Train ``net`` with GPG steps (SGD, momentum 0.9, cosine schedule, a tqdm bar).

    ``teacher`` (optional): a float model the largest subnet is distilled from (the chain
    below it is guided as always); the reference trains the largest on labels only.

    Activation scales are initialized first (:meth:`Supernet.initialize`) unless they already
    are. Quantizer scales and offsets get no weight decay. Returns ``net`` in eval mode with
    its largest subnet switched on.

    Examples
    --------
    >>> net = eqnet.Supernet(fp32, eqnet.ElasticSpace())
    >>> eqnet.train(net, train_set, epochs=10, gpg=eqnet.GPGConfig(num_subnets=4))
    """
    if not isinstance(net, Supernet):
        raise ConfigError(f"train() needs a Supernet, got {type(net).__name__}",
                          "use eqnet.train(eqnet.Supernet(model, space), data)")
    if epochs < 0:
        raise ConfigError(f"epochs={epochs} is negative", "use epochs >= 0")
    acts = [q for q in _quantizers(net) if q.role == "act"]
    if not all(q.is_initialized() for q in acts):
        net.initialize(data, calibration_batches)
    rng = random.Random(seed)

    if teacher is not None:
        teacher.eval()

    def step(model, xb, yb):
        with torch.no_grad():
            soft = teacher(xb) if teacher is not None else None
        gpg_step(net, xb, yb, rng, gpg, soft)
        return None

    sgd_loop(net, data, _param_groups(net, weight_decay), epochs, lr, batch_size, seed,
             progress, desc="eqnet supernet", loss_fn=step)
    net.set_subnet(net.largest())
    return net.eval()


def _quantizers(net: Supernet):
    from tvmq.quant.api import quantizers

    return quantizers(net.model)
