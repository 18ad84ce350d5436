"""Plain supervised training and evaluation loops (used by the demo, QAT and tests)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tvmq.data import Dataset


def train(model: nn.Module, data: Dataset, epochs: int = 30, lr: float = 1e-2,
          batch_size: int = 64, seed: int = 0, progress: bool = True,
          weight_decay: float = 1e-4) -> nn.Module:
    """Train ``model`` with SGD + cosine schedule and cross-entropy; returns it in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    loader = data.loader(batch_size, shuffle=True, seed=seed)
    model.train()
    for _ in tqdm(range(epochs), desc="train", disable=not progress, leave=False):
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
        sched.step()
    return model.eval()


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
