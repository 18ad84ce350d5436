"""Plain supervised training and evaluation loops (used by the demo, QAT and tests)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tvmq import distributed as dist
from tvmq.data import Dataset


#: ``loss_fn(model, x, y)``: a scalar loss tensor (``sgd_loop`` backpropagates it), or None
#: when it called ``backward`` itself (several sub-networks per step)
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default loss of :func:`sgd_loop`: cross-entropy of ``model(x)`` against labels."""
    return nn.functional.cross_entropy(model(x), y)


def sgd_loop(model: nn.Module, data: Dataset, params, epochs: int, lr: float,
             batch_size: int = 64, seed: int = 0, progress: bool = True, desc: str = "train",
             before_epoch: Callable[[int], None] | None = None,
             loss_fn: LossFn | None = None,
             before_step: Callable[[int], None] | None = None) -> nn.Module:
    """SGD (momentum 0.9, cosine schedule) over ``data``; returns the model in eval mode.

    ``params`` is what ``torch.optim.SGD`` takes (parameters or param groups with their own
    weight decay); ``before_epoch(epoch)`` runs before each epoch (e.g. to freeze BN),
    ``before_step(step)`` before each optimizer step (e.g. to sample a sub-configuration).
    ``loss_fn(model, x, y)`` (default :func:`cross_entropy_loss`) returns the loss to
    backpropagate, or None when it ran ``backward`` itself. Distillation from a teacher::

        kd = lambda m, x, y: nn.functional.kl_div(m(x).log_softmax(1),
                                                  teacher(x).softmax(1), reduction="batchmean")
        sgd_loop(student, data, student.parameters(), 5, 1e-2, loss_fn=kd)

    Under ``torchrun --nproc_per_node N`` (see :mod:`tvmq.distributed`) each rank trains on
    its shard of every epoch with ``ceil(batch_size / N)`` samples per step, gradients
    averaged over the ranks, BN statistics and other untrained state made equal at each
    epoch end; only rank 0 shows the progress bar. Hooks run on every rank and must make
    the same choices there (seed any sampling in ``before_step`` / ``loss_fn`` identically).
    """
    torch.manual_seed(seed)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    loss_fn = loss_fn or cross_entropy_loss
    sharded = dist.maybe_init_process_group()
    loader = (dist.shard_loader(data, batch_size, seed) if sharded
              else data.loader(batch_size, shuffle=True, seed=seed))
    trained = [p for group in opt.param_groups for p in group["params"]]
    dist.broadcast_state(model)
    step = 0
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress or not dist.is_main(),
                      leave=False):
        if sharded:
            loader.sampler.set_epoch(epoch)
        if before_epoch is not None:
            before_epoch(epoch)
        model.train()
        for xb, yb in loader:
            if before_step is not None:
                before_step(step)
            opt.zero_grad()
            loss = loss_fn(model, xb, yb)
            if loss is not None:
                loss.backward()
            dist.average_gradients(trained)
            opt.step()
            if step == 0:  # quantizers that initialized from their rank's first batch
                dist.broadcast_state(model, opt)
            step += 1
        dist.sync_state(model)
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
