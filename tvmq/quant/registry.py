"""The two registries a quantization method plugs into, both keyed by type (never by name).

* **method handlers**: method config type -> ``fn(config, spec, role) -> Quantizer``; builds
  the quantizer of one tensor of one layer (``role`` is ``"weight"`` or ``"act"``);
* **export handlers**: export description type -> ``fn(description) -> nn.Module``; the
  module replaces the quantizer while ``torch.onnx.export`` traces the model, and its forward
  emits the ONNX nodes (a ``torch.autograd.Function`` with a ``symbolic``).

A new method is one file under :mod:`tvmq.quant.methods` that registers its config here (and,
if its quantizer describes itself with a new description type, that type's export handler);
``prepare``/``calibrate``/``convert``/``export`` stay unchanged.

>>> @register_method(MyConfig)
... def _build(cfg, spec, role):
...     return MyQuantizer(spec, role)
"""
from __future__ import annotations

from typing import Callable

from tvmq.errors import ConfigError

_METHOD_HANDLERS: dict[type, Callable] = {}
_EXPORT_HANDLERS: dict[type, Callable] = {}


def register_method(config_type: type):
    """Register ``fn(config, spec, role) -> Quantizer`` for a method config type."""
    def wrap(fn):
        _METHOD_HANDLERS[config_type] = fn
        return fn
    return wrap


def register_export(description_type: type):
    """Register ``fn(description) -> nn.Module`` emitting the ONNX nodes of a description type."""
    def wrap(fn):
        _EXPORT_HANDLERS[description_type] = fn
        return fn
    return wrap


def method_handler(config) -> Callable:
    """The handler registered for ``type(config)`` exactly (subclasses register their own)."""
    handler = _METHOD_HANDLERS.get(type(config))
    if handler is None:
        raise ConfigError(f"no quantizer registered for {type(config).__name__}",
                          "decorate a factory with @tvmq.quant.register_method("
                          f"{type(config).__name__})")
    return handler


def export_handler(description) -> Callable:
    """The export handler of ``description``'s type (or of its nearest registered base)."""
    for cls in type(description).__mro__:
        if cls in _EXPORT_HANDLERS:
            return _EXPORT_HANDLERS[cls]
    raise ConfigError(f"no ONNX export registered for {type(description).__name__}",
                      "decorate a module factory with @tvmq.quant.register_export("
                      f"{type(description).__name__})")
