"""The elastic quantizer: one module, a learned scale (and offset) per bit width, bits set per step.

EQ-Net's quantizer keeps one LSQ step size for every bit width 2..8 (and, for asymmetric
activations, one offset per bit width), each initialized by a clipping search, and switches
between them as the supernet samples a subnet. The forward at ``b`` bits is exactly the
LSQ / LSQ+ fake quantizer of :mod:`tvmq.quant.methods` with that bit width's parameters::

    x_hat = (clamp(round(x / s_b) + z_b, qmin_b, qmax_b) - z_b) * s_b

with ``torch.round`` (round half to even, as ONNX ``QuantizeLinear``), ``z_b = 0``
(symmetric) or ``z_b = round(-beta_b / s_b)`` (asymmetric, straight-through), and the step
size's gradient scaled by ``1 / sqrt(N * qmax_b)`` (LSQ). Weights are symmetric on the signed
grid, per output channel or per tensor; activations are per tensor, symmetric (unsigned grid
when the calibration data were never negative) or asymmetric (unsigned grid).

:meth:`ElasticQuantizer.to_fixed` turns the current state into an ordinary
:class:`~tvmq.quant.FakeQuantizer` (LSQ or LSQ+), which is how a chosen subnet is deployed.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from tvmq.quant.config import MAX_BITS, MIN_BITS, PerChannel, PerTensor, QuantSpec
from tvmq.quant.methods import FakeQuantizer, LSQConfig, LSQPlusConfig
from tvmq.quant.observers import RangeStats
from tvmq.quant.quantizer import _EPS, Quantizer, fake_quant, grad_scale, grid, round_ste

N_BITS = MAX_BITS - MIN_BITS + 1  # one learned scale per bit width 2..8
#: clipping candidates of the initial search: the range shrunk by 0..79 % (as EQ-Net)
CLIP_FACTORS = tuple(1.0 - 0.01 * i for i in range(80))
_CONTAINER_LEVELS = 255


def _mse_search(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int,
                symmetric: bool, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale, offset)`` minimizing the quantization MSE over the clipped ranges
    ``[f * lo, f * hi]`` (``f`` in :data:`CLIP_FACTORS`); ``offset`` is 0 when symmetric."""
    qmin, qmax = grid(bits, signed=signed if symmetric else False)
    best = torch.full_like(lo, float("inf"))
    scale, offset = torch.ones_like(lo), torch.zeros_like(lo)
    for f in CLIP_FACTORS:
        if symmetric:
            amax = torch.maximum(lo.abs(), hi.abs()) if signed else hi.clamp(min=0)
            s, beta = (f * amax / qmax).clamp(min=_EPS), torch.zeros_like(lo)
            z = torch.zeros_like(lo)
        else:
            l, h = (f * lo).clamp(max=0), (f * hi).clamp(min=0)
            s = ((h - l) / (qmax - qmin)).clamp(min=_EPS)
            z = torch.clamp(torch.round(-l / s), qmax - _CONTAINER_LEVELS, _CONTAINER_LEVELS)
            beta = -z * s
        err = ((fake_quant(rows, s[:, None], z[:, None], qmin, qmax) - rows) ** 2).mean(dim=1)
        better = err < best
        best = torch.where(better, err, best)
        scale, offset = torch.where(better, s, scale), torch.where(better, beta, offset)
    return scale, offset


class ElasticQuantizer(Quantizer):
    """A weight or activation quantizer whose bit width and form change from step to step.

    Parameters
    ----------
    role : {"weight", "act"}
    bits : int
        The initial bit width (:meth:`set` changes it).
    channels : int
        Output channels of the weight (rows of its per-channel scales); 1 for activations.

    Examples
    --------
    >>> q = ElasticQuantizer("weight", bits=8, channels=conv.out_channels)
    >>> q.init_from(conv.weight.detach())          # clipping search at every bit width
    >>> q.set(bits=3, per_channel=False); w3 = q(conv.weight)
    """

    def __init__(self, role: str, bits: int = 8, channels: int = 1):
        super().__init__(role)
        self._bits, self.per_channel, self.symmetric = bits, role == "weight", True
        self.observing, self.stats = False, RangeStats()
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed", torch.tensor(role == "weight"))
        if role == "weight":
            self.scale_channel = nn.Parameter(torch.ones(channels, N_BITS))
            self.scale_tensor = nn.Parameter(torch.ones(N_BITS))
        else:
            self.scale_sym = nn.Parameter(torch.ones(N_BITS))
            self.scale_asym = nn.Parameter(torch.ones(N_BITS))
            self.offset_asym = nn.Parameter(torch.zeros(N_BITS))

    # -- the switch ------------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self._bits

    def set(self, bits: int, per_channel: bool | None = None,
            symmetric: bool | None = None) -> None:
        """Quantize to ``bits`` from now on; ``per_channel`` (weights) / ``symmetric``
        (activations) switch the form when given (ignored for the other role)."""
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(f"bits={bits} is outside {MIN_BITS}..{MAX_BITS}")
        self._bits = int(bits)
        if per_channel is not None and self.role == "weight":
            self.per_channel = bool(per_channel)
        if symmetric is not None and self.role == "act":
            self.symmetric = bool(symmetric)

    def grid(self) -> tuple[int, int]:
        """The integer range of the current form."""
        return grid(self._bits, signed=bool(self.signed) and self.symmetric)

    # -- initialization: clipping search at every bit width -----------------------------------
    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """Set every bit width's scale (and offset) by the MSE clipping search on ``x``."""
        if self.role == "weight":
            if self.scale_channel.shape[0] != x.shape[0]:
                self.scale_channel = nn.Parameter(x.new_ones(x.shape[0], N_BITS))
            rows = x.detach().reshape(x.shape[0], -1).float()
            self._init_rows(rows, self.scale_channel, None, symmetric=True)
            self._init_rows(rows.reshape(1, -1), self.scale_tensor, None, symmetric=True)
        else:
            rows = x.detach().reshape(1, -1).float()
            self._init_act(rows, rows.min(dim=1).values, rows.max(dim=1).values)
        self.initialized.fill_(True)

    def _init_act(self, rows, lo, hi) -> None:
        self.signed.fill_(bool((lo < 0).any()))
        self._init_rows(rows, self.scale_sym, None, True, lo, hi)
        self._init_rows(rows, self.scale_asym, self.offset_asym, False, lo, hi)

    def _init_rows(self, rows, scale: nn.Parameter, offset: nn.Parameter | None,
                   symmetric: bool, lo=None, hi=None) -> None:
        lo = rows.min(dim=1).values if lo is None else lo
        hi = rows.max(dim=1).values if hi is None else hi
        for b in range(MIN_BITS, MAX_BITS + 1):
            s, beta = _mse_search(rows, lo, hi, b, symmetric, bool(self.signed))
            scale.data[..., b - MIN_BITS] = s if scale.dim() > 1 else s.reshape(())
            if offset is not None:
                offset.data[b - MIN_BITS] = beta.reshape(())

    def is_initialized(self) -> bool:
        return bool(self.initialized)

    def begin_observing(self, observer=None) -> None:
        self.observing, self.stats = True, RangeStats()

    def end_observing(self) -> None:
        self.observing = False
        if self.stats.lo is not None:
            self._init_act(self.stats.values(), self.stats.lo, self.stats.hi)
            self.initialized.fill_(True)
        self.stats = RangeStats()

    # -- forward -----------------------------------------------------------------------------------
    def qparams(self, g: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` of the current form (per channel: one per row), with the
        gradient of the learned parameters scaled by ``g``."""
        k = self._bits - MIN_BITS
        if self.role == "weight":
            raw = self.scale_channel[:, k] if self.per_channel else self.scale_tensor[k]
            scale = grad_scale(raw, g).abs().clamp(min=_EPS)
            return scale, torch.zeros_like(scale)
        if self.symmetric:
            scale = grad_scale(self.scale_sym[k], g).abs().clamp(min=_EPS)
            return scale, torch.zeros_like(scale)
        scale = grad_scale(self.scale_asym[k], g).abs().clamp(min=_EPS)
        qmax = self.grid()[1]
        zp = round_ste(-grad_scale(self.offset_asym[k], g) / scale)
        return scale, torch.clamp(zp, qmax - _CONTAINER_LEVELS, _CONTAINER_LEVELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.stats.update(x.detach().reshape(1, -1))
            return x
        if not bool(self.initialized):
            self.init_from(x)
        qmin, qmax = self.grid()
        g = 1.0
        if self.training:
            per = x[0].numel() if self.role == "act" else \
                (x[0].numel() if self.per_channel else x.numel())
            g = 1.0 / math.sqrt(per * qmax)
        scale, zp = self.qparams(g)
        if scale.dim() == 1:
            shape = (-1,) + (1,) * (x.dim() - 1)
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        return fake_quant(x, scale, zp, qmin, qmax)

    # -- deployment ----------------------------------------------------------------------------------
    def spec(self) -> QuantSpec:
        """The :class:`~tvmq.quant.QuantSpec` of the current form."""
        gran = PerChannel() if self.role == "weight" and self.per_channel else PerTensor()
        return QuantSpec(self._bits, gran, self.role == "weight" or self.symmetric)

    @torch.no_grad()
    def to_fixed(self) -> FakeQuantizer:
        """An LSQ (or, asymmetric activations, LSQ+) :class:`~tvmq.quant.FakeQuantizer`
        holding this bit width's learned scale (and offset): same forward, exports as QDQ."""
        spec = self.spec()
        offset = self.role == "act" and not self.symmetric
        cfg = LSQPlusConfig if offset else LSQConfig
        # bn_after=False: the supernet's scales were learned on BN-folded weights
        fixed = FakeQuantizer(spec, self.role, cfg().act_observer, learn_scale=True,
                              learn_offset=offset, bn_after=False)
        fixed.qmin, fixed.qmax = self.grid()
        k = self._bits - MIN_BITS
        if self.role == "weight":
            raw = self.scale_channel[:, k] if self.per_channel else self.scale_tensor[k:k + 1]
            fixed.scale.data = raw.abs().clamp(min=_EPS).clone()
            fixed.zero_point = torch.zeros_like(fixed.scale.data)
        elif offset:
            fixed.scale.data = self.scale_asym[k:k + 1].abs().clamp(min=_EPS).clone()
            fixed.offset.data = self.offset_asym[k:k + 1].clone()
        else:
            fixed.scale.data = self.scale_sym[k:k + 1].abs().clamp(min=_EPS).clone()
        fixed.initialized.fill_(True)
        return fixed.train(self.training)

    def describe(self, tensor: torch.Tensor | None = None):
        """The export description of the current form (that of :meth:`to_fixed`)."""
        return self.to_fixed().describe(tensor)

    def extra_repr(self) -> str:
        form = ("per_channel" if self.per_channel else "per_tensor") if self.role == "weight" \
            else ("sym" if self.symmetric else "asym")
        return f"{self.role}, bits={self._bits}, {form}"
