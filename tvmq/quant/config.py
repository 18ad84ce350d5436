"""Quantization configs: granularities, per-tensor specs, one dataclass per method, step wrappers.

Every config validates itself in ``__post_init__`` and raises :class:`~tvmq.errors.ConfigError`
whose fix shows the corrected call.

>>> from tvmq.quant import QATConfig, LSQConfig, QuantSpec, PerChannel
>>> base = LSQConfig(weight=QuantSpec(4, PerChannel()), activation=QuantSpec(4))
>>> cfg = QATConfig(base, step="prepare", overrides={"classifier": None})
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Union

from tvmq.errors import ConfigError
from tvmq.quant.observers import MinMaxObserver, Observer

MIN_BITS, MAX_BITS = 2, 8
SUPPORTED_LAYERS = ("Conv2d", "Linear")


@dataclasses.dataclass(frozen=True)
class PerTensor:
    """One scale (and zero point) for the whole tensor."""


@dataclasses.dataclass(frozen=True)
class PerChannel:
    """One scale per slice along ``axis`` (0: output channels of conv/linear weights)."""

    axis: int = 0

    def __post_init__(self):
        if self.axis != 0:
            raise ConfigError(f"PerChannel(axis={self.axis}) is not supported",
                              "use PerChannel(axis=0) (output channels, as ONNX exports it)")


Granularity = Union[PerTensor, PerChannel]


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """Bit width, granularity and symmetry of one quantized tensor.

    Parameters
    ----------
    bits : int
        2 to 8. Values live on the integer grid ``[qmin, qmax]`` of that width.
    granularity : PerTensor or PerChannel
    symmetric : bool
        ``True``: zero point 0 (signed grid, or unsigned when an activation is never
        negative). ``False``: unsigned grid ``[0, 2**bits - 1]`` with an integer zero point.
    """

    bits: int = 8
    granularity: Granularity = PerTensor()
    symmetric: bool = True

    def __post_init__(self):
        bits = self.bits
        if isinstance(bits, int) and not isinstance(bits, bool) and MIN_BITS <= bits <= MAX_BITS:
            pass
        else:
            problem = f"bits={bits!r} is outside {MIN_BITS}..{MAX_BITS}" \
                if isinstance(bits, int) and not isinstance(bits, bool) else \
                f"bits={bits!r} is not an int in {MIN_BITS}..{MAX_BITS}"
            raise ConfigError(problem, f"use {_call(self, bits=_nearest_bits(bits))}")
        if not isinstance(self.granularity, (PerTensor, PerChannel)):
            raise ConfigError(f"granularity={self.granularity!r} is not a granularity object",
                              f"use {_call(self, granularity=PerChannel())} or PerTensor()")

    def with_bits(self, bits: int) -> "QuantSpec":
        return dataclasses.replace(self, bits=bits)


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Fields shared by every method config (subclasses: one per method, in
    :mod:`tvmq.quant.methods`).

    A subclass whose weights are not described by a :class:`QuantSpec` (a codebook, an
    elastic bit width) overrides :meth:`_check_spec`.
    """

    weight: QuantSpec | None = QuantSpec(8, PerChannel())
    activation: QuantSpec | None = QuantSpec(8)
    first_last_bits: int | None = 8
    layer_types: tuple[str, ...] = SUPPORTED_LAYERS
    skip: tuple[str, ...] = ()
    weight_observer: Observer = MinMaxObserver()
    act_observer: Observer = MinMaxObserver()

    def __post_init__(self):
        for field in ("weight", "activation"):
            self._check_spec(field, getattr(self, field))
        act = self.activation
        if isinstance(act, QuantSpec) and not isinstance(act.granularity, PerTensor):
            raise ConfigError("per-channel activations are not supported",
                              f"use {_call(self, activation=dataclasses.replace(self.activation, granularity=PerTensor()))}")
        fl = self.first_last_bits
        if fl is not None and (not isinstance(fl, int) or not MIN_BITS <= fl <= MAX_BITS):
            raise ConfigError(f"first_last_bits={fl!r} is outside {MIN_BITS}..{MAX_BITS}",
                              f"use {_call(self, first_last_bits=8)} (or None: no special case)")
        bad = [t for t in self.layer_types if t not in SUPPORTED_LAYERS]
        if bad or isinstance(self.layer_types, str):
            raise ConfigError(f"layer_types={self.layer_types!r} has unsupported entries",
                              f"use {_call(self, layer_types=SUPPORTED_LAYERS)}")

    def _check_spec(self, field: str, val) -> None:
        if val is not None and not isinstance(val, QuantSpec):
            raise ConfigError(f"{field}={val!r} is not a QuantSpec",
                              f"use {_call(self, **{field: QuantSpec(8)})}")

    def with_bits(self, bits: int) -> "_MethodConfig":
        """This config with weight and activation raised to at least ``bits`` bits."""
        raise_to = lambda s: s if s is None or s.bits >= bits else s.with_bits(bits)  # noqa: E731
        return dataclasses.replace(self, weight=raise_to(self.weight),
                                   activation=raise_to(self.activation))


_MethodConfig = MethodConfig  # the name used before methods moved to tvmq.quant.methods
Overrides = Mapping[str, Union[_MethodConfig, None]]


def _check_overrides(owner: Any, overrides: Overrides) -> None:
    for name, cfg in overrides.items():
        if cfg is not None and not isinstance(cfg, _MethodConfig):
            raise ConfigError(f"override for {name!r} is {cfg!r}, not a method config",
                              f"use overrides={{{name!r}: LSQConfig(...)}} or None to keep it float")


def _check_base(owner: Any) -> None:
    if not isinstance(owner.base, _MethodConfig):
        raise ConfigError(f"base={owner.base!r} is not a method config",
                          f"use {type(owner).__name__}(get_preset('w8a8'), ...) or "
                          f"{type(owner).__name__}(LSQConfig(), ...)")


@dataclasses.dataclass(frozen=True)
class QATConfig:
    """Quantization-aware training in two steps: ``"prepare"`` then (after training) ``"convert"``.

    Parameters
    ----------
    base : method config
        :class:`FakeQuantConfig`, :class:`LSQConfig` or :class:`LSQPlusConfig`.
    step : {"prepare", "convert"}
    overrides : dict
        Module name -> method config (or ``None`` to keep that layer float).
    fold_bn : bool
        Fold each BatchNorm that follows a conv into it; training then quantizes the folded
        weights, so what is trained is what is deployed.
    freeze_bn_after : int or None
        Epoch after which :func:`tvmq.quant.fit` freezes BN statistics.
    quantize_joins : bool
        Also quantize the inputs and outputs of residual adds, concats and pools, and the
        input of an elementwise activation other than ReLU that follows a quantized layer
        (SiLU, Hardswish, GELU, ...: it compiles to an integer lookup table) (8-bit, the
        base method), so the compiled model is integer end to end.
    """

    base: MethodConfig = dataclasses.field(default_factory=lambda: _method("LSQConfig")())
    step: str = "prepare"
    overrides: Overrides = dataclasses.field(default_factory=dict)
    fold_bn: bool = True
    freeze_bn_after: int | None = None
    quantize_joins: bool = True

    def __post_init__(self):
        _check_base(self)
        if self.step not in ("prepare", "convert"):
            raise ConfigError(f"step={self.step!r} is not a QAT step",
                              "use QATConfig(base, step='prepare') or QATConfig(base, step='convert')")
        _check_overrides(self, self.overrides)
        if self.freeze_bn_after is not None and self.freeze_bn_after < 0:
            raise ConfigError(f"freeze_bn_after={self.freeze_bn_after} is negative",
                              "use QATConfig(base, freeze_bn_after=N) with N >= 0, or None")


@dataclasses.dataclass(frozen=True)
class PTQConfig:
    """Post-training quantization: observe ``calibration`` data, then fix the scales.

    Parameters
    ----------
    base : method config
    calibration : Dataset, DataLoader or iterable of input batches
    observer : Observer or None
        Activation range estimator (``None``: the base config's ``act_observer``).
    overrides : dict
        Module name -> method config (or ``None`` to keep that layer float).
    max_batches : int or None
        Stop calibrating after this many batches.
    quantize_joins : bool
        Also quantize adds, concats, pools and activation inputs (see :class:`QATConfig`).
    """

    base: MethodConfig = dataclasses.field(default_factory=lambda: _method("FakeQuantConfig")())
    calibration: Any = None
    observer: Observer | None = MinMaxObserver()
    overrides: Overrides = dataclasses.field(default_factory=dict)
    fold_bn: bool = True
    max_batches: int | None = None
    progress: bool = True
    quantize_joins: bool = True

    def __post_init__(self):
        _check_base(self)
        if self.calibration is None:
            raise ConfigError("PTQConfig needs calibration data",
                              "use PTQConfig(base, calibration=train_set) (a Dataset or DataLoader)")
        _check_overrides(self, self.overrides)
        if self.observer is not None and not isinstance(self.observer, Observer):
            raise ConfigError(f"observer={self.observer!r} is not an observer",
                              "use observer=MinMaxObserver(), PercentileObserver(99.99) or MSEObserver()")


def _method(name: str) -> type:
    """A method config class by name (the methods import this module, so not at import time)."""
    from tvmq.quant import methods
    return getattr(methods, name)


def _nearest_bits(bits: Any) -> int:
    """The bit width a bad ``bits`` most likely meant (``"4"`` -> 4, ``4.0`` -> 4, ``12`` -> 8);
    8 when nothing numeric can be read from it (NaN, None, an object)."""
    try:
        value = float(bits)
    except (TypeError, ValueError):
        return 8
    if value != value or isinstance(bits, bool):  # NaN; True is no bit width
        return 8
    return int(min(max(round(value), MIN_BITS), MAX_BITS)) if abs(value) != float("inf") \
        else (MAX_BITS if value > 0 else MIN_BITS)


def _call(obj: Any, **changes: Any) -> str:
    """``Type(field=value, ...)`` for ``obj`` with ``changes`` applied: the corrected call."""
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    fields.update(changes)
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    shown = [f"{k}={v!r}" for k, v in fields.items() if k in changes or v != defaults.get(k)]
    return f"{type(obj).__name__}({', '.join(shown)})"
