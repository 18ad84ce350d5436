"""Uniform fake quantization with straight-through rounding, and the :class:`FakeQuantizer` module.

Rounding rule (everywhere in tvmq.quant): ``torch.round``, i.e. round half to even
(0.5 -> 0, 1.5 -> 2, 2.5 -> 2), which is what ONNX ``QuantizeLinear`` does, so the
PyTorch fake-quant model and the exported QDQ graph agree bit for bit.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from tvmq.quant.config import PerChannel, QuantSpec
from tvmq.quant.observers import Observer, RangeStats

# An offset-learned zero point must fit an 8-bit container together with its grid.
_CONTAINER_LEVELS = 255
_EPS = 1e-8


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``torch.round`` (half to even) forward, identity gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def grad_scale(t: torch.Tensor, g: float) -> torch.Tensor:
    """``t`` forward; gradient multiplied by ``g`` (LSQ's step-size gradient scaling)."""
    return (t - t * g).detach() + t * g


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               qmin: int, qmax: int) -> torch.Tensor:
    """``(clamp(round(x / s) + z, qmin, qmax) - z) * s`` with half-to-even rounding.

    This is ONNX ``DequantizeLinear(QuantizeLinear(x))`` on the grid ``[qmin, qmax]``;
    ``scale`` and ``zero_point`` broadcast against ``x`` (``z`` holds integers).
    Gradients: straight-through for ``x`` inside the range, LSQ's for ``scale``.
    """
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def grid(bits: int, signed: bool) -> tuple[int, int]:
    """The integer range of a ``bits``-bit grid: signed ``[-2^(b-1), 2^(b-1)-1]`` or ``[0, 2^b-1]``."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def qparams(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int,
            symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point mapping the range ``[lo, hi]`` onto ``[qmin, qmax]``.

    Symmetric: ``s = max(|lo|, |hi|) / qmax`` (``qmax`` of a signed grid, or of an unsigned
    grid when ``lo >= 0``), ``z = 0``. Asymmetric: the range is widened to contain 0, then
    ``s = (hi - lo) / (qmax - qmin)`` and ``z = clamp(round(qmin - lo / s), qmin, qmax)``.
    """
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs()) if qmin < 0 else hi.clamp(min=0)
        scale = (amax / qmax).clamp(min=_EPS)
        return scale, torch.zeros_like(scale)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=_EPS)
    return scale, torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)


class FakeQuantizer(nn.Module):
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
                 learn_scale: bool = False, learn_offset: bool = False):
        super().__init__()
        self.spec, self.role, self.observer = spec, role, observer
        self.learn_scale, self.learn_offset = learn_scale, learn_offset
        self.per_channel = isinstance(spec.granularity, PerChannel)
        self.observing = False  # PTQ calibration: record statistics, pass values through
        self.stats = RangeStats()
        self.qmin, self.qmax = grid(spec.bits, signed=spec.symmetric)
        self.register_buffer("initialized", torch.tensor(False))
        self.scale = nn.Parameter(torch.ones(1), requires_grad=learn_scale)
        self.offset = nn.Parameter(torch.zeros(1), requires_grad=learn_offset)
        self.register_buffer("zero_point", torch.zeros(1))

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
        scale, zp = self.effective_qparams(g)
        return fake_quant(x, self._shape(scale, x), self._shape(zp, x), self.qmin, self.qmax)

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

    def extra_repr(self) -> str:
        kind = "lsq+" if self.learn_offset else "lsq" if self.learn_scale else "fixed"
        gran = "per_channel" if self.per_channel else "per_tensor"
        return f"{self.role}, bits={self.bits}, grid=[{self.qmin}, {self.qmax}], {gran}, {kind}"
