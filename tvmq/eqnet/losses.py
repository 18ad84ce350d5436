"""EQ-Net's two losses: Weight Distribution Regularization (WDR) and the GPG distillation term.

WDR pulls each quantized layer's weight distribution toward the uniform distribution, which
every bit width's uniform grid fits well: kurtosis toward ``9/5 = 1.8`` (the uniform
distribution's) and skewness toward 0::

    kurt(w) = mean(((w - mu) / sigma)^4),   skew(w) = mean(((w - mu) / sigma)^3)
    WDR = k_rate * mean_l (kurt(w_l) - 1.8)^2 + s_rate * mean_l skew(w_l)^2

with the population standard deviation ``sigma`` (``ddof=0``; scipy's ``kurtosis(fisher=False)``
and ``skew``). GPG's distillation term is ``alpha * KL(softmax(teacher) || softmax(student))
+ (1 - alpha) * CE(student, labels)`` with the teacher's logits detached.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

UNIFORM_KURTOSIS = 1.8


def moments(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kurtosis, skewness)`` of all of ``w``'s elements (population moments)."""
    w = w.reshape(-1)
    z = (w - w.mean()) / w.std(unbiased=False).clamp(min=1e-12)
    return (z ** 4).mean(), (z ** 3).mean()


def wdr_loss(weights: Iterable[torch.Tensor], kurtosis_rate: float = 1.0,
             skewness_rate: float = 1.0, target: float = UNIFORM_KURTOSIS) -> torch.Tensor:
    """The WDR loss over ``weights`` (one tensor per layer), differentiable.

    Examples
    --------
    >>> loss = wdr_loss(supernet.quantized_weights().values(), kurtosis_rate=0.1)
    """
    kurt, skew = zip(*(moments(w) for w in weights))
    k, s = torch.stack(kurt), torch.stack(skew)
    return kurtosis_rate * ((k - target) ** 2).mean() + skewness_rate * (s ** 2).mean()


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                 alpha: float = 0.5) -> torch.Tensor:
    """``alpha * KL(teacher || student) + (1 - alpha) * CE(student, labels)`` (batch mean);
    ``teacher`` logits are detached."""
    kl = F.kl_div(F.log_softmax(student, dim=1), F.softmax(teacher.detach(), dim=1),
                  reduction="batchmean")
    return alpha * kl + (1 - alpha) * F.cross_entropy(student, labels)
