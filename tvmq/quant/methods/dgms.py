"""DGMS: differentiable Gaussian-mixture weight sharing (Dong et al., ICML 2022).

Each quantized layer's weights are modelled by a mixture of ``K`` Gaussians with learnable
means ``mu_k``, deviations ``sigma_k`` and mixing weights ``pi_k``; component 0 is pinned at
mean 0 (it prunes). Following the reference implementation (RunpeiDong/DGMS,
``modeling/DGMS/GMM.py``):

* **responsibilities** ``r_k(w) = pi_k N(w; mu_k, sigma_k) / sum_j pi_j N(w; mu_j, sigma_j)``
  with ``pi = |pi| / sum |pi|`` (computed in log space here: the same value, no underflow
  when a deviation is tiny);
* **training** (soft): ``w_hat = sum_k softmax_k(r(w) / tau) * mu_k`` with temperature ``tau``
  (0.01 by default, as the reference): differentiable in ``w``, ``mu``, ``sigma`` and ``pi``,
  no straight-through estimator;
* **inference and export** (hard): ``w_hat = mu[argmax_k r_k(w)]`` (``argmax`` of the softmax
  is the ``argmax`` of ``r``), so the layer stores ``log2 K``-bit indices and a ``K``-entry
  table;
* **initialization**: k-means (K clusters, 1-D, Lloyd iterations seeded evenly over the range) on the
  weights; the center nearest 0 becomes the zero component; mixing weights from the cluster
  sizes and deviations from the clusters' spreads.

With integer activations (``activation=QuantSpec(8)``) ``freeze`` (at ``convert``) snaps the
centers to an int8 grid with one scale per layer, ``s = max|mu| / 127``, table
``round(mu / s)`` (half to even), so the table feeds integer dot products exactly. The export
(:mod:`tvmq.quant.export`) writes ``Gather(centers, Cast(indices))`` (float) or
``DequantizeLinear(Gather(int8 table, Cast(indices)), s)`` (integer activations).

>>> from tvmq.quant import QATConfig, quantize_, fit, export
>>> from tvmq.quant.methods import DGMSConfig
>>> quantize_(model, QATConfig(DGMSConfig(k=16), step="prepare"))
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tvmq.errors import ConfigError
from tvmq.quant.config import SUPPORTED_LAYERS, MethodConfig, PerTensor, QuantSpec, _call
from tvmq.quant.methods.uniform import FakeQuantizer
from tvmq.quant.observers import MSEObserver, Observer
from tvmq.quant.quantizer import Quantizer, grad_scale
from tvmq.quant.registry import register_method

MIN_K, MAX_K = 2, 256
#: weights the k-means initialization sees at most (a deterministic subsample beyond)
KMEANS_SAMPLES = 200_000
#: weights per chunk of the hard assignment (bounds the ``K x n`` responsibility matrix)
_CHUNK = 1 << 18
_SIGMA_MIN = 1e-6


@dataclasses.dataclass(frozen=True)
class CodebookWeight:
    """A weight stored as ``K``-entry table + indices: ``w_hat = table[indices] (* scale)``.

    ``indices``: uint8, the weight's shape, each in ``[0, K)``. ``centers``: float32 ``[K]``
    (entry 0 is the pruning component, 0.0). With integer activations, ``table`` (int8
    ``[K]``) and ``scale`` are set and ``centers == table * scale``; else both are None.
    ``channel_scale``: float32 ``[C_out]`` or None, a factor per output channel (a conv's
    folded BatchNorm, ``gamma / sigma``): ``w_hat[c] = table[indices[c]] * scale *
    channel_scale[c]`` (integer; exported as a per-channel ``DequantizeLinear`` scale) or
    ``centers[indices[c]] * channel_scale[c]`` (float; a ``Mul`` after the ``Gather``).
    """

    indices: np.ndarray
    centers: np.ndarray
    table: np.ndarray | None = None
    scale: float | None = None
    channel_scale: np.ndarray | None = None

    def weight(self) -> np.ndarray:
        """The float weight it stands for (float32), computed as the exported graph does:
        ``table[idx] * (scale * channel_scale)`` or ``centers[idx] * channel_scale``."""
        idx = self.indices.astype(np.int64)
        cs = None if self.channel_scale is None else \
            self.channel_scale.reshape((-1,) + (1,) * (idx.ndim - 1))
        if self.table is not None:
            step = np.float32(self.scale) if cs is None else np.float32(self.scale) * cs
            return self.table[idx].astype(np.float32) * step
        return self.centers[idx] if cs is None else self.centers[idx] * cs

    @property
    def k(self) -> int:
        return int(self.centers.size)

    @property
    def bits(self) -> int:
        """Bits of one index: ``log2 K``."""
        return int(round(math.log2(self.k)))


@dataclasses.dataclass(frozen=True)
class DGMSConfig(MethodConfig):
    """DGMS codebook weights (``k`` Gaussian components, ``log2 k``-bit indices).

    Parameters
    ----------
    k : int
        Mixture components = codebook entries, a power of two in 2..256 (one pinned at 0).
    temperature : float
        Softmax temperature of the soft assignment during training (> 0; 0.01 as the
        reference; smaller is harder).
    weight : QuantSpec
        The int8 grid the centers snap to when activations are integer: 8 bits, per tensor
        (one scale per layer), symmetric.
    activation : QuantSpec or None
        ``None`` (default): weights only, float activations. ``QuantSpec(8)``: integer
        activations (LSQ learned scale), centers snapped to ``weight``'s grid at convert.
    first_last_bits : int or None
        The first and last layers get ``k = 2**first_last_bits`` (and activations raised
        to that many bits); ``None``: no special case.
    """

    k: int = 16
    temperature: float = 0.01
    weight: QuantSpec | None = QuantSpec(8, PerTensor())
    activation: QuantSpec | None = None
    weight_observer: Observer = MSEObserver()
    act_observer: Observer = MSEObserver()

    def __post_init__(self):
        super().__post_init__()
        k = self.k
        if (not isinstance(k, int) or isinstance(k, bool) or not MIN_K <= k <= MAX_K
                or k & (k - 1)):
            fixed = 16
            if isinstance(k, (int, float)) and k >= 1:
                fixed = int(min(MAX_K, max(MIN_K, 1 << round(math.log2(k)))))
            raise ConfigError(f"DGMSConfig k={k!r} is not a power of two in {MIN_K}..{MAX_K}",
                              f"use {_call(self, k=fixed)}")
        t = self.temperature
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"DGMSConfig temperature={t!r} must be a positive number",
                              f"use {_call(self, temperature=0.01)}")
        w = self.weight
        if (w is None or w.bits != 8 or not isinstance(w.granularity, PerTensor)
                or not w.symmetric):
            raise ConfigError(f"DGMSConfig weight={w!r}: the codebook's integer grid is int8, "
                              "one scale per layer",
                              f"use {_call(self, weight=QuantSpec(8, PerTensor()))} "
                              "(the codebook size is k)")
        bad = [t for t in self.layer_types if t not in SUPPORTED_LAYERS]
        if bad:
            raise ConfigError(f"DGMSConfig cannot put a codebook on {bad}",
                              f"use {_call(self, layer_types=SUPPORTED_LAYERS)}")

    @property
    def index_bits(self) -> int:
        return int(round(math.log2(self.k)))

    def with_bits(self, bits: int) -> "DGMSConfig":
        """This config with at least ``2**bits`` components and ``bits``-bit activations."""
        act = self.activation
        return dataclasses.replace(
            self, k=max(self.k, 1 << bits),
            activation=act if act is None or act.bits >= bits else act.with_bits(bits))


def kmeans_1d(x: torch.Tensor, k: int, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on 1-D values, seeded evenly over ``[min, max]`` (deterministic; the
    linear initialization Deep Compression found best for weight sharing: quantile seeds
    crowd the dense center and lose the large weights). Returns ``(centers [k],
    assignment [n])``; an empty cluster keeps its center."""
    x = x.reshape(-1).float()
    lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    centers = lo + (torch.arange(k, dtype=torch.float32) + 0.5) * (hi - lo) / k
    for _ in range(iters):
        assign = torch.argmin((x[:, None] - centers[None, :]).abs(), dim=1)
        sums = torch.zeros(k).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
        if torch.allclose(new, centers, rtol=0, atol=1e-12):
            break
        centers = new
    assign = torch.argmin((x[:, None] - centers[None, :]).abs(), dim=1)
    return centers, assign


class GMMQuantizer(Quantizer):
    """A layer's Gaussian mixture over its weights (see the module docstring).

    Parameters
    ----------
    k : int
        Components (codebook entries), component 0 pinned at mean 0.
    temperature : float
    integer_table : bool
        Snap the centers to an int8 grid (one scale) at :meth:`freeze`.
    """

    # one codebook per layer: BN's per-channel factor is applied after it (see Quantizer)
    bn_after_quant = True

    def __init__(self, k: int, temperature: float, integer_table: bool):
        super().__init__("weight")
        self.k, self.temperature, self.integer_table = k, float(temperature), integer_table
        self.mu = nn.Parameter(torch.zeros(k - 1))
        self.sigma = nn.Parameter(torch.ones(k - 1))
        self.sigma_zero = nn.Parameter(torch.ones(1))
        self.pi = nn.Parameter(torch.full((k,), 1.0 / k))  # [0]: the zero component
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("frozen", torch.tensor(False))
        self.register_buffer("snap_scale", torch.tensor(0.0))  # 0: centers not snapped
        self.register_buffer("channel_scale", torch.ones(0))  # empty: no per-channel factor

    @property
    def bits(self) -> int:
        return int(round(math.log2(self.k)))

    # -- initialization --------------------------------------------------------------------
    @torch.no_grad()
    def init_from(self, w: torch.Tensor) -> None:
        x = w.detach().reshape(-1).float()
        if x.numel() > KMEANS_SAMPLES:  # deterministic subsample
            x = x[torch.linspace(0, x.numel() - 1, KMEANS_SAMPLES).long()]
        centers, assign = kmeans_1d(x, self.k)
        zero = int(torch.argmin(centers.abs()))
        counts = torch.bincount(assign, minlength=self.k).float()
        pinned = centers.clone()
        pinned[zero] = 0.0
        # deviation of each cluster around its (pinned) center, unbiased as the reference
        sq = torch.zeros(self.k).index_add_(0, assign, (x - pinned[assign]) ** 2)
        spread = (sq / (counts - 1).clamp(min=1)).sqrt()
        floor = max(float(x.abs().max()) / (4 * self.k), _SIGMA_MIN)
        spread = torch.where(counts > 1, spread.clamp(min=floor), torch.full_like(spread, floor))
        pi = (counts / counts.sum().clamp(min=1)).clamp(min=1e-4)
        others = [i for i in range(self.k) if i != zero]
        self.mu.data = centers[others].clone()
        self.sigma.data = spread[others].clone()
        self.sigma_zero.data = spread[zero].reshape(1).clone()
        self.pi.data = torch.cat([pi[zero].reshape(1), pi[others]])
        self.initialized.fill_(True)

    def is_initialized(self) -> bool:
        return bool(self.initialized)

    # -- the mixture -------------------------------------------------------------------------
    def centers(self) -> torch.Tensor:
        """``[K]`` centers, entry 0 the zero component (snapped to the int8 grid once frozen
        with integer activations)."""
        if float(self.snap_scale) > 0:
            return self._table() * self.snap_scale
        return torch.cat([torch.zeros(1, dtype=self.mu.dtype), self.mu])

    def _table(self) -> torch.Tensor:
        """The int8 table (as float values) of the snapped centers: ``round(mu / s)``."""
        mu = torch.cat([torch.zeros(1, dtype=self.mu.dtype), self.mu])
        return torch.clamp(torch.round(mu / self.snap_scale), -127, 127)

    def _params(self, g: float = 1.0):
        """``(mu, sigma, pi)`` over all ``K`` components; gradients scaled by ``g``."""
        mu = torch.cat([torch.zeros(1, dtype=self.mu.dtype), grad_scale(self.mu, g)])
        sigma = grad_scale(torch.cat([self.sigma_zero, self.sigma]), g)
        return mu, sigma.abs().clamp(min=_SIGMA_MIN), grad_scale(self.pi, g)

    def _log_resp(self, x: torch.Tensor, g: float = 1.0) -> torch.Tensor:
        """``[n, K]`` log of ``pi_k N(x; mu_k, sigma_k)`` (up to a constant)."""
        mu, sigma, pi = self._params(g)
        pi = pi.abs()
        pi = (pi / pi.sum().clamp(min=1e-12)).clamp(min=1e-12)
        return torch.log(pi) - torch.log(sigma) - (x[:, None] - mu) ** 2 / (2 * sigma ** 2)

    def assign(self, w: torch.Tensor) -> torch.Tensor:
        """Hard assignment: the index (``[0, K)``, int64, ``w``'s shape) of each weight."""
        x = w.detach().reshape(-1)
        out = torch.empty(x.numel(), dtype=torch.int64)
        with torch.no_grad():
            for i in range(0, x.numel(), _CHUNK):
                out[i:i + _CHUNK] = torch.argmax(self._log_resp(x[i:i + _CHUNK]), dim=1)
        return out.reshape(w.shape)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.init_from(w)
        if self.training and not bool(self.frozen):
            # the mixture's gradients sum over every weight of the layer: scaled by
            # 1/sqrt(n) (as LSQ scales its step size's), so one learning rate suits both
            g = 1.0 / math.sqrt(max(w.numel(), 1))
            resp = torch.softmax(self._log_resp(w.reshape(-1), g), dim=1)  # r_k(w), sum 1
            soft = torch.softmax(resp / self.temperature, dim=1)
            return self._scaled((soft @ self._params(g)[0]).reshape(w.shape))
        idx = self.assign(w)
        s = float(self.snap_scale)
        if s > 0 and self.channel_scale.numel():  # table[idx] * (s * f), as the export's DQ
            return self._table()[idx] * self._scaled(self.snap_scale.expand(w.shape[0]).reshape(
                (-1,) + (1,) * (w.dim() - 1)))
        return self._scaled(self.centers()[idx])

    def _scaled(self, w: torch.Tensor) -> torch.Tensor:
        if not self.channel_scale.numel():
            return w
        return w * self.channel_scale.reshape((-1,) + (1,) * (w.dim() - 1))

    @torch.no_grad()
    def set_channel_scale(self, scale: torch.Tensor) -> None:
        self.channel_scale = scale.detach().reshape(-1).float().clone()

    # -- the Quantizer protocol ------------------------------------------------------------
    @torch.no_grad()
    def freeze(self) -> None:
        super().freeze()
        self.frozen.fill_(True)
        if self.integer_table:
            amax = float(self.mu.abs().max()) if self.mu.numel() else 0.0
            self.snap_scale.fill_(max(amax, 1e-8) / 127.0)

    def describe(self, tensor: torch.Tensor | None = None) -> CodebookWeight:
        idx = self.assign(tensor).numpy().astype(np.uint8)
        centers = self.centers().detach().numpy().astype(np.float32)
        cs = self.channel_scale.numpy().astype(np.float32) if self.channel_scale.numel() else None
        if float(self.snap_scale) > 0:
            table = self._table().detach().numpy().astype(np.int8)
            return CodebookWeight(idx, centers, table, float(np.float32(float(self.snap_scale))),
                                  cs)
        return CodebookWeight(idx, centers, channel_scale=cs)

    def extra_repr(self) -> str:
        return (f"k={self.k} ({self.bits}-bit indices), temperature={self.temperature}, "
                f"{'int8 table' if self.integer_table else 'float table'}")


@register_method(DGMSConfig)
def _build_dgms(cfg: DGMSConfig, spec: QuantSpec, role: str) -> Quantizer:
    if role == "weight":
        return GMMQuantizer(cfg.k, cfg.temperature, integer_table=cfg.activation is not None)
    return FakeQuantizer(spec, role, cfg.act_observer, learn_scale=True)
