"""Per-layer map: PyTorch module -> ONNX node -> Relax binding -> PrimFunc, with costs.

One entry per compute layer (``conv2d``, ``matmul``), kept in the artifact's ``meta.json``
under ``layers`` (fields: ``docs/artifact.md``). A layer's identity crosses each stage so:

1. **source -> imported Relax** (:func:`onnx_sources`, :func:`torch_sources`, at import): a
   layer's weight is a parameter of the imported ``main`` named after the ONNX initializer
   (or the ``torch.export`` parameter), so the weight's constant-only ancestry names the ONNX
   node (or the ``nn.Module``). Weightless matmuls fall back to program order. The module
   name of an ONNX node is the one :func:`tvmq.quant.export` recorded in the file
   (:mod:`tvmq.quant.names`); third-party files keep the ONNX node name.
2. **imported -> lowered** (after the quantize phase): the passes rewrite values, not the
   layer structure; layers are paired by op, weight and output shape and by the layers
   upstream of them (``_graph.match``), which survives any rewrite of the weight itself.
3. **lowered -> PrimFunc** (after ``FuseOps``/``FuseTIR``): a compute layer is a called
   PrimFunc holding a multiply-accumulate reduction; paired by upstream layers and MACs
   (the kernels pad channels to their block, so a kernel may do a few times the layer's).

Costs come from the lowered module, i.e. what the artifact stores and runs: ``weight_bytes``
sums the constants the weight is decoded from (so a packed or encoded weight counts as
stored), ``weight_bits``/``act_bits`` are the integer widths the kernel consumes (32 for
float layers), ``bops = macs * weight_bits * act_bits``.
"""
from __future__ import annotations

import collections
from typing import Any

import numpy as np

from tvmq._tvm import structural_hash
from tvmq.layermap._graph import (LAYER_OPS, main_nodes, match, primfunc_macs, primfuncs,
                                  same_layer)
from tvmq.layermap.costs import row
from tvmq.layermap.sources import onnx_sources, torch_sources

__all__ = ["LAYER_OPS", "label_rows", "layer_table", "onnx_sources", "primfunc_macs",
           "task_layers", "torch_sources"]


def layer_table(imported, lowered, legalized=None) -> list[dict[str, Any]]:
    """The per-layer map of one compile, one entry per compute layer in program order.

    Parameters
    ----------
    imported : tvmq.frontend.ImportedModel
        The model as imported (its ``layer_sources`` name the layers).
    lowered : tvm.IRModule
        After the quantize phase (what the costs are read from).
    legalized : tvm.IRModule, optional
        After the legalize phase (``FuseOps``/``FuseTIR``): gives each layer its PrimFunc.

    Returns
    -------
    list of dict
        Fields listed in ``docs/artifact.md`` (``name``, ``onnx_node``, ``relax_var``,
        ``primfunc``, ``weight_bits``, ``act_bits``, ``weight_bytes``, ``macs``, ``bops`` ...).
    """
    src_nodes, _, _ = main_nodes(imported.mod)
    sources = list(getattr(imported, "layer_sources", None) or [])
    nodes, bound, inputs = main_nodes(lowered)
    to_src = match(src_nodes, nodes, same_layer)
    kernels = primfuncs(legalized, nodes) if legalized is not None else {}
    rows = []
    for node in nodes:
        k = to_src.get(node.index)
        source = sources[k] if k is not None and k < len(sources) else {}
        entry = row(node, bound, inputs, source, kernels.get(node.index))
        book = codebook_info(lowered, node.value.args[1], bound)
        if book is not None:
            entry["codebook"] = book
            entry["weight_bits"] = book["index_bits"]
            entry["bops"] = int(entry["macs"]) * book["index_bits"] * int(entry["act_bits"])
        rows.append(entry)
    return rows


def codebook_info(mod, weight, bound) -> dict[str, Any] | None:
    """``{"k", "index_bits", "table", "table_dtype"}`` when the weight is a codebook lookup
    (:class:`tvmq.passes.LowerCodebookWeights`; through a ``permute_dims`` and a per-channel
    ``multiply``, a BatchNorm factor on a float codebook), else None."""
    from tvmq.ir import find_encoded

    for _ in range(2):
        expr = bound.get(weight, weight) if hasattr(bound, "get") else weight
        if getattr(getattr(expr, "op", None), "name", "") in ("relax.permute_dims",
                                                               "relax.multiply"):
            weight = expr.args[0]
    enc = find_encoded(mod, weight, bound.get)
    if enc is None or not enc.codec.name.startswith("codebook"):
        return None
    table = np.asarray(enc.parts["table"])
    return {"k": int(table.size), "index_bits": int(enc.codec.bits),
            "table": [float(v) if table.dtype.kind == "f" else int(v) for v in table],
            "table_dtype": str(table.dtype)}


def label_rows(rows: list[dict[str, Any]] | None, layers: list[dict[str, Any]] | None):
    """Name per-PrimFunc timing rows (:func:`tvmq.device.layers.profile_layers`, in call
    order) by layer: adds ``layer``, ``weight_bits``, ``act_bits`` and ``macs`` to the rows
    of layer kernels. Returns ``rows``."""
    by_call = {(ly.get("primfunc"), ly.get("primfunc_call")): ly for ly in layers or ()
               if ly.get("primfunc")}
    seen: collections.Counter = collections.Counter()
    for timing in rows or ():
        layer = by_call.get((timing["name"], seen[timing["name"]]))
        seen[timing["name"]] += 1
        if layer is not None:
            timing.update(layer=layer["name"], weight_bits=layer.get("weight_bits"),
                       act_bits=layer.get("act_bits"), macs=layer.get("macs"))
    return rows


def task_layers(task_names: list[str], legalized, layers) -> list[list[str]]:
    """Layer names per tuning task: the layers whose PrimFunc is the task's function or one
    structurally equal to it (MetaSchedule tunes identical functions once)."""
    hashes: dict[str, int] = {}

    def key(name: str) -> int | None:
        if name not in hashes:
            gvs = [gv for gv in legalized.functions if gv.name_hint == name]
            hashes[name] = structural_hash(legalized[gvs[0]]) if gvs else None
        return hashes[name]

    return [[ly["name"] for ly in layers if ly.get("primfunc")
             and key(ly["primfunc"]) is not None and key(ly["primfunc"]) == key(task)]
            for task in task_names]
