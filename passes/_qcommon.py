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


# ---- integer range analysis -----------------------------------------------------------
_RANGE_DEPTH = 16
_RANGE_CONST_MAX = 1 << 16  # larger constants enter as their overall min/max


def _dtype_interval(expr):
    dtype = dtype_of(expr)
    if dtype not in qref.DTYPE_RANGE and dtype != "int64":
        return None
    lo, hi = qref.dtype_range(dtype) if dtype != "int64" else (-2 ** 63, 2 ** 63 - 1)
    return np.array(lo, object), np.array(hi, object)


def _const_interval(value: np.ndarray):
    if value.dtype.kind not in "iub":
        return None
    if value.size > _RANGE_CONST_MAX:
        return np.array(int(value.min()), object), np.array(int(value.max()), object)
    v = value.astype(object)
    return v, v


def _scalar(iv):
    lo, hi = iv
    return np.array(np.min(lo), object), np.array(np.max(hi), object)


def _conv_interval(x_iv, w: np.ndarray, out_axis: int):
    """Per-output-channel interval of ``sum(x * w)`` with ``x`` anywhere in ``x_iv`` or 0
    (a conv's own zero padding)."""
    xlo, xhi = (int(v) for v in _scalar(x_iv))
    xlo, xhi = min(xlo, 0), max(xhi, 0)
    w = w.astype(np.int64)
    axes = tuple(i for i in range(w.ndim) if i != out_axis)
    wp, wn = np.maximum(w, 0).sum(axis=axes), np.minimum(w, 0).sum(axis=axes)
    wp, wn = wp.astype(object), wn.astype(object)
    return wp * xlo + wn * xhi, wp * xhi + wn * xlo


def int_range(mutator, expr, depth: int = 0):
    """``(lo, hi)``: bounds on every element of the integer expression ``expr``.

    Interval arithmetic over the integer graph the lowering passes build (convs/matmuls with
    constant weights, adds/subtracts/multiplies/shifts with constants, min/max clamps, pads,
    casts); anything else is bounded by its dtype. ``lo``/``hi`` are object arrays of Python
    ints that broadcast against ``expr`` (per-channel where a constant or weight makes them
    so, scalars otherwise). Used to prove requantization ties impossible
    (:func:`tvmq.qref.tie_free_bound`); the bounds are always sound, just not always tight.
    """
    if isinstance(expr, relax.Var):
        bound = mutator.lookup_binding(expr)
        if bound is None or depth >= _RANGE_DEPTH:
            return _dtype_interval(expr)
        return int_range(mutator, bound, depth + 1)
    value = const_np(expr)
    if value is not None:
        return _const_interval(value)
    fallback = _dtype_interval(expr)
    if fallback is None or dtype_of(expr) in ("int8", "uint8") or depth >= _RANGE_DEPTH:
        return fallback
    name = op_name(expr)
    try:
        iv = _op_interval(mutator, expr, name, depth)
    except (TypeError, ValueError, AttributeError):  # an op form the analysis does not know
        iv = None
    if iv is None:
        return fallback
    lo, hi = iv  # a result outside the dtype would wrap: keep the dtype's range then
    if np.min(lo) < fallback[0] or np.max(hi) > fallback[1]:
        return fallback
    return iv


def _op_interval(mutator, expr, name, depth):
    sub = lambda e: int_range(mutator, e, depth + 1)  # noqa: E731
    if name in ("relax.add", "relax.subtract", "relax.multiply", "relax.maximum",
                "relax.minimum"):
        a, b = sub(expr.args[0]), sub(expr.args[1])
        if a is None or b is None:
            return None
        if name == "relax.add":
            return a[0] + b[0], a[1] + b[1]
        if name == "relax.subtract":
            return a[0] - b[1], a[1] - b[0]
        if name == "relax.maximum":
            return np.maximum(a[0], b[0]), np.maximum(a[1], b[1])
        if name == "relax.minimum":
            return np.minimum(a[0], b[0]), np.minimum(a[1], b[1])
        corners = [a[i] * b[j] for i in (0, 1) for j in (0, 1)]
        return np.minimum(np.minimum(corners[0], corners[1]), np.minimum(corners[2], corners[3])), \
            np.maximum(np.maximum(corners[0], corners[1]), np.maximum(corners[2], corners[3]))
    if name == "relax.right_shift":
        a, s = sub(expr.args[0]), const_np(expr.args[1])
        if a is None or s is None or np.any(s < 0) or np.any(s > 63):
            return None
        s = s.astype(object)
        return a[0] >> s, a[1] >> s  # floor division by 2**s: monotone
    if name == "relax.bitwise_and":
        mask = const_np(expr.args[1])
        if mask is None or np.any(mask < 0):
            return None
        return np.zeros_like(mask, object), mask.astype(object)
    if name == "relax.astype":
        return sub(expr.args[0])
    if name == "relax.nn.pad":
        a = sub(expr.args[0])
        if a is None or str(expr.attrs.pad_mode) != "constant":
            return None
        v = float(expr.attrs.pad_value)
        if v != int(v):
            return None
        lo, hi = _scalar(a)
        return np.minimum(lo, int(v)), np.maximum(hi, int(v))
    if name in ("relax.nn.conv2d", "relax.matmul"):
        w = const_np(expr.args[1])
        x = sub(expr.args[0])
        if w is None or x is None:
            return None
        if name == "relax.matmul":
            if w.ndim != 2:
                return None
            return _conv_interval(x, w, 1)
        a = expr.attrs
        if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != \
                ("NCHW", "OIHW", "NCHW"):
            return None
        lo, hi = _conv_interval(x, w, 0)
        return lo.reshape(1, -1, 1, 1), hi.reshape(1, -1, 1, 1)
    if name in ("relax.reshape", "relax.permute_dims", "relax.nn.max_pool2d",
                "relax.concat", "relax.squeeze", "relax.expand_dims"):
        if name == "relax.concat":
            parts = [sub(e) for e in expr.args[0].fields] \
                if isinstance(expr.args[0], relax.Tuple) else [None]
        else:
            parts = [sub(expr.args[0])]
        if any(p is None for p in parts):
            return None
        parts = [_scalar(p) for p in parts]
        lo = min(int(p[0]) for p in parts)
        hi = max(int(p[1]) for p in parts)
        if name == "relax.nn.max_pool2d" and any(int(v) for v in expr.attrs.padding):
            return None  # pads with the dtype's minimum
        return np.array(lo, object), np.array(hi, object)
    return None


def channel_bound(iv, ndim: int, axis: int) -> np.ndarray | None:
    """``max |value|`` per index of ``axis`` (length 1 or the axis size) of an interval."""
    if iv is None:
        return None
    other = tuple(i for i in range(ndim) if i != axis)
    out = []
    for a in iv:
        a = np.asarray(a, object)
        if a.ndim > ndim or a.size == 0:
            return None
        a = a.reshape((1,) * (ndim - a.ndim) + a.shape)
        out.append(np.max(np.abs(a), axis=other).reshape(-1))
    try:
        return np.maximum(out[0], out[1])
    except ValueError:
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
                         float32_bits: int | None = None, bound=None, offset=None,
                         addend=None):
    """``RNE((x + offset) * m / 2**n)`` on an int64 expression (``qref.fixed_point_multiply``).

    With ``float32_bits``, rounds as float32 would (``qref.rounding_shift_f32``) for
    quotients below ``2**float32_bits``. ``bound``: ``max |x + offset|`` (scalar or per index
    of ``axis``, from :func:`int_range`); where it proves that no value lands on an exact half
    (:func:`tvmq.qref.tie_free_bound`), RNE is round-half-up, ``(prod + 2**(n-1)) >> n``:
    two ops instead of five, and the same integers. ``offset``: integers per index of
    ``axis`` (|offset| < 2**32; e.g. bias and zero-point corrections peeled off an
    accumulator, :func:`split_offset`), folded into the product's constant addend:
    ``x * m + (offset * m + 2**(n-1))`` (exact in int64: every term is below 2**62).
    ``addend``: integers per index of ``axis`` added to the product itself (a bias residual,
    ``qref.bias_addend``); the product then rounds half up (``qref.requantize``).
    """
    m, n = qref.quantize_multiplier(multiplier)
    m_c = per_channel_const(m, ndim, axis, "int64")
    n_c = per_channel_const(n, ndim, axis, "int64")
    half = np.int64(1) << (n - 1)
    half_c = per_channel_const(half, ndim, axis, "int64")
    om = None
    if offset is not None and np.any(np.asarray(offset) != 0):
        offset = np.asarray(offset, np.int64).reshape(-1)
        if np.abs(offset).max() >= 2 ** 32:
            raise ValueError(f"accumulator offset {np.abs(offset).max()} is out of range")
        om = offset * m
    if addend is not None:
        om = (0 if om is None else om) + np.asarray(addend, np.int64)
    prod = emit(relax.op.multiply(x64, m_c))
    if not float32_bits and (addend is not None or bound is not None and _tie_free(m, n, bound)):
        addend = half_c if om is None else per_channel_const(om + half, ndim, axis, "int64")
        return emit(relax.op.right_shift(emit(relax.op.add(prod, addend)), n_c))
    if om is not None:
        prod = emit(relax.op.add(prod, per_channel_const(om, ndim, axis, "int64")))
    if float32_bits:
        return _rounding_shift_f32(emit, prod, n_c, half_c, float32_bits)
    # RNE as floor((prod + half - 1 + lsb) / 2**n), lsb = bit n of prod (the floor's parity):
    # below half stays at the floor, above goes up, an exact half goes up only from an odd
    # floor. Five vector ops instead of nine with comparisons; bit-identical.
    half_m1_c = per_channel_const((np.int64(1) << (n - 1)) - 1, ndim, axis, "int64")
    lsb = emit(relax.op.bitwise_and(emit(relax.op.right_shift(prod, n_c)), c(1, "int64")))
    biased = emit(relax.op.add(emit(relax.op.add(prod, half_m1_c)), lsb))
    return emit(relax.op.right_shift(biased, n_c))


def split_offset(mutator, expr, ndim: int, axis: int):
    """``(inner, offset)`` with ``expr == inner + offset``: constant per-channel (along
    ``axis``) integer adds/subtracts peeled off an integer expression (a conv's bias and
    zero-point correction), or ``(expr, None)``. ``offset`` is exact (no int32 wrap)."""
    offset, peeled = np.zeros(1, np.int64), False
    for _ in range(4):
        call = producer(mutator, expr, "relax.add", "relax.subtract")
        if call is None:
            break
        sign = 1 if op_name(call) == "relax.add" else -1
        inner, k = call.args[0], const_np(call.args[1])
        if k is None and sign == 1:
            inner, k = call.args[1], const_np(call.args[0])
        if k is None or k.dtype.kind not in "iu" or k.ndim > ndim or \
                dtype_of(inner) != dtype_of(call):
            break
        k = k.reshape((1,) * (ndim - k.ndim) + k.shape)
        if any(d != 1 for i, d in enumerate(k.shape) if i != axis):
            break
        vec = k.astype(np.int64).reshape(-1)
        if offset.size > 1 and vec.size > 1 and vec.size != offset.size:
            break
        offset, expr, peeled = offset + sign * vec, inner, True
    return (expr, offset) if peeled else (expr, None)


def _tie_free(m, n, bound) -> bool:
    """Whether ``|x| <= bound`` rules out every exact half of ``x * m / 2**n``."""
    free = qref.tie_free_bound(m, n).astype(object)
    bound = np.asarray(bound, object).reshape(-1)
    if free.size > 1 and bound.size not in (1, free.size):
        return False
    return bool(np.all((free < 0) | (bound <= free)))


#: emit :func:`tvmq.qref.int32_requantize_plan`'s all-int32 form where it applies
INT32_REQUANTIZE = True


def _emit_int32_plan(emit: Emit, acc, plan, out_dtype: str, ndim: int, axis: int):
    """:func:`tvmq.qref.apply_int32_plan`, op for op, on an int32 accumulator."""
    op = relax.op

    def k(name):
        return per_channel_const(plan[name], ndim, axis, "int32")

    a = emit(op.minimum(emit(op.maximum(acc, k("a_lo"))), k("a_hi")))
    q0 = emit(op.right_shift(emit(op.add(emit(op.multiply(a, k("ml"))), k("cl"))),
                             c(plan["L"], "int32")))
    y = emit(op.add(emit(op.add(emit(op.multiply(a, k("mh"))), q0)), k("ch")))
    if np.any(plan["r"] != 0):
        y = emit(op.right_shift(y, k("r")))
    return emit(op.astype(y, out_dtype))


def requantize(emit: Emit, acc, multiplier, zero_in, zero_out, lo, hi,
               out_dtype: str, ndim: int, axis: int, float32_rounding: bool = False,
               acc_range=None, acc_offset=None, acc_frac=None):
    """Integer ``clamp(R((acc + acc_offset - z_in) * M) + z_out, lo, hi)`` cast to ``out_dtype``.

    ``M`` is rounded to float32; ``R`` rounds the exact product half to even, or, with
    ``float32_rounding``, as onnxruntime's float32 product would (``qref.requantize``).
    ``acc_range``: :func:`int_range` of ``acc + acc_offset``, which may prove ties
    impossible (cheaper rounding, same result; :func:`fixed_point_multiply`).
    ``acc_offset``: per-channel integers (along ``axis``) added to ``acc``; they and
    ``z_in`` fold into the rounding constant instead of costing ops per element.
    ``zero_out``, ``lo``, ``hi``: scalars, or per index of ``axis`` (a per-channel output).
    ``acc_frac``: a bias residual in accumulator units per index of ``axis``
    (``qref.requantize``'s ``bias_residual``), added at the product's precision.

    An int32 ``acc`` with a narrow enough unsaturated domain (and no tie on it) gets the
    all-int32 form of :func:`tvmq.qref.int32_requantize_plan`: clamp first, two int32
    products; 10 vector ops per 16 outputs instead of ~16 in int64 (MobileNetV2 1.09x).
    """
    zero_in = np.asarray(zero_in, np.int64).reshape(-1)
    offset = np.zeros(1, np.int64) if acc_offset is None else \
        np.asarray(acc_offset, np.int64).reshape(-1)
    offset = offset - zero_in
    m, n = qref.quantize_multiplier(qref.float32_multiplier(multiplier))
    fine = None
    if acc_frac is not None and np.any(np.asarray(acc_frac) != 0):
        fine = qref.bias_addend(np.asarray(acc_frac).reshape(-1), m)
    if not float32_rounding and dtype_of(acc) == "int32" and INT32_REQUANTIZE:
        plan = qref.int32_requantize_plan(m, n, offset, zero_out, lo, hi, fine)
        if plan is not None:
            return _emit_int32_plan(emit, acc, plan, out_dtype, ndim, axis)
    x = emit(relax.op.astype(acc, "int64"))
    if acc_range is not None and np.any(zero_in != 0):
        zr = _const_interval(zero_in.reshape(channel_shape(zero_in.size, ndim, axis)))
        acc_range = (acc_range[0] - zr[1], acc_range[1] - zr[0])
    bits = qref.float32_bits(out_dtype) if float32_rounding else None
    y = fixed_point_multiply(emit, x, qref.float32_multiplier(multiplier), ndim, axis, bits,
                             channel_bound(acc_range, ndim, axis), offset, fine)
    if np.any(np.asarray(zero_out) != 0):
        y = emit(relax.op.add(y, per_channel_const(zero_out, ndim, axis, "int64")))
    y = emit(relax.op.maximum(y, per_channel_const(lo, ndim, axis, "int64")))
    y = emit(relax.op.minimum(y, per_channel_const(hi, ndim, axis, "int64")))
    return emit(relax.op.astype(y, out_dtype))


def to_common_scale(emit: Emit, q, p: QParams, s_acc: float):
    """One add/concat input ``RNE((q - z) * s / s_acc)`` as int32 (``qref.to_common_scale``)."""
    x = emit(relax.op.astype(q, "int64"))
    if int(p.zero[0]):
        x = emit(relax.op.subtract(x, c(int(p.zero[0]), "int64")))
    bound = None
    if dtype_of(q) in qref.DTYPE_RANGE:
        qlo, qhi = qref.dtype_range(dtype_of(q))
        bound = max(abs(qlo - int(p.zero[0])), abs(qhi - int(p.zero[0])))
    y = fixed_point_multiply(emit, x, float(p.scale[0]) / s_acc, 1, 0, bound=bound)
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


#: why layers stayed float, by ``(op name, output shape)``: what ``tvmq info`` reports
#: (:func:`tvmq.report.layer_report`); the pipeline clears it before each compile
SKIPPED: dict[tuple, str] = {}


def skip(pass_name: str, call, why: str) -> None:
    """Leave a layer in float, with a warning saying why (also kept in :data:`SKIPPED`)."""
    SKIPPED.setdefault((op_name(call), tuple(shape_of(call) or ())), f"{pass_name}: {why}")
    warnings.warn(f"{pass_name}: {op_name(call)} stays float: {why}", stacklevel=3)


def run_mutator(mod: tvm.IRModule, mutator_cls) -> tvm.IRModule:
    """Apply a ``PyExprMutator`` class to every Relax function and drop dead bindings."""
    mutator = mutator_cls(mod)
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            new = mutator.visit_expr(func)
            mutator.builder_.update_func(gvar, relax.analysis.remove_all_unused(new))
    return mutator.builder_.get()
