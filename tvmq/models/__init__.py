"""tvmq's small model zoo (plain PyTorch; torchvision does not work with the pinned torch).

>>> from tvmq import models
>>> net, shape = models.create("resnet18"), models.input_shape("resnet18")
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from tvmq.errors import TvmqError
from tvmq.models.digits import DigitsCNN
from tvmq.models.mobilenet import MobileNetV2
from tvmq.models.resnet import ResNet18, ResNet20


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str
    train_lr: float = 1e-2  # SGD learning rate of the model's training recipe
    train_epochs: int = 30  # epochs of the model's training recipe


ZOO: dict[str, ZooEntry] = {
    "digits_cnn": ZooEntry(lambda: DigitsCNN(batchnorm=True), (1, 1, 8, 8),
                           "digits CNN with BatchNorm, ReLU"),
    # Without BatchNorm the same recipe stalls at ~47% after 30 epochs; lr 5e-2 reaches ~96%.
    "digits_cnn_nobn": ZooEntry(lambda: DigitsCNN(batchnorm=False), (1, 1, 8, 8),
                                "digits CNN without BatchNorm", train_lr=5e-2),
    "digits_cnn_silu": ZooEntry(lambda: DigitsCNN(batchnorm=True, act="silu"), (1, 1, 8, 8),
                                "digits CNN with BatchNorm, SiLU (biased activations)"),
    "resnet20": ZooEntry(ResNet20, (1, 3, 32, 32), "ResNet-20, CIFAR-style"),
    # For data.digits(size=32); 22 quantizable layers. 8 epochs at lr 5e-2: 98.67% (seed 0,
    # Zen 3); an epoch is ~7 s on 2 idle cores (docs/performance.md).
    "resnet20_digits": ZooEntry(lambda: ResNet20(in_channels=1), (1, 1, 32, 32),
                                "ResNet-20, 1-channel stem, for digits(size=32)",
                                train_lr=5e-2, train_epochs=8),
    "resnet18": ZooEntry(ResNet18, (1, 3, 224, 224), "ResNet-18, ImageNet-style"),
    "mobilenet_v2": ZooEntry(MobileNetV2, (1, 3, 224, 224), "MobileNetV2, ImageNet-style"),
}


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise TvmqError(f"unknown zoo model {name!r}", f"use one of {', '.join(ZOO)}")
    return ZOO[name]


def create(name: str, seed: int = 0) -> nn.Module:
    """Build a zoo model with a deterministic random init, in eval mode."""
    torch.manual_seed(seed)
    model = _entry(name).factory().eval()
    _randomize_bn(model, seed)
    return model


def input_shape(name: str) -> tuple[int, ...]:
    """The zoo model's default input shape (batch 1, NCHW)."""
    return _entry(name).input_shape


def train_lr(name: str) -> float:
    """The SGD learning rate of the zoo model's training recipe (``tvmq.train.train(lr=...)``)."""
    return _entry(name).train_lr


def train_epochs(name: str) -> int:
    """The epochs of the zoo model's training recipe (``tvmq.train.train(epochs=...)``)."""
    return _entry(name).train_epochs


def _randomize_bn(model: nn.Module, seed: int) -> None:
    """Give BatchNorm non-trivial statistics so that folding them is actually tested."""
    gen = torch.Generator().manual_seed(seed + 1)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            mod.weight.data.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            mod.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


__all__ = ["ZOO", "create", "input_shape", "train_lr", "train_epochs",
           "DigitsCNN", "ResNet20", "ResNet18", "MobileNetV2"]
