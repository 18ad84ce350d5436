"""Shared helpers of tvmq's integer-lowering passes (private).

Integer expressions are built with ``emit`` (a ``BlockBuilder.emit``) so the rewritten
program stays in A-normal form. The requantization arithmetic mirrors
:func:`tvmq.qref.requantize` op for op (float32-rounded multiplier, float32-style rounding
of the product, all in int64); see that module for the rule.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from tvmq import qref
from tvmq._tvm import Constant, const_value, relax, struct_dtype, struct_shape, tvm

Emit = Callable[[relax.Expr], relax.Expr]
INT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32")


def op_name(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def producer(mutator, expr, *names: str):
    """The call bound to ``expr`` (looking through vars) if its op is one of ``names``."""
    seen = 0
    while isinstance(expr, relax.Var) and seen < 8:
        bound = mutator.lookup_binding(expr)
        if bound is None:
            return None
        expr, seen = bound, seen + 1
    return expr if op_name(expr) in names else None


def const_np(expr) -> np.ndarray | None:
    if isinstance(expr, Constant):
        return const_value(expr).numpy()
    return None


def dtype_of(expr) -> str | None:
    try:
        return struct_dtype(expr)
    except (TypeError, AttributeError):
        return None


def shape_of(expr) -> tuple[int, ...] | None:
    try:
        return struct_shape(expr)
    except (TypeError, AttributeError, ValueError):
        return None


class QParams:
    """Scale/zero point/axis of a ``dequantize`` or ``quantize`` call with constant params."""

    def __init__(self, call):
        self.data = call.args[0]
        self.scale = const_np(call.args[1])
        self.zero = const_np(call.args[2])
        self.axis = int(call.attrs.axis)
        self.ok = self.scale is not None and self.zero is not None
        if self.ok:
            self.scale = self.scale.astype(np.float32).reshape(-1)
            self.zero = self.zero.astype(np.int64).reshape(-1)

    @property
    def per_tensor(self) -> bool:
        return self.ok and self.scale.size == 1 and self.zero.size == 1


def const_eval(mutator, expr, depth: int = 0) -> np.ndarray | None:
    """Evaluate a constant subexpression (constants, dequantize, reshape, permute) in float64."""
    if depth > 8:
        return None
    if isinstance(expr, relax.Var):
        bound = mutator.lookup_binding(expr)
        return None if bound is None else const_eval(mutator, bound, depth + 1)
    value = const_np(expr)
    if value is not None:
        return value
    name = op_name(expr)
    if name == "relax.dequantize":
        q = const_eval(mutator, expr.args[0], depth + 1)
        p = QParams(expr)
        if q is None or not p.ok:
            return None
        s = qref._bcast(p.scale.astype(np.float64), q.ndim, p.axis)
        z = qref._bcast(p.zero, q.ndim, p.axis)
        return (q.astype(np.int64) - z) * s
    inner = const_eval(mutator, expr.args[0], depth + 1) if name else None
    if inner is None:
        return None
    if name == "relax.reshape":
        return inner.reshape(shape_of(expr))
    if name == "relax.permute_dims":
        axes = expr.attrs.axes
        return np.transpose(inner, None if axes is None else [int(a) for a in axes])
    if name == "relax.astype":
        return inner
    return None


def c(value, dtype: str) -> Constant:
    return relax.const(np.asarray(value).astype(dtype), dtype)


def channel_shape(size: int, ndim: int, axis: int) -> list[int]:
    return [size if i == axis else 1 for i in range(ndim)]


def per_channel_const(values, ndim: int, axis: int, dtype: str) -> Constant:
    """A constant broadcasting ``values`` along ``axis`` (a scalar if all are equal)."""
    values = np.asarray(values).reshape(-1)
    if values.size == 1 or np.all(values == values[0]):
        return c(values[0], dtype)
    return c(values.reshape(channel_shape(values.size, ndim, axis)), dtype)


def _rounding_shift_f32(emit: Emit, prod, n_c, half_c, bits: int):
    """``qref.rounding_shift_f32``, op for op: RNE of ``prod / 2**n`` as float32 rounds it."""
    i64 = lambda v: c(v, "int64")  # noqa: E731
    op = relax.op
    k = emit(op.right_shift(prod, n_c))
    d = emit(op.subtract(emit(op.subtract(prod, emit(op.left_shift(k, n_c)))), half_c))
    sign = emit(op.right_shift(k, i64(63)))
    kk = emit(op.bitwise_xor(k, sign))
    below_half = emit(op.logical_and(emit(op.equal(kk, i64(0))),
                                     emit(op.less(emit(op.bitwise_xor(d, sign)), i64(0)))))
    # a table lookup, not a chain of comparisons: TIR's simplifier chokes on the inlined chain
    table = c(qref.ulp_shift_table(bits), "int64")
    shift = emit(op.take(table, kk, axis=0, mode="clip"))  # clip: min(kk, 2**bits), kk >= 0
    shift = emit(op.add(shift, emit(op.astype(below_half, "int64"))))
    half_ulp = emit(op.right_shift(emit(op.left_shift(i64(1), n_c)), shift))
    on_tie = emit(op.logical_and(emit(op.less_equal(d, half_ulp)),
                                 emit(op.greater_equal(d, emit(op.negative(half_ulp))))))
    odd = emit(op.equal(emit(op.bitwise_and(k, i64(1))), i64(1)))
    up = emit(op.where(on_tie, odd, emit(op.greater(d, i64(0)))))
    return emit(op.add(k, emit(op.astype(up, "int64"))))


def fixed_point_multiply(emit: Emit, x64, multiplier, ndim: int, axis: int,
                         float32_bits: int | None = None):
    """``RNE(x * m / 2**n)`` on an int64 expression (``qref.fixed_point_multiply``).

    With ``float32_bits``, rounds as float32 would (``qref.rounding_shift_f32``) for
    quotients below ``2**float32_bits``.
    """
    m, n = qref.quantize_multiplier(multiplier)
    m_c = per_channel_const(m, ndim, axis, "int64")
    n_c = per_channel_const(n, ndim, axis, "int64")
    half_c = per_channel_const(np.int64(1) << (n - 1), ndim, axis, "int64")
    prod = emit(relax.op.multiply(x64, m_c))
    if float32_bits:
        return _rounding_shift_f32(emit, prod, n_c, half_c, float32_bits)
    # RNE as floor((prod + half - 1 + lsb) / 2**n), lsb = bit n of prod (the floor's parity):
    # below half stays at the floor, above goes up, an exact half goes up only from an odd
    # floor. Five vector ops instead of nine with comparisons; bit-identical.
    half_m1_c = per_channel_const((np.int64(1) << (n - 1)) - 1, ndim, axis, "int64")
    lsb = emit(relax.op.bitwise_and(emit(relax.op.right_shift(prod, n_c)), c(1, "int64")))
    biased = emit(relax.op.add(emit(relax.op.add(prod, half_m1_c)), lsb))
    return emit(relax.op.right_shift(biased, n_c))


def requantize(emit: Emit, acc, multiplier, zero_in, zero_out: int, lo: int, hi: int,
               out_dtype: str, ndim: int, axis: int, float32_rounding: bool = False):
    """Integer ``clamp(R((acc - z_in) * M) + z_out, lo, hi)`` cast to ``out_dtype``.

    ``M`` is rounded to float32; ``R`` rounds the exact product half to even, or, with
    ``float32_rounding``, as onnxruntime's float32 product would (``qref.requantize``).
    """
    x = emit(relax.op.astype(acc, "int64"))
    zero_in = np.asarray(zero_in).reshape(-1)
    if np.any(zero_in != 0):
        x = emit(relax.op.subtract(x, per_channel_const(zero_in, ndim, axis, "int64")))
    bits = qref.float32_bits(out_dtype) if float32_rounding else None
    y = fixed_point_multiply(emit, x, qref.float32_multiplier(multiplier), ndim, axis, bits)
    if zero_out:
        y = emit(relax.op.add(y, c(zero_out, "int64")))
    y = emit(relax.op.minimum(emit(relax.op.maximum(y, c(lo, "int64"))), c(hi, "int64")))
    return emit(relax.op.astype(y, out_dtype))


def to_common_scale(emit: Emit, q, p: QParams, s_acc: float):
    """One add/concat input ``RNE((q - z) * s / s_acc)`` as int32 (``qref.to_common_scale``)."""
    x = emit(relax.op.astype(q, "int64"))
    if int(p.zero[0]):
        x = emit(relax.op.subtract(x, c(int(p.zero[0]), "int64")))
    y = fixed_point_multiply(emit, x, float(p.scale[0]) / s_acc, 1, 0)
    return emit(relax.op.astype(y, "int32"))


def to_common_scale_all(emit: Emit, params) -> tuple[list, float]:
    """Every add/concat input at the shared accumulator scale (``qref.common_scale``)."""
    s_acc = qref.common_scale([p.scale[0] for p in params])
    return [to_common_scale(emit, p.data, p, s_acc) for p in params], s_acc


def int_dequantize(acc, scale, ndim: int, axis: int):
    """``dequantize(acc_int32, scale, 0)``: the hand-off to :class:`IntegerRequantize`."""
    scale = np.asarray(scale, np.float32).reshape(-1)
    zero = np.zeros(scale.size, np.int32)
    if scale.size == 1:
        return relax.op.dequantize(acc, c(scale[0], "float32"), c(0, "int32"), axis=-1 % ndim)
    return relax.op.dequantize(acc, c(scale, "float32"), c(zero, "int32"), axis=axis)


def skip(pass_name: str, call, why: str) -> None:
    """Leave a layer in float, with a warning saying why."""
    warnings.warn(f"{pass_name}: {op_name(call)} stays float: {why}", stacklevel=3)


def run_mutator(mod: tvm.IRModule, mutator_cls) -> tvm.IRModule:
    """Apply a ``PyExprMutator`` class to every Relax function and drop dead bindings."""
    mutator = mutator_cls(mod)
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            new = mutator.visit_expr(func)
            mutator.builder_.update_func(gvar, relax.analysis.remove_all_unused(new))
    return mutator.builder_.get()
