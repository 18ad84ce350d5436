"""User-facing quantization presets, in one registry.

``wXaY``: LSQ (learned scale), weights per-channel symmetric, activations per-tensor
symmetric (unsigned grid when never negative). ``wXaY_lsqplus``: LSQ+ (learned scale and
offset) for activations. ``w8a8_minmax``: fixed min/max scales, asymmetric activations
(onnxruntime-style). ``dgms_kK``: DGMS codebook weights with ``K`` entries (``log2 K``-bit
indices), float activations; ``dgms_kK_a8``: the same with 8-bit activations (int8 table).
First and last layers stay at 8 bits (``first_last_bits=8``; a DGMS layer: ``K = 256``).
"""
from __future__ import annotations

from tvmq.errors import ConfigError
from tvmq.quant.config import MethodConfig, PerChannel, QuantSpec
from tvmq.quant.methods import DGMSConfig, FakeQuantConfig, LSQConfig, LSQPlusConfig


def _lsq(w: int, a: int) -> LSQConfig:
    return LSQConfig(weight=QuantSpec(w, PerChannel()), activation=QuantSpec(a))


def _lsqplus(w: int, a: int) -> LSQPlusConfig:
    return LSQPlusConfig(weight=QuantSpec(w, PerChannel()),
                         activation=QuantSpec(a, symmetric=False))


_BITS = {"w8a8": (8, 8), "w4a8": (4, 8), "w4a4": (4, 4), "w3a3": (3, 3), "w2a2": (2, 2)}

PRESETS: dict[str, MethodConfig] = {
    **{name: _lsq(*bits) for name, bits in _BITS.items()},
    **{f"{name}_lsqplus": _lsqplus(*bits) for name, bits in _BITS.items()},
    "w8a8_minmax": FakeQuantConfig(weight=QuantSpec(8, PerChannel()),
                                   activation=QuantSpec(8, symmetric=False)),
    **{f"dgms_k{k}": DGMSConfig(k=k) for k in (16, 8, 4)},
    **{f"dgms_k{k}_a8": DGMSConfig(k=k, activation=QuantSpec(8)) for k in (16, 8, 4)},
}


def get_preset(name: str) -> MethodConfig:
    """The method config registered under ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", f"use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def list_presets() -> list[str]:
    return list(PRESETS)
