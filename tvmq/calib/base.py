"""What every synthesizer shares: the config base, the registry, the distillation loop.

A synthesizer is a frozen config dataclass (subclass of :class:`SynthesisConfig`) plus a
handler registered for that type with :func:`register_synthesizer`; the user-facing names
(``"gzsq"``, ``"zeroq"``, ``"noise"``) are entries of one registry, :data:`METHODS`.
A handler gets the model (a private copy, eval mode, parameters frozen), the batch to start
from and the config, and returns the synthesized batch.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from tvmq.errors import ConfigError

#: ``fn(model, x0, config, bar) -> x``: synthesizes one batch starting from ``x0``
Handler = Callable[[nn.Module, torch.Tensor, "SynthesisConfig", tqdm], torch.Tensor]
_HANDLERS: dict[type, Handler] = {}
#: user-facing method names -> default config (filled by the method modules)
METHODS: dict[str, "SynthesisConfig"] = {}


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """Fields shared by every synthesizer.

    Parameters
    ----------
    iters : int
        Optimizer steps per batch (0: the starting noise, unoptimized).
    lr : float
        Adam learning rate on the pixels (inputs are assumed standardized: unit scale).
    batch_size : int
        Images optimized together; batch statistics are taken over one batch.
    """

    iters: int = 200
    lr: float = 0.1
    batch_size: int = 256

    def __post_init__(self):
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 0:
            raise ConfigError(f"iters={self.iters!r} is not an int >= 0",
                              f"use {_call(self, iters=200)}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"lr={self.lr!r} is not a positive number",
                              f"use {_call(self, lr=0.1)}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 2:
            raise ConfigError(f"batch_size={self.batch_size!r} is not an int >= 2 (batch "
                              "statistics need two images)", f"use {_call(self, batch_size=256)}")


    def check(self, model: nn.Module) -> None:
        """Raise :class:`~tvmq.errors.ConfigError` if this method cannot run on ``model``
        (called before any work, so a CLI can refuse before training)."""


def register_synthesizer(config_type: type, name: str | None = None):
    """Register ``fn(model, x0, config, bar) -> x`` for a config type (and its default config
    under ``name`` in :data:`METHODS`)."""
    def wrap(fn: Handler) -> Handler:
        _HANDLERS[config_type] = fn
        if name is not None:
            METHODS[name] = config_type()
        return fn
    return wrap


def resolve(method) -> SynthesisConfig:
    """A config from a method name or a config object."""
    if isinstance(method, SynthesisConfig):
        if type(method) not in _HANDLERS:
            name = type(method).__name__
            raise ConfigError(f"no synthesizer registered for {name}",
                              f"decorate a handler with @register_synthesizer({name})")
        return method
    if method not in METHODS:
        raise ConfigError(f"unknown zero-shot method {method!r}",
                          f"use one of {', '.join(map(repr, METHODS))} or a config object")
    return METHODS[method]


def handler(config: SynthesisConfig) -> Handler:
    return _HANDLERS[type(config)]


def _call(obj, **changes) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in changes.items())
    return f"{type(obj).__name__}({shown})"


# -- the shared pieces of a distillation -------------------------------------------------------
def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose parameters take no gradient (the user's model stays untouched:
    no ``.grad``, no BN statistics updated, training mode kept)."""
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@contextlib.contextmanager
def record(modules: list[nn.Module]) -> Iterator[list]:
    """Collect ``(module, input, output)`` of every call of ``modules`` while inside."""
    calls: list = []
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.append((mod, i[0], o)))
             for m in modules]
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


def channel_dims(t: torch.Tensor) -> list[int]:
    """Every axis but the channel axis (1): batch and spatial positions."""
    return [0] + list(range(2, t.dim()))


def standard_prior(x: torch.Tensor) -> torch.Tensor:
    """Inputs are standardized: per-channel mean 0 and standard deviation 1 (the prior ZeroQ
    puts on its input layer; what ``(x - mean) / std`` preprocessing produces)."""
    dims = channel_dims(x)
    return (x.mean(dims) ** 2).sum() + ((x.std(dims) - 1) ** 2).sum()


def optimize(x0: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
             config: SynthesisConfig, bar: tqdm) -> torch.Tensor:
    """Adam on the pixels of ``x0`` for ``config.iters`` steps of ``loss_fn(x)``."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=config.lr)
    for _ in range(config.iters):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        loss.backward()
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3g}", refresh=False)
    return x.detach()
