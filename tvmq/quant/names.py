"""PyTorch module names of an exported ONNX graph's layers, kept in the file itself.

:func:`tvmq.quant.export` calls :func:`record_module_names` on the graph it traced: every
``Conv``/``Gemm``/``MatMul`` node gets the qualified name of the ``nn.Module`` it came from
(``"layer1.0.conv1"``), stored as JSON under the model's ``metadata_props`` key
:data:`METADATA_KEY` (``{onnx node name: module name}``). The compiler reads it back
(:func:`read_module_names`) so that ``meta.json`` and every per-layer report name layers as
the user's model does.

A node's module is found, in this order:

1. its weight initializer is a parameter of the model (``"fc.weight"`` -> ``"fc"``): torch
   names float initializers after the parameter;
2. its weight's value: the float weight the graph computes (the initializer, or
   ``DequantizeLinear`` of initializers) equals, to float32 rounding, exactly one module's
   weight as its forward uses it (``layer.weight_quant(layer.weight)``: the export handler's dequantized weight);
3. its scope: TorchScript names nodes after the module path, ``/layer2/layer2.0/downsample/
   downsample.0/Conv`` -> ``layer2.0.downsample.0``, when that is a module of the model (a
   model whose ``forward`` was replaced by a traced graph loses the path: ``/conv1_1/Conv``).

Nodes with none of these are left out (the compiler then uses the ONNX node name).
"""
from __future__ import annotations

import json

import numpy as np

METADATA_KEY = "tvmq.layer_names"
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def scope_module(node_name: str) -> str | None:
    """The module path a TorchScript-exported node name carries, or None.

    >>> scope_module("/layer2/layer2.0/downsample/downsample.0/Conv")
    'layer2.0.downsample.0'
    """
    parts = node_name.split("/")
    if len(parts) < 3 or parts[0]:
        return None
    path: list[str] = []
    for comp in parts[1:-1]:
        head, _, rest = comp.partition(".")
        # a container's child is scoped "<container attr>.<child>": extend, don't repeat
        path += rest.split(".") if rest and path and path[-1] == head else comp.split(".")
    return ".".join(path) or None


def _weight_owner(node, params: set[str]) -> str | None:
    name = node.input[1] if len(node.input) > 1 else ""
    owner, _, attr = name.rpartition(".")
    return owner if name in params and attr == "weight" and owner else None


def _graph_weight(name: str, producers, inits) -> np.ndarray | None:
    """The float weight tensor ``name`` of the graph: an initializer or its dequantization."""
    from onnx import helper, numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float32)
    node = producers.get(name)
    if node is None or node.op_type != "DequantizeLinear" or \
            any(i not in inits for i in node.input if i):
        return None
    q, scale, *zp = (numpy_helper.to_array(inits[i]) for i in node.input if i)
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
    shape = [-1 if d == axis % q.ndim else 1 for d in range(q.ndim)] if scale.ndim else []
    zero = zp[0].astype(np.float32).reshape(shape) if zp else np.float32(0)
    return (q.astype(np.float32) - zero) * scale.astype(np.float32).reshape(shape)


def _module_weights(module) -> dict[str, np.ndarray]:
    """``{module name: weight as its forward uses it}`` of the modules holding a weight."""
    import torch

    out = {}
    for name, layer in module.named_modules():
        weight, wq = getattr(layer, "weight", None), getattr(layer, "weight_quant", None)
        if not name or not isinstance(weight, torch.Tensor):
            continue
        try:
            with torch.no_grad():
                weight = wq(weight) if callable(wq) else weight
            out[name] = weight.detach().cpu().numpy().astype(np.float32)
        except Exception:  # noqa: BLE001 - a quantizer that cannot run alone: no value match
            continue
    return out


def _value_owner(node, producers, inits, weights: dict[str, np.ndarray]) -> str | None:
    w = _graph_weight(node.input[1], producers, inits) if len(node.input) > 1 else None
    if w is None:
        return None
    forms = [w, w.T] if w.ndim == 2 else [w]  # Gemm/MatMul may hold the transposed weight
    owners = [name for name, mw in weights.items() if any(_same(f, mw) for f in forms)]
    return owners[0] if len(owners) == 1 else None


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to float32 rounding (the handler may scale in float64); the first values are
    compared first, so that many layers of one shape stay cheap to tell apart."""
    if a.shape != b.shape:
        return False
    head = (a.reshape(-1)[:64], b.reshape(-1)[:64])
    return np.allclose(*head, rtol=1e-6, atol=0) and np.allclose(a, b, rtol=1e-6, atol=0)


def module_names(model, module) -> dict[str, str]:
    """``{onnx node name: module name}`` for the layer nodes of ``model`` traced from
    ``module`` (see the module docstring for how a node's module is found)."""
    modules = {name for name, _ in module.named_modules() if name}
    params = {name for name, _ in module.named_parameters()}
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    weights: dict[str, np.ndarray] | None = None
    out = {}
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS or not node.name:
            continue
        name = _weight_owner(node, params)
        if name not in modules:
            weights = _module_weights(module) if weights is None else weights
            name = _value_owner(node, producers, inits, weights)
        if name is None:
            scoped = scope_module(node.name)
            name = scoped if scoped in modules else None
        if name:
            out[node.name] = name
    return out


def record_module_names(model, module) -> dict[str, str]:
    """Store :func:`module_names` in ``model.metadata_props`` (replacing an older record).

    Parameters
    ----------
    model : onnx.ModelProto
        The graph ``torch.onnx.export`` wrote for ``module`` (node names not yet changed).
    module : torch.nn.Module
        The module that was traced.

    Returns
    -------
    dict
        The recorded mapping.
    """
    names = module_names(model, module)
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(names, sort_keys=True)
    return names


def read_module_names(model) -> dict[str, str]:
    """The mapping :func:`record_module_names` stored in ``model``, or ``{}``."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                names = json.loads(prop.value)
            except ValueError:
                return {}
            return {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}
    return {}
