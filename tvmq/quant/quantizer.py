"""The quantizer protocol (:class:`Quantizer`), export descriptions, and uniform-grid math.

Every quantizer that ``prepare`` puts into a layer is a :class:`Quantizer`; ``calibrate``,
``convert`` and ``export`` call only its methods, never a grid's fields, so a quantizer whose
values are not on a uniform grid (a codebook) or whose bit width changes from step to step
(a supernet) plugs in without touching them. Implementations live one per method in
:mod:`tvmq.quant.methods` (uniform fake-quant, LSQ, LSQ+).

Rounding rule (everywhere in tvmq.quant): ``torch.round``, i.e. round half to even
(0.5 -> 0, 1.5 -> 2, 2.5 -> 2), which is what ONNX ``QuantizeLinear`` does, so the
PyTorch fake-quant model and the exported QDQ graph agree bit for bit.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

_EPS = 1e-8


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``torch.round`` (half to even) forward, identity gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def grad_scale(t: torch.Tensor, g: float) -> torch.Tensor:
    """``t`` forward; gradient multiplied by ``g`` (LSQ's step-size gradient scaling)."""
    return (t - t * g).detach() + t * g


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               qmin: int, qmax: int, step: torch.Tensor | None = None) -> torch.Tensor:
    """``(clamp(round(x / s) + z, qmin, qmax) - z) * s`` with half-to-even rounding.

    This is ONNX ``DequantizeLinear(QuantizeLinear(x))`` on the grid ``[qmin, qmax]``;
    ``scale`` and ``zero_point`` broadcast against ``x`` (``z`` holds integers).
    Gradients: straight-through for ``x`` inside the range, LSQ's for ``scale``.
    ``step`` (default ``scale``) multiplies the integers instead: ``s * f`` when a folded
    BatchNorm factor ``f`` scales the quantized weight, computed as the exported DQ does.
    """
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * (scale if step is None else step)


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


class Quantizer(nn.Module):
    """What a quantizer must provide to be trained, calibrated, frozen and exported.

    Parameters
    ----------
    role : {"weight", "act"}
        A weight quantizer sees the layer's (BN-folded) float weight; an activation
        quantizer sees the layer's input.

    Life cycle, and who calls what:

    1. ``prepare`` builds it (the method's registered handler) and, for a weight, calls
       :meth:`init_from` with the float weight;
    2. training calls :meth:`forward` (it must be differentiable, e.g. straight-through);
    3. ``calibrate`` calls :meth:`begin_observing`, runs float batches through the model
       (``forward`` must then return its input unchanged), then :meth:`end_observing`;
    4. ``convert`` checks :meth:`is_initialized` and calls :meth:`freeze`;
    5. ``export`` calls :meth:`describe` and hands the description to the export handler
       registered for its type (:func:`tvmq.quant.register_export`).
    """

    #: ``True`` for a weight quantizer that quantizes a conv's own weight and lets the
    #: BatchNorm that follows scale each output channel afterwards (:class:`QuantConvBn2d`:
    #: ``w_hat = q(w) * gamma / sigma``), instead of quantizing the BN-folded weight: a table
    #: shared by the whole layer (a codebook) then survives BN folding, the factor becoming a
    #: per-channel scale. Such a quantizer gets that factor at convert
    #: (:meth:`set_channel_scale`) and describes the scaled weight.
    bn_after_quant: bool = False

    def __init__(self, role: str):
        super().__init__()
        if role not in ("weight", "act"):
            raise ValueError(f"role={role!r}: use 'weight' or 'act'")
        self.role = role

    @property
    def bits(self) -> int:
        """The bit width the forward currently quantizes to."""
        raise NotImplementedError

    def init_from(self, x: torch.Tensor) -> None:
        """Initialize the parameters from one tensor (a weight, or an activation batch)."""
        raise NotImplementedError

    def is_initialized(self) -> bool:
        raise NotImplementedError

    def begin_observing(self, observer=None) -> None:
        """Calibration starts; ``observer`` (if given) replaces the quantizer's own."""

    def end_observing(self) -> None:
        """Calibration ends: set the parameters from what was observed."""

    def freeze(self) -> None:
        """Stop learning and tracking; afterwards ``forward`` is exactly what export writes."""
        for p in self.parameters():
            p.requires_grad_(False)

    def set_channel_scale(self, scale: torch.Tensor) -> None:
        """From now on ``forward`` multiplies output channel ``c`` of the quantized weight by
        ``scale[c]`` (the folded BN factor; only for quantizers with ``bn_after_quant``)."""
        raise NotImplementedError

    def describe(self, tensor: torch.Tensor | None = None):
        """The export description: for a weight quantizer, of ``tensor`` (the float weight)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class UniformActivation:
    """An activation on the grid ``[qmin, qmax]``: ``x_hat = (clamp(round(x/s) + z) - z) * s``.

    Exported as ``[Clip ->] QuantizeLinear -> DequantizeLinear`` (8-bit container).
    """

    scale: float
    zero_point: int
    qmin: int
    qmax: int


@dataclasses.dataclass(frozen=True)
class UniformWeight:
    """A weight's integers ``q`` with ``w_hat = (q - zp) * scale`` (per output channel when
    ``scale`` has one entry per row). Exported as ``DequantizeLinear`` of an integer
    initializer: int8/uint8, or int4/uint4 (opset 21) when ``bits <= 4``."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
