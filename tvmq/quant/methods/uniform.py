"""Uniform fake quantization with fixed scales from observers (the ``FakeQuantConfig`` method).

:class:`FakeQuantizer` is the uniform-grid :class:`~tvmq.quant.quantizer.Quantizer`; LSQ and
LSQ+ (:mod:`tvmq.quant.methods.lsq`) are the same grid with a learned scale (and offset).

Rounding rule (everywhere in tvmq.quant): ``torch.round``, i.e. round half to even
(0.5 -> 0, 1.5 -> 2, 2.5 -> 2), which is what ONNX ``QuantizeLinear`` does, so the
PyTorch fake-quant model and the exported QDQ graph agree bit for bit.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from tvmq.quant.config import MethodConfig, PerChannel, QuantSpec
from tvmq.quant.observers import Observer, RangeStats
from tvmq.quant.quantizer import (_EPS, Quantizer, UniformActivation, UniformWeight, fake_quant,
                                  grad_scale, grid, qparams, round_ste)
from tvmq.quant.registry import register_method

# An offset-learned zero point must fit an 8-bit container together with its grid.
_CONTAINER_LEVELS = 255


@dataclasses.dataclass(frozen=True)
class FakeQuantConfig(MethodConfig):
    """Uniform fake-quant with fixed scales from observers (min/max tracked during QAT).

    ``x_hat = (clamp(round(x / s) + z, qmin, qmax) - z) * s`` where ``round`` rounds half to
    even (``torch.round``), exactly as ONNX QuantizeLinear does.
    """


class FakeQuantizer(Quantizer):
    """Fake-quantizes a weight or activation tensor; scale (and offset) fixed or learned.

    Parameters
    ----------
    spec : QuantSpec
    role : {"weight", "act"}
    observer : Observer
        Picks the range that initializes (or, when not learned, sets) the parameters.
    learn_scale : bool
        LSQ: ``scale`` is a parameter whose gradient is scaled by ``1 / sqrt(N * qmax)``
        (``N``: elements per channel for weights, per sample for activations).
    learn_offset : bool
        LSQ+: also learn ``offset`` (beta); its zero point ``z = round(-beta / s)`` is an
        integer (straight-through), so ``beta = -z * s`` is exactly representable in ONNX.
    """

    def __init__(self, spec: QuantSpec, role: str, observer: Observer,
                 learn_scale: bool = False, learn_offset: bool = False,
                 bn_after: bool | None = None):
        super().__init__(role)
        self._bn_after = bn_after  # None: per-channel weights (see bn_after_quant)
        self.spec, self.observer = spec, observer
        self.learn_scale, self.learn_offset = learn_scale, learn_offset
        self.per_channel = isinstance(spec.granularity, PerChannel)
        self.observing = False  # PTQ calibration: record statistics, pass values through
        self.stats = RangeStats()
        self.qmin, self.qmax = grid(spec.bits, signed=spec.symmetric)
        self.register_buffer("initialized", torch.tensor(False))
        self.scale = nn.Parameter(torch.ones(1), requires_grad=learn_scale)
        self.offset = nn.Parameter(torch.zeros(1), requires_grad=learn_offset)
        self.register_buffer("zero_point", torch.zeros(1))
        self.register_buffer("channel_scale", torch.ones(0))  # empty: no BN factor

    @property
    def bn_after_quant(self) -> bool:
        """Per-channel weights quantize the conv's own weight; BN's factor scales each output
        channel afterwards (same grid family as quantizing the folded weight, but the grid
        no longer moves with BN's running variance during QAT: 2-bit ResNet-20 stopped
        collapsing, docs/methods.md). Per-tensor weights keep the folded form, so that the
        export stays per tensor as configured; ``bn_after=False`` at construction keeps it
        for per-channel weights too (scales learned on folded weights: EQ-Net)."""
        return self._bn_after is not False and self.role == "weight" and self.per_channel

    @property
    def bits(self) -> int:
        return self.spec.bits

    # -- initialization from statistics ---------------------------------------------------
    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) if self.per_channel else x.reshape(1, -1)

    def set_from_stats(self) -> None:
        """Set ``scale`` / zero point (and the grid's signedness) from the recorded statistics."""
        stats = self.stats
        if stats.lo is None:
            return
        if self.spec.symmetric and self.role == "act":
            self.qmin, self.qmax = grid(self.bits, signed=bool((stats.lo < 0).any()))
        vals = stats.values()
        lo, hi = self.observer.choose(stats, lambda l, h: self._row_mse(vals, l, h))
        if self.learn_offset:
            scale = ((hi - lo) / (self.qmax - self.qmin)).clamp(min=_EPS)
            offset = lo - self.qmin * scale
            self.offset.data = offset.clone()
            zp = torch.zeros_like(scale)
        else:
            scale, zp = qparams(lo, hi, self.qmin, self.qmax, self.spec.symmetric)
        self.scale.data = scale.clone()
        self.zero_point = zp.clone()
        self.initialized.fill_(True)

    def _row_mse(self, vals, lo, hi) -> torch.Tensor:
        if self.learn_offset:
            scale = ((hi - lo) / (self.qmax - self.qmin)).clamp(min=_EPS)
            zp = torch.round(self.qmin - lo / scale)
        else:
            scale, zp = qparams(lo, hi, self.qmin, self.qmax, self.spec.symmetric)
        xq = fake_quant(vals, scale[:, None], zp[:, None], self.qmin, self.qmax)
        return ((xq - vals) ** 2).mean(dim=1)

    def init_from(self, x: torch.Tensor) -> None:
        """Initialize from one tensor (a weight, or the first activation batch)."""
        self.stats = RangeStats()
        self.stats.update(self._rows(x))
        self.set_from_stats()
        self.stats = RangeStats()  # do not keep weight copies around

    # -- forward ----------------------------------------------------------------------------
    def effective_qparams(self, g: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` as the forward pass uses them (zero point integer-valued).

        ``g`` scales the gradients of the learned scale and offset (LSQ); 1 leaves them alone.
        """
        scale = grad_scale(self.scale, g).abs().clamp(min=_EPS)
        if not self.learn_offset:
            return scale, self.zero_point
        offset = grad_scale(self.offset, g)
        lo_z, hi_z = self.qmax - _CONTAINER_LEVELS, _CONTAINER_LEVELS
        return scale, torch.clamp(round_ste(-offset / scale), lo_z, hi_z)

    def _shape(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.per_channel and t.numel() > 1:
            return t.reshape(-1, *([1] * (x.dim() - 1)))
        return t.reshape(())

    def _grad_factor(self, x: torch.Tensor) -> float:
        n = x[0].numel() if self.role == "act" else x.numel() // self.scale.numel()
        return 1.0 / math.sqrt(n * self.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.stats.update(self._rows(x))
            return x
        if not self.learn_scale and self.training:
            self._track(x)
        elif not bool(self.initialized):
            self.init_from(x)
        g = self._grad_factor(x) if self.learn_scale and self.training else 1.0
        scale, zp = (self._shape(t, x) for t in self.effective_qparams(g))
        step = None
        if self.channel_scale.numel():  # converted: (q - z) * (s * f), as the exported DQ
            step = scale * self.channel_scale.reshape(-1, *([1] * (x.dim() - 1)))
        return fake_quant(x, scale, zp, self.qmin, self.qmax, step)

    @torch.no_grad()
    def set_channel_scale(self, scale: torch.Tensor) -> None:
        if not self.bn_after_quant:
            raise ValueError("only per-channel weight quantizers take a channel scale")
        self.channel_scale = scale.detach().reshape(-1).float().clone()

    @torch.no_grad()
    def _track(self, x: torch.Tensor) -> None:
        """Fixed-scale quantizers in QAT: weights follow their current range, activations an EMA."""
        if self.role == "weight" or not bool(self.initialized):
            self.init_from(x)
            return
        old_s, old_z = self.scale.data.clone(), self.zero_point.clone()
        self.init_from(x)
        self.scale.data = 0.9 * old_s + 0.1 * self.scale.data
        self.zero_point = torch.round(0.9 * old_z + 0.1 * self.zero_point)

    # -- the Quantizer protocol ------------------------------------------------------------
    def is_initialized(self) -> bool:
        return bool(self.initialized)

    def begin_observing(self, observer: Observer | None = None) -> None:
        self.observing, self.stats = True, RangeStats()
        if observer is not None:
            self.observer = observer

    def end_observing(self) -> None:
        self.observing = False
        self.set_from_stats()
        self.stats = RangeStats()

    def describe(self, tensor: torch.Tensor | None = None):
        """:class:`UniformActivation`, or :class:`UniformWeight` of ``tensor``'s integers."""
        scale, z = (t.detach() for t in self.effective_qparams())
        if self.role == "act":
            return UniformActivation(float(scale.reshape(-1)[0]), int(z.reshape(-1)[0]),
                                     self.qmin, self.qmax)
        shape = (-1,) + (1,) * (tensor.dim() - 1) if self.per_channel else ()
        ints = torch.clamp(torch.round(tensor.detach() / scale.reshape(shape)) + z.reshape(shape),
                           self.qmin, self.qmax)
        dtype = np.int8 if self.qmin < 0 else np.uint8
        if self.channel_scale.numel():  # BN's factor joins the per-channel scale
            rows = self.channel_scale.numel()
            sc = (scale.reshape(-1).expand(rows) * self.channel_scale).numpy().astype(np.float32)
            zp = z.reshape(-1).expand(rows).numpy().astype(dtype)
        elif self.per_channel and scale.numel() > 1:
            sc, zp = scale.numpy().astype(np.float32), z.numpy().astype(dtype)
        else:
            sc, zp = np.float32(scale.reshape(-1)[0].item()), dtype(z.reshape(-1)[0].item())
        return UniformWeight(ints.numpy().astype(dtype), np.asarray(sc), np.asarray(zp), self.bits)

    def extra_repr(self) -> str:
        kind = "lsq+" if self.learn_offset else "lsq" if self.learn_scale else "fixed"
        gran = "per_channel" if self.per_channel else "per_tensor"
        return f"{self.role}, bits={self.bits}, grid=[{self.qmin}, {self.qmax}], {gran}, {kind}"



def observer_for(cfg: MethodConfig, role: str) -> Observer:
    """The config's weight or activation observer."""
    return cfg.weight_observer if role == "weight" else cfg.act_observer


@register_method(FakeQuantConfig)
def _build(cfg: FakeQuantConfig, spec: QuantSpec, role: str) -> FakeQuantizer:
    return FakeQuantizer(spec, role, observer_for(cfg, role))
