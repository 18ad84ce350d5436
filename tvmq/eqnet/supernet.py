"""``Supernet(model, space)``: one set of weights, every subnet of an elastic space.

The supernet is the model prepared by :func:`tvmq.quant.prepare` with the
:class:`~tvmq.eqnet.config.ElasticConfig` method: conv -> BatchNorm pairs are folded (the
weight quantizers see the folded weights that are deployed), residual adds, concats and pools
get 8-bit activation quantizers, and every quantizer is an
:class:`~tvmq.eqnet.quantizer.ElasticQuantizer`. :meth:`Supernet.set_subnet` switches every
layer's bits (and the network's condition) before a forward; :meth:`Supernet.to_quantized`
turns one subnet into an ordinary converted quantized model (LSQ / LSQ+ fake quantizers holding
that bit width's learned scales) that :func:`tvmq.quant.export` and :func:`tvmq.compile`
accept, and :meth:`Supernet.plan` into the per-layer plan that
``QATConfig(base, overrides=plan)`` / :func:`tvmq.quant.save_plan` take.

>>> net = Supernet(fp32_model, ElasticSpace())
>>> net.initialize(train_set)                          # activation clipping search
>>> eqnet.train(net, train_set, epochs=10)
>>> sub = net.space.uniform(net.layers, 4, 4)
>>> q = net.to_quantized(sub, calibration=train_set)   # BN recalibrated, converted
>>> tq.export(q, example, "w4a4.onnx")
"""
from __future__ import annotations

import contextlib
import copy
import random
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import nn

from tvmq.eqnet.config import ElasticConfig
from tvmq.eqnet.quantizer import ElasticQuantizer
from tvmq.eqnet.space import ElasticSpace, Subnet
from tvmq.errors import ConfigError
from tvmq.mixed.plans import MixedPlan, bits_of
from tvmq.quant.api import _set_module, calibrate, convert, prepare, quantizable_layers
from tvmq.quant.config import PerChannel, PerTensor, QuantSpec
from tvmq.quant.graph import JOIN_PREFIX
from tvmq.quant.layers import QuantConvBn2d
from tvmq.quant.methods import LSQConfig, LSQPlusConfig

FORMAT = 1


class Supernet(nn.Module):
    """A float model's conv/linear layers with elastic quantizers (EQ-Net's supernet).

    Parameters
    ----------
    model : nn.Module
        A trained float model (copied; the original is not modified). Any module whose
        quantizable layers are ``nn.Conv2d`` / ``nn.Linear`` attributes.
    space : ElasticSpace
    fold_bn, quantize_joins : bool
        As in :class:`tvmq.quant.QATConfig`.
    learn_joins : {"all", "largest", "none"}
        Who trains the scales of the 8-bit join quantizers (adds, concats, pools), which every
        subnet shares: every subnet (default), the largest only (:func:`~tvmq.eqnet.gpg_step`
        stops the others' gradients), or nobody (float calibration kept). Measured on digits
        (test accuracy after BN recalibration, one run each): frozen scales stop fitting once
        training grows the activations (digits CNN, 30 epochs: W8A8 92.4% frozen vs 98.9%
        all); ResNet-20 after one GPG epoch at lr 2e-3: W8A8/W4A4 96.7/93.6% all vs
        97.6/94.0% largest; digits CNN, 30 epochs: W4A4/W2A2 98.0/96.7% all vs 96.2/93.3%
        largest.

    Attributes
    ----------
    layers : list of str
        The conv/linear layer names in module order (the keys of every :class:`Subnet`).
    model : nn.Module
        The prepared model.
    """

    def __init__(self, model: nn.Module, space: ElasticSpace | None = None,
                 fold_bn: bool = True, quantize_joins: bool = True,
                 learn_joins: str = "all"):
        super().__init__()
        space = ElasticSpace() if space is None else space
        if not isinstance(space, ElasticSpace):
            raise ConfigError(f"space={space!r} is not an ElasticSpace",
                              "use Supernet(model, ElasticSpace(weight_bits=(2, 4, 8)))")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model={type(model).__name__} is not an nn.Module",
                              "use Supernet(torch_model, space)")
        net = copy.deepcopy(model).eval()
        self.layers = quantizable_layers(net)
        if not self.layers:
            raise ConfigError(f"{type(model).__name__} has no nn.Conv2d / nn.Linear layer",
                              "give a model with conv or linear layers")
        self.space = space
        base = ElasticConfig(weight=QuantSpec(min(space.weight_bits), PerChannel()),
                             activation=QuantSpec(min(space.act_bits)),
                             first_last_bits=space.first_last_bits)
        if learn_joins not in ("largest", "all", "none"):
            raise ConfigError(f"learn_joins={learn_joins!r} is not a choice",
                              "use Supernet(model, space, learn_joins='all') (or 'largest', "
                              "'none')")
        self.learn_joins = learn_joins
        self.model = prepare(net, base, {}, fold_bn, quantize_joins)
        self.train_joins(learn_joins != "none")
        self.subnet: Subnet | None = None
        self.set_subnet(space.largest(self.layers))

    # -- switching -------------------------------------------------------------------------------
    def layer(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def joins(self) -> list[ElasticQuantizer]:
        """The 8-bit quantizers of residual adds, concats and pools."""
        return [m for n, m in self.model.named_children() if n.startswith(JOIN_PREFIX)]

    def train_joins(self, on: bool) -> None:
        """Let gradients reach the join quantizers' scales (or stop them)."""
        for q in self.joins():
            for p in q.parameters():
                p.requires_grad_(on)

    def set_subnet(self, sub: Subnet) -> Subnet:
        """Switch every layer to ``sub``'s bits and condition; returns ``sub``."""
        self.space.check(sub, self.layers)
        for name, (w, a) in sub.bits.items():
            layer = self.layer(name)
            if layer.weight_quant is not None:
                layer.weight_quant.set(w, per_channel=sub.per_channel)
            if layer.input_quant is not None:
                layer.input_quant.set(a, symmetric=sub.act_symmetric)
        for q in self.joins():
            q.set(q.bits, symmetric=sub.act_symmetric)
        self.subnet = sub
        return sub

    def largest(self, **cond) -> Subnet:
        return self.space.largest(self.layers, **cond)

    def smallest(self, **cond) -> Subnet:
        return self.space.smallest(self.layers, **cond)

    def uniform(self, w: int, a: int, **cond) -> Subnet:
        return self.space.uniform(self.layers, w, a, **cond)

    def sample(self, rng: random.Random, **cond) -> Subnet:
        return self.space.sample(self.layers, rng, **cond)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- initialization and BN -------------------------------------------------------------------
    def initialize(self, data, batches: int = 4) -> "Supernet":
        """Set every activation quantizer's scales (all bit widths) by the clipping search on
        ``batches`` float batches of ``data``; weights were initialized at construction."""
        calibrate(self.model, data, max_batches=batches, progress=False)
        return self

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        """Name -> the float weight each elastic layer's quantizer sees (BN folded)."""
        out = {}
        for name in self.space.elastic_layers(self.layers) or self.layers:
            layer = self.layer(name)
            out[name] = layer.folded()[0] if isinstance(layer, QuantConvBn2d) else layer.weight
        return out

    @torch.no_grad()
    def recalibrate_bn(self, data, batches: int = 4, batch_size: int = 128) -> "Supernet":
        """Re-estimate every BatchNorm's running statistics for the current subnet.

        The statistics are the average of ``batches`` batch means / variances of the BN
        inputs, measured while the running values stay as they were (momentum 0): a folded
        conv's quantized weight depends on them, so they must not move mid-measurement.
        """
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        sums = {id(bn): [0, 0.0, 0.0] for bn in bns}

        def hook(bn, args):
            x = args[0]
            dims = [d for d in range(x.dim()) if d != 1]
            acc = sums[id(bn)]
            acc[0] += 1
            acc[1] = acc[1] + x.mean(dims)
            acc[2] = acc[2] + x.var(dims, unbiased=True)

        handles = [bn.register_forward_pre_hook(hook) for bn in bns]
        momenta = [bn.momentum for bn in bns]
        was_training = self.training
        try:
            for bn in bns:
                bn.momentum = 0.0
            self.train()
            for x in _batches(data, batches, batch_size):
                self.model(x)
        finally:
            for h, bn, m in zip(handles, bns, momenta):
                h.remove()
                bn.momentum = m
            self.train(was_training)
        for bn in bns:
            n, mean, var = sums[id(bn)]
            if n:
                bn.running_mean.copy_(mean / n)
                bn.running_var.copy_(var / n)
        return self

    @contextlib.contextmanager
    def activated(self, sub: Subnet, calibration=None, bn_batches: int = 4) -> Iterator["Supernet"]:
        """``with net.activated(sub, calibration=train_set): ...``: ``sub`` switched on and
        its BN statistics recalibrated; the BN statistics are restored afterwards."""
        saved = {k: v.clone() for k, v in self.model.state_dict().items()
                 if k.endswith(("running_mean", "running_var"))}
        previous = self.subnet
        self.set_subnet(sub)
        if calibration is not None and bn_batches:
            self.recalibrate_bn(calibration, bn_batches)
        try:
            yield self.eval()
        finally:
            self.model.load_state_dict(saved, strict=False)
            if previous is not None:
                self.set_subnet(previous)

    # -- deployment --------------------------------------------------------------------------------
    def plan(self, sub: Subnet) -> MixedPlan:
        """``sub`` as a per-layer plan: layer name -> LSQ (symmetric activations) or LSQ+
        config with exactly its bits and granularity (apply with
        ``QATConfig(base, overrides=plan)``; write with :func:`tvmq.quant.save_plan`)."""
        self.space.check(sub, self.layers)
        gran = PerChannel() if sub.per_channel else PerTensor()
        cls = LSQConfig if sub.act_symmetric else LSQPlusConfig
        base = cls(weight=QuantSpec(8, gran), activation=QuantSpec(8, symmetric=sub.act_symmetric))
        return MixedPlan.from_bits(base, sub.bits, {"subnet": sub.label()})

    def to_quantized(self, sub: Subnet, calibration=None, bn_batches: int = 4) -> nn.Module:
        """``sub`` as an ordinary converted quantized model (a new module; the supernet is
        unchanged): BN recalibrated on ``calibration`` (if given) and folded, every elastic
        quantizer replaced by an LSQ / LSQ+ :class:`~tvmq.quant.FakeQuantizer` holding that
        bit width's learned parameters. ``tq.export`` and ``tvmq.compile`` take it as is."""
        with self.activated(sub, calibration, bn_batches):
            model = copy.deepcopy(self.model)
        for name, mod in list(model.named_modules()):
            if isinstance(mod, ElasticQuantizer):
                _set_module(model, name, mod.to_fixed())
        return convert(model)

    # -- checkpoints --------------------------------------------------------------------------------
    def save(self, path, meta: dict | None = None) -> Path:
        """Write the weights, learned scales and BN statistics (plain tensors), the space and
        ``meta`` (plain values, e.g. the zoo model's name): :meth:`load` reads it with
        ``torch.load(weights_only=True)``, which runs no code from the file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT, "space": self.space.to_json(), "layers": self.layers,
                    "meta": dict(meta or {}), "state_dict": self.model.state_dict()}, path)
        return path

    @staticmethod
    def read_meta(path) -> dict:
        """The ``meta`` a checkpoint was saved with (e.g. ``{"model": "digits_cnn"}``)."""
        return dict(_read(path).get("meta", {}))

    @classmethod
    def load(cls, model: nn.Module, path, **kwargs) -> "Supernet":
        """The supernet of float ``model`` (the same architecture) with ``path``'s state."""
        ckpt = _read(path)
        net = cls(model, ElasticSpace.from_json(ckpt["space"]), **kwargs)
        if list(ckpt["layers"]) != net.layers:
            raise ConfigError(f"{path} holds layers {ckpt['layers']}, the model has {net.layers}",
                              "load it with the model it was trained from")
        net.model.load_state_dict(ckpt["state_dict"])
        return net


def _read(path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ConfigError(f"supernet checkpoint {path} not found", "check the path") from err
    except Exception as err:  # noqa: BLE001 - torch raises several types on foreign files
        raise ConfigError(f"{path} is not a tvmq supernet checkpoint ({type(err).__name__})",
                          "write it with Supernet.save / tvmq eqnet train") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a tvmq supernet checkpoint (format {FORMAT})",
                          "write it with Supernet.save / tvmq eqnet train")
    return ckpt


def subnet_from_plan(plan: Mapping) -> Subnet:
    """The :class:`Subnet` a plan written by :meth:`Supernet.plan` describes (its bits; the
    condition from its layers' weight granularity and activation symmetry)."""
    bits = bits_of(plan)
    cfgs = [c for c in plan.values() if c is not None]
    per_channel = {isinstance(c.weight.granularity, PerChannel) for c in cfgs}
    symmetric = {c.activation.symmetric for c in cfgs}
    if len(per_channel) != 1 or len(symmetric) != 1:
        raise ConfigError("the plan mixes weight granularities or activation symmetries",
                          "use a plan written by Supernet.plan / tvmq eqnet search (one "
                          "condition for the whole network)")
    return Subnet(bits, per_channel.pop(), symmetric.pop())


def _batches(data, n: int, batch_size: int):
    """The first ``n`` input batches of a Dataset (shuffled, fixed seed) or an iterable."""
    if hasattr(data, "loader"):
        data = data.loader(batch_size=batch_size, shuffle=True, seed=0)
    for i, batch in enumerate(data):
        if i >= n:
            break
        yield batch[0] if isinstance(batch, (tuple, list)) else batch
