"""Small CNNs for the 8x8 digits data set (trains in seconds on a CPU)."""
from __future__ import annotations

import torch
from torch import nn

_ACTS = {"relu": nn.ReLU, "silu": nn.SiLU, "hardswish": nn.Hardswish, "leaky_relu": nn.LeakyReLU}


def _act(name: str) -> nn.Module:
    if name not in _ACTS:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(_ACTS)}")
    return _ACTS[name]()


class DigitsCNN(nn.Module):
    """conv(1->16)-BN-act, conv(16->32, s2)-BN-act, conv(32->32)-BN-act, global pool, linear(32->10).

    Parameters
    ----------
    batchnorm : bool
        Insert BatchNorm after every conv (``False`` gives the BN-free variant that zero-shot
        calibration must handle without BN statistics).
    act : str
        ``"relu"``, ``"silu"``, ``"hardswish"`` or ``"leaky_relu"``.
    """

    def __init__(self, batchnorm: bool = True, act: str = "relu", num_classes: int = 10):
        super().__init__()
        chans = [(1, 16, 1), (16, 32, 2), (32, 32, 1)]
        layers: list[nn.Module] = []
        for cin, cout, stride in chans:
            layers.append(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(_act(act))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
