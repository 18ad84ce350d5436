"""The ``ElasticConfig`` method: what :func:`tvmq.quant.prepare` builds a supernet with.

Registered in the method registry like every other method, so a supernet is the ordinary
``prepare`` of the model (conv -> BN folding, quantized adds/concats/pools) with
:class:`~tvmq.eqnet.quantizer.ElasticQuantizer` in every slot. The specs' bit widths are only
the *starting* widths: elastic layers start at the space's fewest bits so that ``prepare``
keeps their input quantizers apart from the 8-bit quantizers of joins; the supernet sets the
bits of every layer before each forward.
"""
from __future__ import annotations

import dataclasses

from tvmq.eqnet.quantizer import ElasticQuantizer
from tvmq.quant.config import MethodConfig, PerChannel, QuantSpec
from tvmq.quant.observers import MSEObserver, Observer
from tvmq.quant.registry import register_method


@dataclasses.dataclass(frozen=True)
class ElasticConfig(MethodConfig):
    """Elastic-bit quantizers (EQ-Net); build supernets with :class:`tvmq.eqnet.Supernet`."""

    weight: QuantSpec | None = QuantSpec(2, PerChannel())
    activation: QuantSpec | None = QuantSpec(2)
    weight_observer: Observer = MSEObserver()
    act_observer: Observer = MSEObserver()


@register_method(ElasticConfig)
def _build(cfg: ElasticConfig, spec: QuantSpec, role: str) -> ElasticQuantizer:
    # a weight quantizer's per-channel rows are sized when prepare calls init_from
    return ElasticQuantizer(role, spec.bits)
