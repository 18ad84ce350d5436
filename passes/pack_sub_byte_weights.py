"""PackSubByteWeights: store narrow integer weights of integer conv/matmul bit-packed.

A constant int8 weight of an integer (``out_dtype="int32"``) ``conv2d``/``matmul`` whose
values all fit in ``b`` signed bits, ``b`` the smallest of 2..``max_bits``, is replaced by
its ``packed`` encoding (:mod:`tvmq.ir.codecs`: an LSB-first bitstream of ``b``-bit fields,
``ceil(n*b/8)`` bytes; for 2 and 4 bits the :func:`tvmq.qref.pack_subbyte` layout) behind
a call of a marked decode function (:func:`tvmq.ir.encode_weight`). Packing is lossless,
so it depends on the values only (ONNX int4/uint4/int2 weights arrive widened to int8;
3-, 5-, 6- and 7-bit weights arrive as int8 clipped to their range).

The blocked kernels (``tvmq.schedules.BlockIntegerOps``) read the mark and decode inside
their loop nest; any other consumer runs the decode function at run time. ``FoldConstant``
never evaluates the decode (it does not fold calls of Relax functions), so the weight stays
encoded whatever runs after this pass.

Preconditions: integer lowering done (:class:`LowerIntegerConv`), constants folded.
Position: end of the quantize phase.
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import relax, tvm
from tvmq.ir import encode_weight, get_codec
from tvmq.passes import _qcommon as q

_NAME = "PackSubByteWeights"
MAX_BITS = 7  # 8 bits: the plain int8 weight


def _pattern():
    return {"anchors": ("relax.nn.conv2d", "relax.matmul"), "weight": "int8 constant",
            "out_dtype": "int32"}


def _bits_for(w: np.ndarray, max_bits: int) -> int | None:
    """Smallest width in 2..``max_bits`` whose signed range holds every value of ``w``."""
    for bits in range(2, min(max_bits, MAX_BITS) + 1):
        if get_codec("packed", bits).fits(w):
            return bits
    return None


def _mutator(max_bits: int, min_elements: int):
    @relax.expr_functor.mutator
    class _Pack(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if (q.op_name(call) not in ("relax.nn.conv2d", "relax.matmul")
                    or q.dtype_of(call) != "int32" or q.dtype_of(call.args[1]) != "int8"):
                return call
            w = q.const_np(call.args[1])
            if w is None or w.size < min_elements:
                return call
            bits = _bits_for(w, max_bits)
            if bits is None:
                return call
            weight = self.builder_.emit(encode_weight(self.builder_, get_codec("packed", bits),
                                                      w))
            return relax.Call(call.op, [call.args[0], weight], call.attrs)

    return _Pack


@tvm.transform.module_pass(opt_level=0, name=_NAME)
class PackSubByteWeights:
    """Store integer weights that fit in 2..7 bits bit-packed (``packed`` codec).

    Parameters
    ----------
    max_bits : int
        Widest width to pack to (2..7); a weight that needs more stays int8.
    min_elements : int
        Leave smaller weights alone (the decode code outweighs the saving).
    """

    def __init__(self, max_bits: int = MAX_BITS, min_elements: int = 64):
        if not 2 <= max_bits <= MAX_BITS:
            raise ValueError(f"max_bits={max_bits} is outside 2..{MAX_BITS}: use "
                             f"PackSubByteWeights(max_bits={MAX_BITS})")
        self.max_bits = max_bits
        self.min_elements = min_elements

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return q.run_mutator(mod, _mutator(self.max_bits, self.min_elements))
