"""Where each compute layer of an imported module comes from: its ONNX node and the user's
name for it (see :mod:`tvmq.layermap`)."""
from __future__ import annotations

import math
from typing import Any

from tvmq._tvm import relax
from tvmq.layermap._graph import LAYER_OPS, Node, leaves, main_nodes

_ONNX_KIND = {"Conv": "conv2d", "Gemm": "matmul", "MatMul": "matmul"}
_CONTAINER_BITS = {"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int4": 4, "uint4": 4}


def _weight_params(node: Node, bound, inputs) -> list[str]:
    """Names of the parameters a layer's weight is computed from alone."""
    consts = leaves(node.value.args[1], bound, inputs) or []
    return [v.name for v in consts if isinstance(v, relax.Var)]


def _onnx_inits(name: str, producers, inits, depth: int = 0) -> set[str] | None:
    """Initializers tensor ``name`` is computed from alone; None when it needs an input."""
    if name in inits:
        return {name}
    node = producers.get(name)
    if node is None or depth > 16:
        return None
    out: set[str] = set()
    for i in filter(None, node.input):
        sub = _onnx_inits(i, producers, inits, depth + 1)
        if sub is None:
            return None
        out |= sub
    return out


def _array(inits, name):
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name]) if name in inits else None


def _onnx_act_bits(node, producers, inits) -> int | None:
    """Grid width of a layer's quantized input: its container (zero point's dtype), or the
    span of a ``Clip`` in front of the ``QuantizeLinear`` (narrow grids, tvmq.quant.export)."""
    dq = producers.get(node.input[0])
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    zp = _array(inits, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    container = _CONTAINER_BITS.get(zp.dtype.name, 8) if zp is not None else 8
    q = producers.get(dq.input[0])
    clip = producers.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" \
        else None
    if clip is None or clip.op_type != "Clip" or len(clip.input) < 3:
        return container
    arrays = [_array(inits, n) for n in (clip.input[1], clip.input[2], q.input[1])]
    if any(a is None or a.size != 1 for a in arrays):
        return container
    lo, hi, scale = (float(a.reshape(-1)[0]) for a in arrays)
    if scale <= 0:
        return container
    levels = round((hi - lo) / scale) + 1
    return min(container, max(1, math.ceil(math.log2(max(levels, 2)))))


def onnx_sources(model, mod) -> list[dict[str, Any]]:
    """Per compute binding of the imported ``mod["main"]`` (program order): its ONNX node
    (``onnx_node``), the user's name for it (``name``: the PyTorch module recorded by
    :func:`tvmq.quant.export`, else the node name) and its input grid (``act_grid_bits``).

    ``model`` is the ONNX graph ``mod`` was imported from (initializers named as ``mod``'s
    parameters, ``keep_params_in_input=True``).
    """
    from tvmq.quant.names import read_module_names

    modules = read_module_names(model)
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    layers = [n for n in model.graph.node if n.op_type in _ONNX_KIND and len(n.input) > 1]
    owner: dict[str, int] = {}
    for k, node in enumerate(layers):
        for init in _onnx_inits(node.input[1], producers, inits) or ():
            owner.setdefault(init, k)
    nodes, bound, inputs = main_nodes(mod)
    picked: dict[int, int] = {}
    for node in nodes:
        found = {owner[p] for p in _weight_params(node, bound, inputs) if p in owner}
        if len(found) == 1:
            picked[node.index] = found.pop()
    # weightless layers (activation x activation matmuls): in program order
    rest = [k for k in range(len(layers)) if k not in picked.values()]
    for node, k in zip([n for n in nodes if n.index not in picked], rest):
        if LAYER_OPS[node.value.op.name] == _ONNX_KIND[layers[k].op_type]:
            picked[node.index] = k

    def source(k: int) -> dict[str, Any]:
        node = layers[k]
        onnx_name = node.name or node.output[0]
        return {"onnx_node": onnx_name, "name": modules.get(node.name) or onnx_name,
                "act_grid_bits": _onnx_act_bits(node, producers, inits)}

    return [source(picked[n.index]) if n.index in picked else {} for n in nodes]


def torch_sources(program, mod) -> list[dict[str, Any]]:
    """Per compute binding of ``mod["main"]`` imported from the ``torch.export`` program
    ``program``: ``name`` is the module owning the layer's weight (``"layer1.0.conv1"``)."""
    params = dict(program.graph_signature.inputs_to_parameters)
    nodes, bound, inputs = main_nodes(mod)
    out = []
    for node in nodes:
        fqns = [params[p] for p in _weight_params(node, bound, inputs) if p in params]
        weights = [f for f in fqns if f.endswith(".weight")] or fqns
        owner = weights[0].rpartition(".")[0] if weights else ""
        out.append({"name": owner} if owner else {})
    return out
