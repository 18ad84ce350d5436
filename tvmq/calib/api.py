"""``synthesize``: a calibration set made from the model alone, as a :class:`tvmq.data.Dataset`."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tvmq import distributed as dist
from tvmq.calib.base import METHODS, SynthesisConfig, frozen_copy, handler, resolve
from tvmq.data import Dataset
from tvmq.errors import ConfigError


def synthesize(model: nn.Module, n: int = 256, method: str | SynthesisConfig = "gzsq", *,
               input_shape=None, iters: int | None = None, lr: float | None = None,
               seed: int = 0, batch_size: int | None = None, progress: bool = True) -> Dataset:
    """Synthesize ``n`` calibration images for ``model`` without any data.

    Parameters
    ----------
    model : nn.Module
        The trained float model (not modified: synthesis runs on a frozen copy).
    n : int
        Number of images (at least 2).
    method : {"gzsq", "zeroq", "noise"} or SynthesisConfig
        ``"gzsq"``: weight-derived targets, works without BatchNorm; ``"zeroq"``: match
        BatchNorm running statistics (refused on a model without BatchNorm); ``"noise"``:
        standard normal pixels. A config object (``GZSQConfig(...)``) sets every knob.
    input_shape : tuple of int
        One input's shape, ``(C, H, W)`` or ``(1, C, H, W)``; inputs are assumed standardized
        (per-channel mean 0, standard deviation 1), as the method priors say.
    iters, lr, batch_size : optional
        Override the method config's Adam steps per batch, learning rate, and batch size.
    seed : int
        Seeds the starting noise; the same seed gives the same images (under torchrun
        too: the ranks split the batches and gather them, see :mod:`tvmq.distributed`).
    progress : bool
        Show a progress bar over the synthesis steps.

    Returns
    -------
    Dataset
        ``x`` (n, C, H, W) float32; ``y`` the model's predicted class of each image.

    Examples
    --------
    >>> calib = synthesize(model, 256, "gzsq", input_shape=(1, 8, 8))
    >>> quantize_(model, PTQConfig(get_preset("w8a8"), calibration=calib))
    """
    cfg = _with_overrides(resolve(method), iters=iters, lr=lr, batch_size=batch_size)
    shape = _check(model, n, input_shape)
    cfg.check(model)
    frozen = frozen_copy(model)
    _probe(frozen, shape)
    gen = torch.Generator().manual_seed(seed)
    starts = [torch.randn(b, *shape, generator=gen) for b in _batch_sizes(n, cfg.batch_size)]
    # batches are independent: under torchrun each rank optimizes every N-th one, and all
    # ranks gather the same images a single process makes
    dist.maybe_init_process_group()
    mine = range(dist.rank(), len(starts), dist.world_size())
    name = next((k for k, v in METHODS.items() if type(v) is type(cfg)), type(cfg).__name__)
    bar = tqdm(total=cfg.iters * len(mine), desc=f"synthesize {name}", leave=False,
               disable=not progress or cfg.iters == 0 or not dist.is_main())
    with bar, torch.enable_grad():
        done = {i: handler(cfg)(frozen, starts[i], cfg, bar) for i in mine}
    done = dist.all_gather_dict(done)
    x = torch.cat([done[i] for i in range(len(starts))])
    with torch.no_grad():
        out = torch.cat([frozen(x[i:i + 256]) for i in range(0, len(x), 256)])
    classes = out.shape[-1] if out.dim() == 2 else 1
    y = out.argmax(-1) if out.dim() == 2 else torch.zeros(len(x), dtype=torch.long)
    return Dataset(x.numpy().astype(np.float32), y.numpy().astype(np.int64),
                   [str(i) for i in range(classes)])


def check(model: nn.Module, method: str | SynthesisConfig = "gzsq") -> None:
    """Raise :class:`~tvmq.errors.ConfigError` if ``method`` cannot run on ``model`` (ZeroQ on
    a model without BatchNorm), before any training or synthesis is spent."""
    resolve(method).check(model)


def _with_overrides(cfg: SynthesisConfig, **fields) -> SynthesisConfig:
    changes = {k: v for k, v in fields.items() if v is not None}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _batch_sizes(n: int, batch: int) -> list[int]:
    """``n`` split into nearly equal batches of about ``batch`` (none smaller than 2)."""
    count = min(-(-n // batch), n // 2)
    base, extra = divmod(n, count)
    return [base + (i < extra) for i in range(count)]


def _check(model, n, input_shape) -> tuple[int, ...]:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"synthesize needs a torch.nn.Module, got {type(model).__name__}",
                          "pass the trained float model (e.g. tvmq.models.create(name) trained)")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ConfigError(f"n={n!r} is not an int >= 2 (batch statistics need two images)",
                          "use synthesize(model, n=256, ...)")
    if input_shape is None:
        raise ConfigError("synthesize needs input_shape (a model does not record it)",
                          "pass input_shape=(C, H, W), e.g. tvmq.models.input_shape(name) "
                          "for a zoo model")
    shape = tuple(input_shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if not shape or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                            and d > 0 for d in shape):
        raise ConfigError(f"input_shape={input_shape!r} is not a tuple of positive ints",
                          "pass input_shape=(C, H, W) or (1, C, H, W)")
    return tuple(int(d) for d in shape)


def _probe(model: nn.Module, shape: tuple[int, ...]) -> None:
    try:
        with torch.no_grad():
            model(torch.zeros(2, *shape))
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"the model rejects inputs of shape {(2, *shape)}: {err}",
                          "pass the model's own input_shape=(C, H, W)") from err
