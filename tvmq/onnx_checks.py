"""Checks of a quantized ONNX model's quantization parameters, before import.

:func:`check_quantization_params` runs first in :func:`tvmq.onnx_ops.canonicalize` (so on
every ``tvmq.frontend.import_onnx``). It looks at the constant parameters of
``QuantizeLinear`` / ``DequantizeLinear`` and of the QOperator ops, and raises
:class:`~tvmq.errors.QuantizationParamError` naming the node for: a zero, negative, NaN or
infinite scale; a zero point outside the range of its integer type; an ``axis`` outside the
tensor's rank; a per-axis scale whose length is not the size of that axis; scale and zero
point of different shapes. Parameters that are not initializers are not checked (they are
only known at run time).

Codebook weights (``Gather(table, indices)`` of two initializers, the table 1-D, feeding a
``Conv``/``Gemm``/``MatMul`` weight directly or through ``DequantizeLinear``): a table of more
than 256 entries, a NaN or infinite entry, or an index outside ``[0, K)`` raise
:class:`~tvmq.errors.QuantizationParamError` naming the ``Gather`` node.
"""
from __future__ import annotations

import numpy as np

from tvmq.errors import QuantizationParamError
from tvmq.qref import DTYPE_RANGE

_FIX = "re-export or recalibrate the model so every scale is a positive finite float32 and " \
       "every zero point fits its integer type"
# op type -> [(scale input, zero-point input, quantized tensor input or None)]
_QOP_PARAMS = {
    "QLinearConv": [(1, 2, 0), (4, 5, 3), (6, 7, None)],
    "QLinearMatMul": [(1, 2, 0), (4, 5, 3), (6, 7, None)],
    "QLinearAdd": [(1, 2, 0), (4, 5, 3), (6, 7, None)],
    "QLinearGlobalAveragePool": [(1, 2, 0), (3, 4, None)],
    "QLinearMul": [(1, 2, 0), (4, 5, 3), (6, 7, None)],
    "QLinearSigmoid": [(1, 2, 0), (3, 4, None)],
    "QLinearLeakyRelu": [(1, 2, 0), (3, 4, None)],
    "QLinearAveragePool": [(1, 2, 0), (3, 4, None)],
    "QLinearSoftmax": [(1, 2, 0), (3, 4, None)],
    "QLinearReduceMean": [(1, 2, 0), (3, 4, None)],
    "QLinearWhere": [(2, 3, 1), (5, 6, 4), (7, 8, None)],
    "QGemm": [(1, 2, 0), (4, 5, 3), (7, 8, None)],
}


class _Model:
    def __init__(self, model):
        from onnx import helper, numpy_helper

        self.inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.graph_inputs = {i.name for i in model.graph.input} - set(self.inits)
        self.types = {}
        for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
            t = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else None
            self.types[vi.name] = (tuple(dims) if t.HasField("shape") else None, dtype)

    def const(self, node, idx):
        if idx >= len(node.input) or not node.input[idx]:
            return None
        return self.inits.get(node.input[idx])

    def shape_dtype(self, name):
        if name in self.inits:
            v = self.inits[name]
            return v.shape, v.dtype.name
        return self.types.get(name, (None, None))


def _fail(node, problem: str):
    raise QuantizationParamError(f"{node.op_type} node '{node.name or node.output[0]}': {problem}",
                                 _FIX)


def _check_scale(node, scale):
    s = np.asarray(scale, np.float64).reshape(-1)
    bad = ~np.isfinite(s) | (s <= 0)
    if bad.any():
        _fail(node, f"scale must be positive and finite, got {s[bad][0]}")


def _check_zero(node, zero, dtype):
    lo, hi = DTYPE_RANGE.get(dtype, (None, None))
    z = np.asarray(zero).astype(np.int64).reshape(-1)
    if lo is not None and z.size and (z.min() < lo or z.max() > hi):
        _fail(node, f"zero point {z[(z < lo) | (z > hi)][0]} is out of range [{lo}, {hi}] "
                    f"for {dtype}")


def _check_shapes_agree(node, scale, zero):
    """Scale and zero point: both single values (scalar or [1]) or the same shape."""
    if zero is None or (np.size(scale) == 1 and np.size(zero) == 1):
        return
    if np.shape(zero) != np.shape(scale):
        _fail(node, f"scale shape {list(np.shape(scale))} and zero point shape "
                    f"{list(np.shape(zero))} differ")


def _check_axis(node, scale, zero, shape, axis, block_size):
    _check_shapes_agree(node, scale, zero)
    if np.size(scale) <= 1 or shape is None:
        return
    rank = len(shape)
    if not -rank <= axis < rank:
        _fail(node, f"axis {axis} is out of range for a rank-{rank} tensor")
    channels = shape[axis % rank]
    if not block_size and channels and np.size(scale) != channels:
        _fail(node, f"per-axis scale has {np.size(scale)} values but axis {axis} has "
                    f"{channels} channels")


def _check_qdq(m, node):
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    scale, zero = m.const(node, 1), m.const(node, 2)
    if scale is None:
        return
    _check_scale(node, scale)
    shape, in_dtype = m.shape_dtype(node.input[0])
    q_dtype = in_dtype if node.op_type == "DequantizeLinear" else \
        (zero.dtype.name if zero is not None else "uint8")
    if "output_dtype" in attrs and attrs["output_dtype"]:
        q_dtype = helper.tensor_dtype_to_np_dtype(attrs["output_dtype"]).name
    if zero is not None:
        _check_zero(node, zero, q_dtype)
    _check_axis(node, scale, zero, shape, int(attrs.get("axis", 1)),
                int(attrs.get("block_size", 0)))


def _check_qoperator(m, node):
    for s_idx, z_idx, q_idx in _QOP_PARAMS[node.op_type]:
        fed = [node.input[k] for k in (s_idx, z_idx) if k < len(node.input)
               and node.input[k] in m.graph_inputs]
        if fed:
            raise QuantizationParamError(
                f"{node.op_type} node '{node.name or node.output[0]}': quantization "
                f"parameter(s) {fed} are graph inputs, known only at run time",
                "make scales and zero points initializers (constants) of the model, e.g. "
                "onnx.numpy_helper.from_array(value, name) in graph.initializer")
        scale, zero = m.const(node, s_idx), m.const(node, z_idx)
        if scale is not None:
            _check_scale(node, scale)
        if zero is not None:
            dtype = m.shape_dtype(node.input[q_idx])[1] if q_idx is not None else None
            _check_zero(node, zero, dtype or zero.dtype.name)
        if scale is not None:
            _check_shapes_agree(node, scale, zero)


def check_quantization_params(model) -> None:
    """Raise :class:`~tvmq.errors.QuantizationParamError` on the first invalid parameter."""
    m = _Model(model)
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _check_qdq(m, node)
        elif node.op_type in _QOP_PARAMS:
            _check_qoperator(m, node)
    _check_codebooks(model, m)


#: weight input of the ops a codebook may feed
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
MAX_CODEBOOK = 256


def codebook_gathers(model) -> list:
    """``Gather`` nodes that produce a layer's weight from a 1-D table and an index tensor
    (both initializers, possibly through ``Cast``), directly or through ``DequantizeLinear``
    (and ``Transpose``)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        slot = _WEIGHT_INPUT.get(node.op_type)
        if slot is None or len(node.input) <= slot:
            continue
        src = producers.get(node.input[slot])
        while src is not None and src.op_type in ("DequantizeLinear", "Transpose"):
            src = producers.get(src.input[0])
        if src is None or src.op_type != "Gather":
            continue
        idx = src.input[1]
        cast = producers.get(idx)
        if cast is not None and cast.op_type == "Cast":
            idx = cast.input[0]
        if src.input[0] in inits and idx in inits:
            found.append((src, src.input[0], idx))
    return found


def _check_codebooks(model, m: _Model) -> None:
    fix = ("re-export the codebook: at most 256 finite entries, every index in [0, K) "
           "(tvmq.quant.export writes this form)")
    for node, table_name, idx_name in codebook_gathers(model):
        table, idx = m.inits[table_name], m.inits[idx_name]
        where = f"Gather node '{node.name or node.output[0]}'"
        if table.ndim != 1:
            continue  # an embedding-style table: not a codebook
        if table.size > MAX_CODEBOOK:
            raise QuantizationParamError(f"{where}: codebook of {table.size} entries (at most "
                                         f"{MAX_CODEBOOK})", fix)
        if table.dtype.kind == "f" and not np.isfinite(table).all():
            raise QuantizationParamError(f"{where}: codebook entries are NaN or infinite", fix)
        if idx.dtype.kind not in "iu":
            raise QuantizationParamError(f"{where}: indices are {idx.dtype}, not integers", fix)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= table.size):
            raise QuantizationParamError(
                f"{where}: indices in [{int(idx.min())}, {int(idx.max())}] are outside "
                f"[0, {table.size}) of its {table.size}-entry codebook", fix)
