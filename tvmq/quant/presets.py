"""User-facing quantization presets, in one registry.

``wXaY``: LSQ (learned scale), weights per-channel symmetric, activations per-tensor
symmetric (unsigned grid when never negative). ``wXaY_lsqplus``: LSQ+ (learned scale and
offset) for activations. ``w8a8_minmax``: fixed min/max scales, asymmetric activations
(onnxruntime-style). ``dgms_kK``: DGMS codebook weights with ``K`` entries (``log2 K``-bit
indices), float activations; ``dgms_kK_a8``: the same with 8-bit activations (int8 table).
First and last layers stay at 8 bits (``first_last_bits=8``; a DGMS layer: ``K = 256``).
``w7a8`` (and ``w7a8_lsqplus``): 7-bit weights in *every* layer, first and last included
(onnxruntime's ``reduce_range``): on x86 CPUs without VNNI (AVX2) tvmq's integer kernels
then use ``vpmaddubsw``, exact for such weights, instead of the slower ``vpmaddwd`` path
(measured in ``docs/performance.md``); on other CPUs it only costs accuracy.
"""
from __future__ import annotations

from tvmq.errors import ConfigError
from tvmq.quant.config import MethodConfig, PerChannel, QuantSpec
from tvmq.quant.methods import DGMSConfig, FakeQuantConfig, LSQConfig, LSQPlusConfig


#: presets whose first and last layers keep their weight width (not raised to 8 bits)
_ALL_LAYERS = ("w7a8",)


def _lsq(name: str, w: int, a: int) -> LSQConfig:
    fl = None if name in _ALL_LAYERS else 8
    return LSQConfig(weight=QuantSpec(w, PerChannel()), activation=QuantSpec(a),
                     first_last_bits=fl)


def _lsqplus(name: str, w: int, a: int) -> LSQPlusConfig:
    fl = None if name in _ALL_LAYERS else 8
    return LSQPlusConfig(weight=QuantSpec(w, PerChannel()),
                         activation=QuantSpec(a, symmetric=False), first_last_bits=fl)


_BITS = {"w8a8": (8, 8), "w7a8": (7, 8), "w4a8": (4, 8), "w4a4": (4, 4), "w3a3": (3, 3),
         "w2a2": (2, 2)}

PRESETS: dict[str, MethodConfig] = {
    **{name: _lsq(name, *bits) for name, bits in _BITS.items()},
    **{f"{name}_lsqplus": _lsqplus(name, *bits) for name, bits in _BITS.items()},
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
