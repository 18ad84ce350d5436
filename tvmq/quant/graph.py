"""Patterns found on the traced graph (``torch.fx``), not by module adjacency.

* :func:`conv_bn_pairs`: every conv whose output feeds only a BatchNorm (convs and BNs held
  as attributes and wired in ``forward``, as ResNets are written, not only consecutive
  children of an ``nn.Sequential``).
* :func:`quantize_joins`: quantizes the inputs and outputs of residual adds, concats and
  pools the way the integer lowering wants them (``add(DQ(a), DQ(b))`` followed by ``Q``,
  ``mean(DQ(x))`` followed by ``Q``, ``max_pool(DQ(x))``), and the output of a quantized
  layer that feeds an elementwise activation other than ReLU (SiLU, Hardswish, GELU,
  LeakyReLU, Sigmoid, ...: ``act(DQ(x))`` followed by the next layer's ``Q`` compiles to one
  integer lookup table, as onnxruntime's ``quantize_static`` places them), so that the
  exported graph has no float island between quantized layers. One quantizer per tensor: every consumer of a
  quantized tensor reads the same ``Q -> DQ`` (as onnxruntime's ``quantize_static`` does).

A model that ``torch.fx`` cannot trace (data-dependent control flow) keeps the
``nn.Sequential`` adjacency rule for BN folding and float joins, with a warning.
"""
from __future__ import annotations

import operator
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from tvmq.quant.layers import QUANT_LAYERS
from tvmq.quant.quantizer import Quantizer

_ADD = {operator.add, operator.iadd, torch.add}
_CAT = {torch.cat, torch.concat}
_AVG_F = {F.adaptive_avg_pool2d, F.avg_pool2d}
_AVG_M = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
_MAX_F = {F.max_pool2d}
_MAX_M = (nn.MaxPool2d,)
# ops whose output is on the grid of their (quantized) input: shape moves, relu, max
_PASS_F = {torch.flatten, torch.reshape, F.relu, torch.relu, F.dropout}
_PASS_M = (nn.ReLU, nn.Identity, nn.Flatten, nn.Dropout)
_PASS_METHODS = {"view", "reshape", "flatten", "relu", "contiguous", "add"}
_RELU = ({F.relu, torch.relu}, (nn.ReLU,), {"relu"})
# elementwise activations other than ReLU/ReLU6: an 8-bit input makes them one integer
# lookup table in the compiled model (tvmq.passes.LowerIntegerLUT)
_ACT_F = {F.silu, F.hardswish, F.hardsigmoid, F.gelu, F.leaky_relu, F.mish, F.elu,
          F.sigmoid, torch.sigmoid, torch.tanh, F.tanh, F.softplus, F.selu, F.celu}
_ACT_M = (nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.LeakyReLU, nn.Mish, nn.ELU,
          nn.Sigmoid, nn.Tanh, nn.Softplus, nn.SELU, nn.CELU)
_ACT_METHODS = {"sigmoid", "tanh"}
JOIN_PREFIX = "tvmq_join_quant"


class _Tracer(fx.Tracer):
    """Quantized layers and quantizers are leaves (their forward has Python branches)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QUANT_LAYERS + (Quantizer,)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, why: str) -> fx.GraphModule | None:
    """``model`` traced by ``torch.fx``; ``None`` (with a warning naming ``why``) if it cannot be."""
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # noqa: BLE001 - fx raises many types on untraceable Python
        warnings.warn(f"torch.fx cannot trace {type(model).__name__} ({type(err).__name__}: "
                      f"{err}); {why}", stacklevel=3)
        return None
    return fx.GraphModule(model, graph)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def conv_bn_pairs(model: nn.Module) -> dict[str, str] | None:
    """conv name -> BatchNorm2d name for each conv whose only use is that BN (called once).

    ``None`` when the model cannot be traced (the caller falls back to adjacency).
    """
    gm = trace(model, "BatchNorm folding only sees conv -> BN inside an nn.Sequential")
    if gm is None:
        return None
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = {}
    for node in gm.graph.nodes:
        users = list(node.users)
        if (type(_module(gm, node)) is nn.Conv2d and len(users) == 1
                and isinstance(_module(gm, users[0]), nn.BatchNorm2d)
                and users[0].args[0] is node and calls[node.target] == 1
                and calls[users[0].target] == 1):
            pairs[node.target] = users[0].target
    return pairs


def fold_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every conv -> BatchNorm pair of ``model`` into the conv, in place (the BN becomes
    ``nn.Identity``); the model is put in eval mode, since running statistics are folded.

    The pairs are :func:`conv_bn_pairs`' (none when the model cannot be traced). Used where
    the deployed (folded) weights are what matters outside QAT: Hessian sensitivity,
    zero-shot targets.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for conv_name, bn_name in (conv_bn_pairs(model) or {}).items():
        fused = fuse_conv_bn_eval(model.get_submodule(conv_name), model.get_submodule(bn_name))
        _replace_module(model, conv_name, fused)
        _replace_module(model, bn_name, nn.Identity())
    return model


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """"add", "cat", "avg", "max", "pass", "act" or None."""
    mod = _module(gm, node)
    if (node.op == "call_function" and node.target in _ACT_F) or isinstance(mod, _ACT_M) \
            or (node.op == "call_method" and node.target in _ACT_METHODS):
        return "act"
    if node.op == "call_function":
        for kind, fns in (("add", _ADD), ("cat", _CAT), ("avg", _AVG_F), ("max", _MAX_F),
                          ("pass", _PASS_F)):
            if node.target in fns:
                return kind
    if node.op == "call_method":
        if node.target == "add" and len(node.args) == 2 and isinstance(node.args[1], fx.Node):
            return "add"
        return "pass" if node.target in _PASS_METHODS - {"add"} else None
    if isinstance(mod, _AVG_M):
        return "avg"
    if isinstance(mod, _MAX_M):
        return "max"
    return "pass" if isinstance(mod, _PASS_M) else None


def _operands(node: fx.Node, kind: str) -> list[fx.Node]:
    if kind == "cat":
        return [a for a in node.args[0] if isinstance(a, fx.Node)]
    if kind == "add":
        return [a for a in node.args[:2] if isinstance(a, fx.Node)]
    return [node.args[0]] if isinstance(node.args[0], fx.Node) else []


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    fns, mods, methods = _RELU
    return ((node.op == "call_function" and node.target in fns)
            or (node.op == "call_method" and node.target in methods)
            or isinstance(_module(gm, node), mods))


def _from_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``node`` is a quantized layer's output (looking through identities: folded BNs)."""
    while isinstance(_module(gm, node), (nn.Identity, nn.Dropout)) and node.args \
            and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return isinstance(_module(gm, node), QUANT_LAYERS)


class _Inserter:
    """Adds quantizer modules to the model and ``call_module`` nodes to the graph."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, make: Callable[[], Quantizer]):
        self.model, self.gm, self.make = model, gm, make
        self.source: dict[fx.Node, Quantizer] = {}  # quantized node -> its quantizer

    def after(self, node: fx.Node) -> fx.Node:
        """Quantize ``node``'s value; every consumer reads the quantized value."""
        name = f"{JOIN_PREFIX}_{len([n for n in self.model._modules if n.startswith(JOIN_PREFIX)])}"
        quant = self.make()
        self.model.add_module(name, quant)
        self.gm.add_submodule(name, quant)
        with self.gm.graph.inserting_after(node):
            qnode = self.gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(qnode, delete_user_cb=lambda user: user is not qnode)
        self.source[qnode] = quant
        return qnode


def quantize_joins(model: nn.Module, make: Callable[[], Quantizer]) -> int:
    """Insert activation quantizers (built by ``make``) around adds, concats and pools.

    Operands that are not yet quantized get a quantizer; add/concat/average-pool outputs get
    one (after a ReLU that is their only use); max pooling and shape moves keep their input's
    grid. A quantized layer whose input is already quantized at its own bit width drops its
    input quantizer (one ``Q -> DQ`` per tensor). ``model.forward`` becomes the rewritten
    graph's. Returns the number of quantizers inserted (0 when untraceable).
    """
    gm = trace(model, "residual adds, concats and pools stay float")
    if gm is None:
        return 0
    ins = _Inserter(model, gm, make)
    for node in list(gm.graph.nodes):
        if isinstance(_module(gm, node), Quantizer):  # quantized by an earlier prepare
            ins.source[node] = _module(gm, node)
        kind = _kind(gm, node)
        if kind == "act" and node.args and isinstance(node.args[0], fx.Node) \
                and node.args[0] not in ins.source and _from_layer(gm, node.args[0]):
            ins.after(node.args[0])  # a quantized layer's output: an 8-bit activation input
        if kind in ("add", "cat", "avg", "max"):
            for arg in _operands(node, kind):
                if arg not in ins.source:
                    ins.after(arg)
        if kind == "max" or (kind == "pass" and node.args and node.args[0] in ins.source):
            ins.source[node] = ins.source[node.args[0]]
        elif kind in ("add", "cat", "avg"):
            users = list(node.users)
            out = users[0] if len(users) == 1 and _is_relu(gm, users[0]) else node
            if not any(isinstance(_module(gm, u), Quantizer) for u in out.users):
                ins.after(out)
    if not any(n.op == "call_module" and n.target.startswith(JOIN_PREFIX) for n in gm.graph.nodes):
        return 0
    _share_layer_inputs(gm, ins.source)
    _adopt_forward(model, gm)
    return sum(1 for n in model._modules if n.startswith(JOIN_PREFIX))


def _share_layer_inputs(gm: fx.GraphModule, source: dict[fx.Node, Quantizer]) -> None:
    for node in gm.graph.nodes:
        layer = _module(gm, node)
        if not isinstance(layer, QUANT_LAYERS) or node.args[0] not in source:
            continue
        upstream, own = source[node.args[0]], layer.input_quant
        if own is not None and type(own) is type(upstream) and own.bits == upstream.bits:
            layer.input_quant = None


def _adopt_forward(model: nn.Module, gm: fx.GraphModule) -> None:
    """Run the rewritten graph as ``model``'s forward (the model is quantized in place).

    ``model`` becomes an instance of a subclass of its own class whose ``forward`` is the
    graph's (as ``torch.fx`` does for a GraphModule): ``isinstance`` still holds, ``deepcopy``
    and a later trace see the rewritten forward.
    """
    gm.graph.lint()
    gm.recompile()
    for node in gm.graph.nodes:
        if node.op == "get_attr" and not hasattr(model, node.target.split(".")[0]):
            setattr(model, node.target, getattr(gm, node.target))
    base = getattr(type(model), "_tvmq_source_class", type(model))
    model.__class__ = type(base.__name__, (base,), {
        "forward": type(gm).forward, "_tvmq_source_class": base, "__module__": base.__module__})
