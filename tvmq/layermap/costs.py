"""Costs of one compute layer of the lowered module: stored weight bytes, the integer widths
its kernel consumes, MACs and BOPs (see :mod:`tvmq.layermap`)."""
from __future__ import annotations

import math
import re
from typing import Any

from tvmq._tvm import Constant, relax
from tvmq.layermap._graph import Node, leaves


def dtype_bits(dtype: str | None) -> int:
    """Bits of one value of ``dtype`` (``"int8"`` -> 8, ``"float8_e4m3fn"`` -> 8); 32 when
    unknown."""
    width = re.match(r"\D*(\d+)", str(dtype or ""))
    return int(width.group(1)) if width else 32


def _stored_bytes(consts: list | None) -> int:
    """Bytes of the distinct non-scalar constants among ``consts`` (shift amounts, masks and
    other scalars of a decoding are not weights)."""
    unique: list = []
    for leaf in consts or ():
        if isinstance(leaf, Constant) and len(leaf.value.shape) and \
                not any(leaf.same_as(u) for u in unique):
            unique.append(leaf)
    return sum(math.ceil(math.prod(u.value.shape) * dtype_bits(u.value.dtype) / 8)
               for u in unique)


def _range_bits(const) -> int:
    arr = const.value.numpy()
    if not arr.size:
        return 1
    return max(1, math.ceil(math.log2(max(int(arr.max()) - int(arr.min()) + 1, 2))))


def _weight_bits(entry: dict, weight, stored: int) -> int:
    """Integer width of the weight the kernel consumes: the packed width the report found,
    the container (int8/uint8), the value span of a wider container (int16 ``W - z_w``), or,
    for a weight decoded from stored parts (any codec), the stored bits per value when fewer
    than the container's."""
    from tvmq.report import _dtype, _shape

    bits = dtype_bits(_dtype(weight))
    if not entry.get("integer"):
        return bits
    reported = entry.get("weight_bits")
    if reported and reported < bits:
        return int(reported)
    if isinstance(weight, Constant):
        return min(bits, _range_bits(weight)) if bits > 8 else bits
    numel = math.prod(_shape(weight) or [0])
    if numel and 0 < stored * 8 < bits * numel:
        return max(1, stored * 8 // numel)
    return bits


def _input_bits(expr, bound, depth: int = 0) -> int:
    """Narrowest integer container on the input's way in (``astype``/``subtract``/``pad``:
    the int16 path widens a uint8 activation, its grid stays 8 bits)."""
    from tvmq.report import _dtype

    bits = dtype_bits(_dtype(expr))
    value = bound.get(expr) if isinstance(expr, relax.Var) else None
    if depth < 4 and isinstance(value, relax.Call) and getattr(value.op, "name", "") in (
            "relax.astype", "relax.subtract", "relax.nn.pad"):
        return min(bits, _input_bits(value.args[0], bound, depth + 1))
    return bits


def _act_bits(entry: dict, data, bound, grid: int | None) -> int:
    """The input's width: float's for float layers, else its container narrowed to the
    grid the source model declares (``grid``)."""
    from tvmq.report import _dtype

    if not entry.get("integer"):
        return dtype_bits(_dtype(data))
    bits = _input_bits(data, bound)
    return min(bits, grid) if grid else bits


def row(node: Node, bound, inputs, source: dict, kernel) -> dict[str, Any]:
    """The map entry of one lowered compute layer: the report's fields
    (:func:`tvmq.report.describe_binding`), its names (``source``: from the import;
    ``kernel``: PrimFunc name and call) and its costs."""
    from tvmq.report import _shape, describe_binding

    entry = describe_binding(node.var, node.value, bound) or {"macs": node.macs}
    data, weight = node.value.args[0], node.value.args[1]
    stored = _stored_bytes(leaves(weight, bound, inputs))
    wbits = _weight_bits(entry, weight, stored)
    abits = _act_bits(entry, data, bound, source.get("act_grid_bits"))
    onnx_node = source.get("onnx_node")
    entry.update(name=source.get("name") or onnx_node or node.var.name, onnx_node=onnx_node,
                 relax_var=node.var.name, weight_shape=_shape(weight),
                 primfunc=kernel[0] if kernel else None,
                 primfunc_call=kernel[1] if kernel else None,
                 weight_bits=wbits, act_bits=abits, weight_bytes=stored,
                 bops=int(entry["macs"]) * wbits * abits)
    return entry
