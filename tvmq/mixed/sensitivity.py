"""Per-layer, per-bit-width sensitivity: the second-order estimate of the loss increase.

Chen et al. (ICCV 2021): quantizing layer ``l`` to ``b`` bits perturbs its weight by
``dW = Q_b(W) - W``; a second-order Taylor expansion around the trained (gradient ~ 0)
weights, with the block's Hessian replaced by its mean diagonal ``Tr(H_l) / n_l``, gives::

    Omega_w(l, b) = 1/2 * Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2

and the same with the Hessian of the layer's input for its activation bits,
``Omega_a(l, b) = 1/2 * Tr(H_a) / n_a * ||Q_b(a) - a||^2`` (``a`` over the samples the trace
was estimated on). Traces come from :func:`~tvmq.mixed.hessian.hutchinson_traces`, on a copy
of the model whose conv -> BatchNorm pairs are folded, so ``W`` is the weight that QAT
quantizes and the compiled model stores. ``Q_b`` is the quantization method's own quantizer
(its observer sets the range), at the layer's granularity.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from typing import Any, Sequence

import torch
from torch import nn

from tvmq.errors import ConfigError
from tvmq.mixed.hessian import batches_of, hutchinson_traces
from tvmq.mixed.plans import layer_config
from tvmq.quant import graph
from tvmq.quant.api import quantizable_layers
from tvmq.quant.config import MAX_BITS, MIN_BITS, MethodConfig
from tvmq.quant.registry import method_handler

WEIGHT_BITS = (2, 3, 4, 5, 6, 8)
ACT_BITS = (4, 6, 8)


@dataclasses.dataclass
class LayerSensitivity:
    """One layer: its size, MACs, traces and ``Omega`` per bit width (dicts keyed by bits)."""

    name: str
    weights: int           # elements of the weight (n_l)
    macs: int              # multiply-accumulates per input sample (as meta.json counts them)
    weight_trace: float    # Tr(H_l), Hutchinson estimate
    act_trace: float | None
    omega_w: dict[int, float]
    omega_a: dict[int, float]

    def omega(self, w: int, a: int) -> float:
        """Predicted loss increase at ``w``-bit weights and ``a``-bit inputs."""
        return self.omega_w[w] + self.omega_a.get(a, 0.0)


@dataclasses.dataclass
class Sensitivity:
    """Result of :func:`sensitivity`: the layers in model order, the bit choices, the tied
    groups (layers that must share one bit choice) and the method the plan will use."""

    layers: list[LayerSensitivity]
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    ties: list[list[str]]
    method: MethodConfig
    iterations: int
    samples: int

    def layer(self, name: str) -> LayerSensitivity:
        for ly in self.layers:
            if ly.name == name:
                return ly
        raise ConfigError(f"no layer {name!r} in the sensitivity",
                          f"use one of {[ly.name for ly in self.layers]}")

    def groups(self) -> list[list[str]]:
        """The knapsack's groups: each tie, then every untied layer alone (model order)."""
        tied = {n for tie in self.ties for n in tie}
        out, seen = [], set()
        for ly in self.layers:
            if ly.name in seen:
                continue
            group = next((t for t in self.ties if ly.name in t), [ly.name]) \
                if ly.name in tied else [ly.name]
            out.append(list(group))
            seen.update(group)
        return out

    def to_json(self) -> dict[str, Any]:
        from tvmq.quant.plan import config_to_json

        return {"layers": [dataclasses.asdict(ly) for ly in self.layers],
                "weight_bits": list(self.weight_bits), "act_bits": list(self.act_bits),
                "ties": self.ties, "method": config_to_json(self.method),
                "iterations": self.iterations, "samples": self.samples}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Sensitivity":
        from tvmq.quant.plan import config_from_json

        def by_bits(omega: dict) -> dict[int, float]:  # JSON keys are strings
            return {int(k): v for k, v in omega.items()}

        layers = [LayerSensitivity(**{**ly, "omega_w": by_bits(ly["omega_w"]),
                                      "omega_a": by_bits(ly["omega_a"])}) for ly in d["layers"]]
        return cls(layers, tuple(d["weight_bits"]), tuple(d["act_bits"]), d["ties"],
                   config_from_json(d["method"], "method"), d["iterations"], d["samples"])

    def save(self, path) -> None:
        from tvmq.artifact import atomic_write

        text = json.dumps(self.to_json(), indent=1).encode()
        atomic_write(path, lambda f: f.write(text))


def _check_bits(name: str, bits: Sequence[int]) -> tuple[int, ...]:
    bits = tuple(sorted(set(bits)))
    if not bits or any(not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS for b in bits):
        raise ConfigError(f"{name}={bits!r} must be bit widths in {MIN_BITS}..{MAX_BITS}",
                          f"use e.g. {name}={WEIGHT_BITS if name == 'weight_bits' else ACT_BITS}")
    return bits


def _check_ties(ties, names: list[str]) -> list[list[str]]:
    seen: set[str] = set()
    for tie in ties:
        unknown = sorted(set(tie) - set(names))
        if unknown:
            raise ConfigError(f"ties name unknown layers {unknown}", f"use names from {names}")
        if seen & set(tie):
            raise ConfigError(f"layers {sorted(seen & set(tie))} are in two ties",
                              "merge those ties into one list")
        seen.update(tie)
    return [list(t) for t in ties if len(t) > 1]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every conv -> BatchNorm pair folded into the conv."""
    return graph.fold_conv_bn(copy.deepcopy(model))


def _macs(layer: nn.Module, out: torch.Tensor) -> int:
    per_out = layer.weight[0].numel()  # (in / groups) * kh * kw, or in_features
    return int(out[0].numel() * per_out)


@torch.no_grad()
def _layer_inputs(model, layers, batches):
    """Each layer's inputs over ``batches`` and its MACs per sample."""
    inputs = {n: [] for n in layers}
    macs: dict[str, int] = {}

    def hook(name):
        def fn(mod, args, out):
            inputs[name].append(args[0].detach())
            macs[name] = _macs(mod, out)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        for x, _ in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return inputs, macs


@torch.no_grad()
def _weight_errors(base: MethodConfig, weight: torch.Tensor, bits) -> dict[int, float]:
    """``||Q_b(W) - W||^2`` per bit width, with the method's weight quantizer."""
    out = {}
    for b in bits:
        cfg = layer_config(base, b, None)
        q = method_handler(cfg)(cfg, cfg.weight, "weight")
        q.init_from(weight)
        out[b] = float(((q(weight) - weight) ** 2).sum())
    return out


@torch.no_grad()
def _act_errors(base: MethodConfig, xs: list[torch.Tensor], bits) -> dict[int, float]:
    """``||Q_b(a) - a||^2`` per bit width over the recorded inputs (range from all of them)."""
    out = {}
    for b in bits:
        cfg = layer_config(base, MAX_BITS, b)
        q = method_handler(cfg)(cfg, cfg.activation, "act")
        q.begin_observing(None)
        for x in xs:
            q(x)
        q.end_observing()
        out[b] = float(sum(((q(x) - x) ** 2).sum() for x in xs))
    return out


def sensitivity(model: nn.Module, data, *, method: MethodConfig | None = None,
                weight_bits: Sequence[int] = WEIGHT_BITS, act_bits: Sequence[int] = ACT_BITS,
                layers: Sequence[str] | None = None, ties: Sequence[Sequence[str]] = (),
                samples: int = 256, batch_size: int = 256, tol: float = 0.1,
                min_iter: int = 8, max_iter: int = 50, loss_fn=None, seed: int = 0,
                progress: bool = True) -> Sensitivity:
    """Hessian-based sensitivity ``Omega(l, b)`` of every conv/linear layer of a float model.

    Parameters
    ----------
    model : nn.Module
        The trained float model (not modified).
    data : tvmq.data.Dataset or iterable of (input, label)
        The first ``samples`` pairs estimate the traces and the activation errors.
    method : MethodConfig, optional
        The quantization method of the plan (default ``get_preset("w8a8")``: LSQ,
        per-channel weights); its quantizers compute ``Q_b``.
    weight_bits, act_bits : sequence of int
        The bit choices (2..8). ``act_bits=(8,)`` leaves activations at 8 bits.
    layers : sequence of str, optional
        Layers to allocate (default: every conv/linear, ``tvmq.quant.quantizable_layers``).
    ties : sequence of sequences of str
        Layers that must get the same bits (one knapsack group each).
    samples, batch_size : int
    tol, min_iter, max_iter : float, int
        Hutchinson stopping rule (:func:`~tvmq.mixed.hessian.hutchinson_traces`): the
        relative standard error of every trace below ``tol``, or ``max_iter`` samples. A
        20% error in a trace rarely changes an allocation (``Omega`` moves ~4x per bit).
    loss_fn : callable, optional
        ``loss_fn(logits, labels)``; default cross-entropy.

    Returns
    -------
    Sensitivity

    Examples
    --------
    >>> sens = tvmq.mixed.sensitivity(model, train_set, act_bits=(8,))
    >>> plan = tvmq.mixed.allocate(sens, tvmq.mixed.SizeBudget(avg_bits=3))
    """
    from tvmq.quant.presets import get_preset

    method = method or get_preset("w8a8")
    if method.weight is None or method.activation is None:
        raise ConfigError(f"{type(method).__name__} leaves weights or activations float",
                          "use a method with both a weight and an activation spec")
    wbits, abits = _check_bits("weight_bits", weight_bits), _check_bits("act_bits", act_bits)
    names = list(layers) if layers is not None else quantizable_layers(model)
    unknown = sorted(set(names) - set(quantizable_layers(model)))
    if unknown or not names:
        raise ConfigError(f"layers {unknown or names} are not conv/linear layers of the model",
                          f"use names from {quantizable_layers(model)}")
    tie_groups = _check_ties(ties, names)
    folded = fold_batchnorm(model)
    mods = {n: folded.get_submodule(n) for n in names}
    batches = batches_of(data, samples, batch_size)
    traces = hutchinson_traces(folded, mods, batches, loss_fn, acts=len(abits) > 1, tol=tol,
                               min_iter=min_iter, max_iter=max_iter, seed=seed,
                               progress=progress)
    inputs, macs = _layer_inputs(folded, mods, batches)
    out = [_layer(n, mods[n], traces, inputs[n], macs[n], method, wbits, abits) for n in names]
    negative = [n for n in names if traces.weight[n] < 0 or traces.act.get(n, 0.0) < 0]
    if negative:
        warnings.warn(f"negative Hessian trace estimates (counted as 0: insensitive) for "
                      f"{negative}; train the model further or raise max_iter", stacklevel=2)
    return Sensitivity(out, wbits, abits, tie_groups, method, traces.iterations,
                       sum(len(x) for x, _ in batches))


def _layer(name, mod, traces, xs, macs, method, wbits, abits) -> LayerSensitivity:
    weight = mod.weight.detach()
    n_w = weight.numel()
    tr_w = max(traces.weight[name], 0.0)
    omega_w = {b: 0.5 * tr_w / n_w * e for b, e in _weight_errors(method, weight, wbits).items()}
    tr_a = traces.act.get(name)
    omega_a = {b: 0.0 for b in abits}
    if tr_a is not None:
        n_a = sum(x.numel() for x in xs)
        omega_a = {b: 0.5 * max(tr_a, 0.0) / n_a * e
                   for b, e in _act_errors(method, xs, abits).items()}
    return LayerSensitivity(name, n_w, macs, traces.weight[name], tr_a, omega_w, omega_a)
