"""Data-parallel training under ``torchrun``: rank queries, and keeping ranks in step.

Under ``torchrun --nproc_per_node N`` every process runs the same script;
:func:`tvmq.train.sgd_loop` (and so ``tvmq.train.train``, ``tvmq.quant.fit``,
``tvmq.eqnet.train``) then shards each epoch's data over the ranks and keeps them identical:

* gradients are averaged over the ranks after ``loss_fn`` and before the optimizer step
  (:func:`average_gradients`, one all-reduce per step), which is what DDP computes; it also
  covers loss functions that run several backward passes through the plain module (the
  EQ-Net GPG step), which DDP's wrapper would silently leave unsynchronized;
* state no gradient trains is made identical at every epoch end (:func:`sync_state`):
  BatchNorm running statistics are averaged over the ranks (``SyncBatchNorm`` refuses CPU
  tensors in torch 2.13, so the forward normalizes with each rank's own batch, as DDP does
  without it), every other buffer and untrained parameter (observer-set scales, zero points,
  ``initialized`` flags) is copied from rank 0;
* rank 0's whole state is copied to the others before the first step and after it
  (:func:`broadcast_state`): a model built with another seed, or a quantizer that
  initializes itself from its first batch (each rank sees a different one), starts equal.

Everything here is a no-op in a single process. ``maybe_init_process_group`` creates the
group (gloo, CPU) from torchrun's environment when nobody has yet.

>>> from tvmq import distributed as dist
>>> dist.maybe_init_process_group()      # under torchrun: True
>>> if dist.is_main():
...     tq.export(model, x, "q.onnx")    # only rank 0 writes
"""
from __future__ import annotations

import atexit
import functools
import os

import torch
from torch import nn

#: the backend of a group this module creates: the tensors tvmq trains are on the CPU
BACKEND = "gloo"


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group exists."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def maybe_init_process_group() -> bool:
    """Join torchrun's process group (gloo) if ``WORLD_SIZE > 1`` and none exists yet.

    Returns
    -------
    bool
        Whether this process is one of several ranks (after the call).
    """
    if not is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group(BACKEND)
        atexit.register(_destroy)
    return world_size() > 1


def _destroy() -> None:
    if is_initialized():
        torch.distributed.destroy_process_group()


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return torch.distributed.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """Whether this process is rank 0: the one that prints, shows progress and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if world_size() > 1:
        torch.distributed.barrier()


@torch.no_grad()
def average_gradients(params) -> None:
    """Replace each parameter's gradient by its mean over the ranks (one all-reduce).

    A parameter without a gradient on some ranks gets zeros there; one without a gradient on
    every rank keeps ``None`` (so the optimizer skips it, as in one process).
    """
    params = [p for p in params if p.requires_grad]
    if world_size() == 1 or not params:
        return
    dtype = functools.reduce(torch.promote_types, [p.dtype for p in params])
    flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
            for p in params]
    has = torch.tensor([float(p.grad is not None) for p in params], dtype=dtype)
    buf = torch.cat(flat + [has])
    torch.distributed.all_reduce(buf)
    grads, has = buf[:-len(params)] / world_size(), buf[-len(params):]
    for p, g, h in zip(params, grads.split([p.numel() for p in params]), has):
        if h > 0:
            p.grad = g.reshape(p.shape).to(p.dtype)


def _bn_stats(module: nn.Module) -> set[int]:
    """ids of the BatchNorm running means and variances (averaged, not copied)."""
    out = set()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            out |= {id(m.running_mean), id(m.running_var)}
    return out


@torch.no_grad()
def sync_state(module: nn.Module) -> None:
    """Make the state no gradient trains identical on every rank.

    BatchNorm running means and variances: averaged over the ranks (each saw its own
    shard). Every other buffer, and every parameter with ``requires_grad=False`` (e.g. a
    fixed-scale quantizer's observer-set scale): rank 0's value. Trained parameters are
    left alone: averaged gradients keep them equal.
    """
    if world_size() == 1:
        return
    averaged = _bn_stats(module)
    for t in module.buffers():
        if id(t) in averaged:
            torch.distributed.all_reduce(t)
            t.div_(world_size())
        else:
            torch.distributed.broadcast(t, 0)
    for p in module.parameters():
        if not p.requires_grad:
            torch.distributed.broadcast(p.data, 0)


@torch.no_grad()
def broadcast_state(module: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Copy rank 0's parameters, buffers (and the optimizer's per-parameter state, e.g. SGD
    momentum) to every rank, as DDP does when it wraps a module."""
    if world_size() == 1:
        return
    for t in [*module.parameters(), *module.buffers()]:
        torch.distributed.broadcast(t.data, 0)
    for state in (optimizer.state.values() if optimizer is not None else ()):
        for value in state.values():
            if torch.is_tensor(value):
                torch.distributed.broadcast(value, 0)


def all_gather_dict(local: dict) -> dict:
    """The union of every rank's ``local`` dict (picklable values; keys disjoint)."""
    if world_size() == 1:
        return dict(local)
    parts: list = [None] * world_size()
    torch.distributed.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}


def per_rank_batch(batch_size: int, ranks: int | None = None) -> int:
    """Each rank's share of a ``batch_size`` batch: ``ceil(batch_size / ranks)``, so a step
    still averages over (at least) ``batch_size`` samples and the learning rate keeps its
    meaning (``batch_size`` is the global batch)."""
    ranks = world_size() if ranks is None else ranks
    return -(-batch_size // ranks)


def shard_loader(data, batch_size: int, seed: int = 0, ranks: int | None = None,
                 this_rank: int | None = None) -> torch.utils.data.DataLoader:
    """A shuffling loader over this rank's shard of ``data`` (a :class:`tvmq.data.Dataset`).

    A ``DistributedSampler`` (seeded by ``seed``; call ``loader.sampler.set_epoch(epoch)``
    before each epoch) gives every rank a disjoint shard of the same permutation, padded so
    that every rank runs the same number of steps (a rank with one step more would wait
    forever in the gradient all-reduce). ``ranks`` / ``this_rank`` default to the group's.
    """
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    ranks = world_size() if ranks is None else ranks
    ds = TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    sampler = DistributedSampler(ds, num_replicas=ranks,
                                 rank=rank() if this_rank is None else this_rank,
                                 shuffle=True, seed=seed, drop_last=False)
    return DataLoader(ds, batch_size=per_rank_batch(batch_size, ranks), sampler=sampler)
