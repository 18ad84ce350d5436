"""A quantizer written outside tvmq.quant plugs in through the protocol alone.

``PoTConfig`` / ``PoTQuantizer`` below (power-of-two scales, as shift-only hardware wants)
are defined in this test file and registered with :func:`tvmq.quant.register_method`; they
train, calibrate, convert, export and compile with no change to ``tvmq/quant``.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import pytest
import torch

import tvmq
from tvmq.errors import ConfigError
from tvmq.quant import (MethodConfig, PerChannel, QATConfig, Quantizer, QuantSpec,
                        UniformActivation, UniformWeight, export, fit, quantize_, quantizers,
                        register_method)
from tvmq.quant.quantizer import fake_quant, grid
from tvmq.train import predict


@dataclasses.dataclass(frozen=True)
class PoTConfig(MethodConfig):
    """Symmetric uniform grid whose scale is a power of two, ``2**ceil(log2(amax/qmax))``."""


class PoTQuantizer(Quantizer):
    """Scale ``2**e``: the smallest power of two whose grid still covers the range."""

    def __init__(self, spec: QuantSpec, role: str):
        super().__init__(role)
        self.spec = spec
        self.per_channel = role == "weight" and isinstance(spec.granularity, PerChannel)
        self.qmin, self.qmax = grid(spec.bits, signed=True)
        self.register_buffer("exponent", torch.zeros(1))
        self.register_buffer("ready", torch.tensor(False))
        self.observing, self._lo, self._amax = False, None, None

    @property
    def bits(self) -> int:
        return self.spec.bits

    def _rows(self, x):
        return x.detach().reshape(x.shape[0], -1) if self.per_channel else x.detach().reshape(1, -1)

    def _set(self, lo: torch.Tensor, amax: torch.Tensor) -> None:
        if self.role == "act":  # never negative: use the unsigned grid
            self.qmin, self.qmax = grid(self.bits, signed=bool((lo < 0).any()))
        self.exponent = torch.ceil(torch.log2(amax.clamp(min=1e-8) / self.qmax))
        self.ready.fill_(True)

    def init_from(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        self._set(rows.min(dim=1).values, rows.abs().max(dim=1).values)

    def is_initialized(self) -> bool:
        return bool(self.ready)

    def begin_observing(self, observer=None) -> None:
        self.observing, self._lo, self._amax = True, None, None

    def end_observing(self) -> None:
        self.observing = False
        if self._amax is not None:
            self._set(self._lo, self._amax)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.pow(2.0, self.exponent)
        return scale.reshape(-1, *([1] * (x.dim() - 1))) if self.per_channel else scale.reshape(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            rows = self._rows(x)
            lo, amax = rows.min(dim=1).values, rows.abs().max(dim=1).values
            self._lo = lo if self._lo is None else torch.minimum(self._lo, lo)
            self._amax = amax if self._amax is None else torch.maximum(self._amax, amax)
            return x
        if not self.is_initialized() or (self.training and self.role == "weight"):
            self.init_from(x)
        return fake_quant(x, self._scale(x), torch.zeros(()), self.qmin, self.qmax)

    def describe(self, tensor=None):
        scale = torch.pow(2.0, self.exponent).numpy().astype(np.float32)
        if self.role == "act":
            return UniformActivation(float(scale[0]), 0, self.qmin, self.qmax)
        ints = torch.clamp(torch.round(tensor.detach() / self._scale(tensor)), self.qmin, self.qmax)
        scale = scale if self.per_channel else scale.reshape(())
        return UniformWeight(ints.numpy().astype(np.int8), scale,
                             np.zeros(scale.shape, np.int8), self.bits)


@register_method(PoTConfig)
def _pot(cfg: PoTConfig, spec: QuantSpec, role: str) -> PoTQuantizer:
    return PoTQuantizer(spec, role)


def _pot_scales(path) -> list[float]:
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return [float(v) for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            for v in np.ravel(inits[n.input[1]])]


@pytest.mark.build
def test_custom_quantizer_trains_exports_and_compiles(trained, digits, tmp_path):
    train_set, test_set = digits
    model = trained("digits_cnn")
    cfg = PoTConfig(weight=QuantSpec(4, PerChannel()), activation=QuantSpec(8))
    quantize_(model, QATConfig(cfg))
    assert all(isinstance(q, PoTQuantizer) for q in quantizers(model))
    fit(model, train_set, epochs=1, progress=False)
    quantize_(model, QATConfig(cfg, step="convert"))
    path = export(model, torch.randn(1, 1, 8, 8), tmp_path / "pot.onnx")
    scales = _pot_scales(path)
    assert scales and all(math.log2(s) == round(math.log2(s)) for s in scales), scales

    ref = predict(model, test_set.x)
    art = tvmq.compile(path, input_shapes={"input": (1, 1, 8, 8)})
    weighted = [layer for layer in art.meta["layers"] if layer["op"] in ("conv2d", "matmul")]
    assert len(weighted) == 4 and all(layer["integer"] for layer in weighted), weighted
    got = np.concatenate([art.run(x[None])[0] for x in test_set.x[:200]])
    agree = (got.argmax(1) == ref[:200].argmax(1)).mean()
    acc = (ref.argmax(1) == test_set.y).mean()
    assert agree >= 0.99, f"compiled vs PyTorch argmax agreement {agree:.3f}"
    assert acc >= 0.85, f"4-bit power-of-two QAT accuracy {acc:.3f}"


def test_handler_must_return_a_quantizer():
    @dataclasses.dataclass(frozen=True)
    class Broken(MethodConfig):
        pass

    register_method(Broken)(lambda cfg, spec, role: torch.nn.Identity())
    with pytest.raises(ConfigError, match="not a tvmq.quant.Quantizer"):
        quantize_(torch.nn.Sequential(torch.nn.Linear(4, 4)), QATConfig(Broken()))


def test_unregistered_method_names_the_fix():
    @dataclasses.dataclass(frozen=True)
    class Unregistered(MethodConfig):
        pass

    with pytest.raises(ConfigError, match="register_method"):
        quantize_(torch.nn.Sequential(torch.nn.Linear(4, 4)), QATConfig(Unregistered()))
