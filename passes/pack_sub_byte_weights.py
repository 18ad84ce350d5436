"""PackSubByteWeights: store int4/int2 weights of integer conv/matmul packed in uint8.

A constant int8 weight of an integer (``out_dtype="int32"``) ``conv2d``/``matmul`` whose
values all fit in ``bits`` signed bits (2 tried first, then 4) is replaced by a uint8
constant holding ``8 // bits`` values per byte (:func:`tvmq.qref.pack_subbyte` layout) and an
unpacking expression (``right_shift``, ``bitwise_and``, sign extension by
``(v ^ 2**(b-1)) - 2**(b-1)``) that runs inside the compiled program. Packing is lossless, so
it only depends on the values (ONNX int4/uint4/int2 weights arrive widened to int8).

Preconditions: integer lowering done (:class:`LowerIntegerConv`). Position: **last** pass
that may see constants: a ``FoldConstant`` after it evaluates the unpacking at compile time
and stores the dense weights again (the artifact grows back). tvmq's pipeline folds
constants before it and drops ``FoldConstant`` from the legalize phase.
"""
from __future__ import annotations

import numpy as np

from tvmq import qref
from tvmq._tvm import relax, tvm
from tvmq.passes import _qcommon as q

_NAME = "PackSubByteWeights"


def _pattern():
    return {"anchors": ("relax.nn.conv2d", "relax.matmul"), "weight": "int8 constant",
            "out_dtype": "int32"}


def _bits_for(w: np.ndarray, max_bits: int) -> int | None:
    for bits in (2, 4):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if bits <= max_bits and w.min() >= lo and w.max() <= hi:
            return bits
    return None


def unpack_expr(emit, packed: np.ndarray, bits: int, shape, dtype: str = "int8"):
    """Relax expression rebuilding the signed ``shape`` tensor from packed uint8 bytes."""
    size = int(np.prod(shape))
    k = 8 // bits
    p = q.c(packed, "uint8")
    lanes = []
    for j in range(k):
        shifted = emit(relax.op.right_shift(p, q.c(j * bits, "uint8"))) if j else p
        lane = emit(relax.op.bitwise_and(shifted, q.c((1 << bits) - 1, "uint8")))
        lanes.append(emit(relax.op.expand_dims(lane, [1])))
    flat = emit(relax.op.reshape(emit(relax.op.concat(lanes, axis=1)), [packed.size * k]))
    if packed.size * k != size:
        flat = emit(relax.op.strided_slice(flat, axes=[0], begin=[0], end=[size]))
    v = emit(relax.op.astype(flat, dtype))
    sign = q.c(1 << (bits - 1), dtype)
    v = emit(relax.op.subtract(emit(relax.op.bitwise_xor(v, sign)), sign))
    return emit(relax.op.reshape(v, list(shape)))


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
            packed = qref.pack_subbyte(w, bits)
            weight = unpack_expr(self.builder_.emit, packed, bits, w.shape)
            return relax.Call(call.op, [call.args[0], weight], call.attrs)

    return _Pack


@tvm.transform.module_pass(opt_level=0, name=_NAME)
class PackSubByteWeights:
    """Pack integer weights that fit in 2 or 4 bits into uint8 constants.

    Parameters
    ----------
    max_bits : int
        Largest width to pack to (4 or 2).
    min_elements : int
        Leave smaller weights alone (the unpacking code outweighs the saving).
    """

    def __init__(self, max_bits: int = 4, min_elements: int = 64):
        self.max_bits = max_bits
        self.min_elements = min_elements

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return q.run_mutator(mod, _mutator(self.max_bits, self.min_elements))
