"""Plain supervised training and evaluation loops (used by the demo, QAT and tests)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tvmq.data import Dataset


def sgd_loop(model: nn.Module, data: Dataset, params, epochs: int, lr: float,
             batch_size: int = 64, seed: int = 0, progress: bool = True, desc: str = "train",
             before_epoch: Callable[[int], None] | None = None) -> nn.Module:
    """SGD (momentum 0.9, cosine schedule) with cross-entropy over ``data``.

    ``params`` is what ``torch.optim.SGD`` takes (parameters or param groups with their own
    weight decay); ``before_epoch(epoch)`` runs before each epoch (e.g. to freeze BN).
    Returns the model in eval mode.
    """
    torch.manual_seed(seed)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    loader = data.loader(batch_size, shuffle=True, seed=seed)
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        if before_epoch is not None:
            before_epoch(epoch)
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
        sched.step()
    return model.eval()


def train(model: nn.Module, data: Dataset, epochs: int = 30, lr: float = 1e-2,
          batch_size: int = 64, seed: int = 0, progress: bool = True,
          weight_decay: float = 1e-4) -> nn.Module:
    """Train ``model`` with SGD + cosine schedule and cross-entropy; returns it in eval mode."""
    params = [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    return sgd_loop(model, data, params, epochs, lr, batch_size, seed, progress)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` on ``x`` as a NumPy array."""
    model.eval()
    outs = [model(torch.from_numpy(x[i:i + batch_size])).numpy()
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(axis=1) == labels).mean() * 100.0)
