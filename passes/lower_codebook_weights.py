"""LowerCodebookWeights: codebook weights (table + indices) become codebook-lookup weights.

Recognizes a constant 1-D ``table`` of ``K <= 256`` entries gathered by a constant index
tensor, ``take(table, indices, axis=0)`` (ONNX ``Gather``; tvmq's importer keeps it unevaluated,
see :mod:`tvmq.onnx_ops`), in the two forms a codebook model is exported in:

* ``conv2d/matmul(x, take(float table, idx))``: weight-only codebook, float activations;
* ``conv2d/matmul(x, dequantize(take(int8 table, idx), scale))``: integer activations; the
  integer lowering (:class:`LowerIntegerConv`) keeps the codebook. ``scale`` may be per
  output channel (a conv's folded BatchNorm: one table, a factor per channel); a float
  table's per-channel factor is a ``multiply`` after the ``take``, left in place.

and replaces the ``take`` by the codebook-encoded weight (:mod:`tvmq.ir.encoded`, codecs
``codebook`` for an int8 table and ``codebook_f32`` for a float one): indices packed at
``ceil(log2 K)`` bits plus the ``2**bits``-entry table (zero-padded), behind a call of a
marked decode function. ``FoldConstant`` never evaluates that call, so the artifact stores the
compressed form; the blocked kernels (``tvmq.schedules.BlockIntegerOps``) look the table up
inside the conv/dense loop nest, and any other consumer decodes at run time.

Imported graphs with indices out of range, a table over 256 entries, or NaN/infinite entries
raise :class:`~tvmq.errors.QuantizationParamError` naming the ``take`` (the ONNX checks of
:func:`tvmq.onnx_checks.check_quantization_params` name the ``Gather`` node earlier).

Position: first in the canonicalize phase, before any ``FoldConstant``.
"""
from __future__ import annotations

import math

import numpy as np

from tvmq._tvm import relax, tvm
from tvmq.errors import QuantizationParamError
from tvmq.ir import get_codec
from tvmq.passes import _qcommon as q

_NAME = "LowerCodebookWeights"
MAX_ENTRIES = 256
_TABLE_DTYPES = {"int8": "codebook", "float32": "codebook_f32"}


def _pattern():
    return {"anchors": ("relax.take",), "table": "1-D constant, <= 256 entries (int8/float32)",
            "indices": "integer constant, 2+ dimensions", "axis": 0}


def _fail(call, problem: str):
    shape = q.shape_of(call)
    raise QuantizationParamError(
        f"{_NAME}: codebook weight take(table, indices) of shape {shape}: {problem}",
        "re-export the codebook: at most 256 finite entries, every index in [0, K)")


def codebook_parts(call) -> tuple[np.ndarray, np.ndarray] | None:
    """``(table, indices)`` if ``call`` is a codebook ``take`` (see the module docstring);
    raises :class:`QuantizationParamError` if it is one with invalid contents."""
    if q.op_name(call) != "relax.take" or int(call.attrs.axis or 0) != 0:
        return None
    table, idx = q.const_np(call.args[0]), q.const_np(call.args[1])
    if table is None or idx is None or table.ndim != 1 or idx.ndim < 2 \
            or idx.dtype.kind not in "iu" or str(table.dtype) not in _TABLE_DTYPES:
        return None
    if table.size > MAX_ENTRIES:
        _fail(call, f"a table of {table.size} entries (at most {MAX_ENTRIES})")
    if table.dtype.kind == "f" and not np.isfinite(table).all():
        _fail(call, "NaN or infinite table entries")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= table.size):
        _fail(call, f"indices in [{int(idx.min())}, {int(idx.max())}] outside [0, {table.size})")
    return table, idx


def index_bits(entries: int) -> int:
    """Bits of one index into a table of ``entries`` (at least 1)."""
    return max(1, math.ceil(math.log2(max(entries, 2))))


def _mutator():
    @relax.expr_functor.mutator
    class _Lower(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            found = codebook_parts(call)
            if found is None:
                return call
            table, idx = found
            codec = get_codec(_TABLE_DTYPES[str(table.dtype)], index_bits(table.size))
            padded = np.pad(table, (0, codec.entries - table.size))
            parts = codec.from_indices(idx.astype(np.int64), padded)
            return _encoded_call(self.builder_, codec, parts, idx.shape)

    return _Lower


def _encoded_call(builder, codec, parts, shape):
    from tvmq.ir.encoded import decode_function

    gv = decode_function(builder, codec, parts, shape)
    return relax.Call(gv, [relax.const(parts[n], str(parts[n].dtype)) for n in codec.part_names])


@tvm.transform.module_pass(opt_level=0, name=_NAME)
class LowerCodebookWeights:
    """``take(table, indices)`` codebook weights -> codebook-encoded weights (see module)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return q.run_mutator(mod, _mutator())


__all__ = ["LowerCodebookWeights", "codebook_parts"]
