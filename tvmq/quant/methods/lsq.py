"""LSQ and LSQ+: the uniform grid with a learned scale (and, for activations, offset).

LSQ (Esser et al. 2020) learns the step size with its gradient scaled by
``1 / sqrt(N * qmax)``; LSQ+ (Bhalgat et al. 2020) adds a learned offset for biased
activations. Both use :class:`~tvmq.quant.methods.uniform.FakeQuantizer` with its
``learn_scale`` / ``learn_offset`` switches, so they export as the same QDQ nodes.
"""
from __future__ import annotations

import dataclasses

from tvmq.errors import ConfigError
from tvmq.quant.config import MethodConfig, QuantSpec, _call
from tvmq.quant.methods.uniform import FakeQuantizer, observer_for
from tvmq.quant.observers import MSEObserver, Observer
from tvmq.quant.registry import register_method


@dataclasses.dataclass(frozen=True)
class LSQConfig(MethodConfig):
    """LSQ (Esser et al. 2020): learned step size, gradient scaled by ``1/sqrt(N * qmax)``.

    Scale-only: weights and activations are symmetric (zero point 0); an activation that is
    never negative at initialization uses the unsigned grid ``[0, 2**bits - 1]``.
    """

    weight_observer: Observer = MSEObserver()
    act_observer: Observer = MSEObserver()

    def __post_init__(self):
        super().__post_init__()
        for field in ("weight",) if self.learn_offset else ("weight", "activation"):
            spec = getattr(self, field)
            if spec is not None and not spec.symmetric:
                hint = ("LSQPlusConfig(...) for a learned offset, or " if field == "activation"
                        else "")
                raise ConfigError(f"{type(self).__name__} {field} must be symmetric",
                                  f"use {hint}{_call(self, **{field: dataclasses.replace(spec, symmetric=True)})}")

    @property
    def learn_scale(self) -> bool:
        return True

    @property
    def learn_offset(self) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class LSQPlusConfig(LSQConfig):
    """LSQ+ (Bhalgat et al. 2020): learned scale ``s`` and offset ``beta`` for activations.

    ``x_hat = clamp(round((x - beta) / s), qmin, qmax) * s + beta``, with ``beta`` snapped to
    the integer grid (``beta = -z * s``, ``z = round(-beta / s)`` with a straight-through
    estimator) so that the export's integer zero point ``z`` reproduces it exactly.
    Weights stay symmetric with a learned scale (LSQ).
    """

    activation: QuantSpec | None = QuantSpec(8, symmetric=False)

    def __post_init__(self):
        super().__post_init__()
        act = self.activation
        if act is not None and act.symmetric:
            raise ConfigError("LSQPlusConfig learns an activation offset, so it is asymmetric",
                              f"use {_call(self, activation=dataclasses.replace(act, symmetric=False))}"
                              " (or LSQConfig for scale only)")

    @property
    def learn_offset(self) -> bool:
        return True


@register_method(LSQConfig)
def _build_lsq(cfg: LSQConfig, spec: QuantSpec, role: str) -> FakeQuantizer:
    return FakeQuantizer(spec, role, observer_for(cfg, role), learn_scale=True)


@register_method(LSQPlusConfig)
def _build_lsqplus(cfg: LSQPlusConfig, spec: QuantSpec, role: str) -> FakeQuantizer:
    offset = role == "act" and not spec.symmetric
    return FakeQuantizer(spec, role, observer_for(cfg, role), learn_scale=True,
                         learn_offset=offset)
