"""``quantize_(model, config)``: handlers registered by config type (torchao style).

Step handlers (:class:`QATConfig`, :class:`PTQConfig`) rewrite the model; they are keyed by
type, never by method-name strings. The quantizers of one layer come from the method
handlers of :mod:`tvmq.quant.registry` (one file per method in :mod:`tvmq.quant.methods`),
and everything here talks to them only through the :class:`~tvmq.quant.Quantizer` protocol.

Layers are found by type (``nn.Conv2d`` / ``nn.Linear``) in module order; the first and the
last are "first/last" for ``first_last_bits``. Conv -> BatchNorm pairs, residual adds,
concats and pools are found on the ``torch.fx`` graph (:mod:`tvmq.quant.graph`).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from tvmq.errors import ConfigError
from tvmq.quant import graph
from tvmq.quant.config import MethodConfig, PTQConfig, QATConfig
from tvmq.quant.layers import QUANT_LAYERS, QuantConv2d, QuantConvBn2d, QuantLinear
from tvmq.quant.quantizer import Quantizer
from tvmq.quant.registry import method_handler

_STEP_HANDLERS: dict[type, Callable] = {}


def register_step(config_type: type):
    """Register ``fn(model, config) -> model`` for a step config type."""
    def wrap(fn):
        _STEP_HANDLERS[config_type] = fn
        return fn
    return wrap


def quantize_(model: nn.Module, config) -> nn.Module:
    """Quantize ``model`` in place according to ``config``; returns the model.

    Parameters
    ----------
    model : nn.Module
    config : QATConfig or PTQConfig

    Examples
    --------
    >>> quantize_(model, QATConfig(get_preset("w4a4"), step="prepare"))
    >>> fit(model, train_set, epochs=10)
    >>> quantize_(model, QATConfig(get_preset("w4a4"), step="convert"))
    >>> quantize_(model, PTQConfig(get_preset("w8a8"), calibration=train_set))
    """
    handler = _STEP_HANDLERS.get(type(config))
    if handler is None:
        if isinstance(config, MethodConfig):
            raise ConfigError(f"{type(config).__name__} is a method, not a step",
                              f"use quantize_(model, QATConfig({type(config).__name__}(...))) "
                              "or PTQConfig(..., calibration=data)")
        raise ConfigError(f"no handler for {type(config).__name__}",
                          "use QATConfig(base, step=...) or PTQConfig(base, calibration=...)")
    return handler(model, config)


def _make_quantizer(cfg: MethodConfig, spec, role: str) -> Quantizer | None:
    if spec is None:
        return None
    quantizer = method_handler(cfg)(cfg, spec, role)
    if not isinstance(quantizer, Quantizer):
        raise ConfigError(f"the handler of {type(cfg).__name__} returned "
                          f"{type(quantizer).__name__}, not a tvmq.quant.Quantizer",
                          "subclass tvmq.quant.Quantizer and implement its methods")
    return quantizer


# -- prepare ---------------------------------------------------------------------------------
def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the conv/linear layers, in module order (quantized ones included)."""
    kinds = (nn.Conv2d, nn.Linear, QuantConvBn2d)
    names = [n for n, m in model.named_modules() if isinstance(m, kinds)]
    return [n for n in names if not any(n.startswith(p + ".") for p in names)]


def _bn_pairs(model: nn.Module) -> dict[str, str]:
    """conv name -> name of the BatchNorm2d it feeds: on the traced graph, or (untraceable
    models) the BatchNorm2d that directly follows it in an nn.Sequential."""
    found = graph.conv_bn_pairs(model)
    if found is not None:
        return found
    pairs = {}
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        for (a, ma), (b, mb) in zip(kids, kids[1:]):
            if type(ma) is nn.Conv2d and isinstance(mb, nn.BatchNorm2d):
                pairs[_join(prefix, a)] = _join(prefix, b)
    return pairs


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _layer_config(name: str, base, overrides, first_last: set[str]):
    """The config of layer ``name``: a plan's (``overrides``) entry exactly as written, else
    ``base``, raised to ``first_last_bits`` for the first and last layers."""
    if name in overrides:
        cfg = overrides[name]
        return None if cfg is None or name in cfg.skip else cfg
    if base is None or name in base.skip:
        return None
    if name in first_last and base.first_last_bits is not None:
        return base.with_bits(base.first_last_bits)
    return base


def _join_quantizer(base: MethodConfig | None):
    """Builds the quantizers of adds/concats/pools: the base method, activations at >= 8 bits
    (the integer lowering keeps joins in 8-bit containers; fewer bits would only add error)."""
    if base is None or base.activation is None:
        return None
    cfg = base.with_bits(8)
    return lambda: _make_quantizer(cfg, cfg.activation, "act")


def _corrected_overrides(overrides: dict, names: list[str]) -> str:
    """``overrides={...}`` with each unknown layer renamed to the closest real layer name
    (dropped when nothing is close): the corrected argument, ready to paste."""
    import difflib

    fixed = {}
    for key, cfg in overrides.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.3) or \
                [n for n in names if n not in overrides][:1]
            if not close or close[0] in overrides or close[0] in fixed:
                continue
            key = close[0]
        fixed[key] = cfg
    shown = ", ".join(f"{k!r}: {'None' if v is None else type(v).__name__ + '(...)'}"
                      for k, v in fixed.items())
    return f"overrides={{{shown}}}"


def prepare(model: nn.Module, base: MethodConfig, overrides: dict, fold_bn: bool,
            quantize_joins: bool = True) -> nn.Module:
    """Swap conv/linear layers (and conv+BN pairs) for quantized layers; with
    ``quantize_joins``, quantize the inputs and outputs of adds, concats and pools too, and
    the input of a non-ReLU elementwise activation after a quantized layer."""
    names = quantizable_layers(model)
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"overrides name unknown layers {unknown} (the model's layers: "
                          f"{names})", f"use {_corrected_overrides(overrides, names)}")
    first_last = {names[0], names[-1]} if names else set()
    pairs = _bn_pairs(model) if fold_bn else {}
    for name in names:
        layer = model.get_submodule(name)
        cfg = _layer_config(name, base, overrides, first_last)
        if cfg is None or isinstance(layer, QUANT_LAYERS) or type(layer).__name__ not in cfg.layer_types:
            continue
        wq = _make_quantizer(cfg, cfg.weight, "weight")
        aq = _make_quantizer(cfg, cfg.activation, "act")
        if name in pairs:
            new = QuantConvBn2d(layer, model.get_submodule(pairs[name]), wq, aq)
            _set_module(model, pairs[name], nn.Identity())
            weight = new.quantizer_input()
        else:
            new = (QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear).from_float(layer, wq, aq)
            weight = new.weight
        if wq is not None:
            wq.init_from(weight.detach())
        _set_module(model, name, new)
    make = _join_quantizer(base)
    if quantize_joins and make is not None and any(isinstance(m, QUANT_LAYERS)
                                                   for m in model.modules()):
        graph.quantize_joins(model, make)
    return model


def quantizers(model: nn.Module, role: str | None = None) -> list[Quantizer]:
    """All quantizers of ``model`` (only weights or activations when ``role`` is given)."""
    return [m for m in model.modules()
            if isinstance(m, Quantizer) and (role is None or m.role == role)]


# -- calibration, BN freezing, convert ------------------------------------------------------
def _batches(data) -> Iterable[torch.Tensor]:
    if hasattr(data, "loader"):
        data = data.loader(batch_size=128)
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def calibrate(model: nn.Module, data, max_batches: int | None = None, observer=None,
              progress: bool = True) -> nn.Module:
    """Run ``data`` through ``model`` in float, then set every activation quantizer's range.

    ``data`` is a :class:`tvmq.data.Dataset`, a DataLoader, or an iterable of input batches
    (or ``(input, label)`` tuples). ``observer`` replaces the quantizers' own observers.
    """
    acts = quantizers(model, "act")
    was_training = model.training
    model.eval()
    for q in acts:
        q.begin_observing(observer)
    try:
        for i, x in enumerate(tqdm(_batches(data), desc="calibrate", disable=not progress,
                                   leave=False)):
            if max_batches is not None and i >= max_batches:
                break
            model(x)
    finally:
        for q in acts:
            q.end_observing()
    return model.train(was_training)


def freeze_bn(model: nn.Module) -> nn.Module:
    """Freeze the BatchNorm statistics of every folded conv+BN layer."""
    for m in model.modules():
        if isinstance(m, QuantConvBn2d):
            m.freeze_bn()
    return model


def convert(model: nn.Module) -> nn.Module:
    """Fold BN into the conv weights for good and freeze every quantizer (eval mode).

    Each quantizer freezes itself (:meth:`~tvmq.quant.Quantizer.freeze`); LSQ+ offsets need
    no snapping: their zero point is an integer by construction.
    """
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantConvBn2d):
            _set_module(model, name, m.to_conv())
    for q in quantizers(model):
        if not q.is_initialized():
            raise ConfigError(f"a {q.role} quantizer was never initialized",
                              "run data through the model (fit/calibrate) before convert")
        q.freeze()
    return model.eval()


@register_step(QATConfig)
def _qat(model: nn.Module, config: QATConfig) -> nn.Module:
    if config.step == "prepare":
        prepare(model, config.base, dict(config.overrides), config.fold_bn,
                config.quantize_joins)
        model.tvmq_qat_config = config
        return model
    if not any(isinstance(m, QUANT_LAYERS) for m in model.modules()):
        raise ConfigError("convert found no quantized layers",
                          "call quantize_(model, QATConfig(base, step='prepare')) and train first")
    return convert(model)


@register_step(PTQConfig)
def _ptq(model: nn.Module, config: PTQConfig) -> nn.Module:
    model.eval()
    prepare(model, config.base, dict(config.overrides), config.fold_bn, config.quantize_joins)
    calibrate(model, config.calibration, config.max_batches, config.observer, config.progress)
    return convert(model)
