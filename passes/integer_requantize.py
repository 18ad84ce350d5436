"""IntegerRequantize: ``quantize(act(dequantize(a)))`` as fixed-point integer arithmetic.

Rewrites ``quantize([relu|clip](dequantize(a, s_a, z_a)), s_y, z_y)`` with integer ``a``
(an int32 accumulator from :class:`LowerIntegerConv`/``LowerIntegerAdd``/... or an int8/uint8
tensor) into ``clamp(RNE((a - z_a) * m / 2**n) + z_y, lo, hi)`` computed in int64, where
``m / 2**n`` is ``float32(s_a / s_y)`` held exactly in a 31-bit ``m`` and ``[lo, hi]`` the
output range intersected with the quantized activation bounds (ReLU: ``z_y``; Clip/ReLU6: the
quantized clip limits). The product is rounded half to even (or, with ``float32_rounding``,
as onnxruntime's float32 requantization rounds it: to 24 significant bits, then to an
integer, half to even both times, emulated in int64); see :mod:`tvmq.qref`, the reference
this lowering matches bit for bit. No float op remains. Where interval arithmetic over the
accumulator's producers (:func:`tvmq.passes._qcommon.int_range`: conv weights, bias, zero
points) proves that no accumulator value lands on an exact half
(:func:`tvmq.qref.tie_free_bound`), the rounding is emitted as round-half-up, two ops
instead of five, with identical results (74 of MobileNetV2's 84 rescales).
A ``quantize(dequantize(x))`` with identical parameters becomes ``x`` (or a clamp).

A float bias residual that :class:`LowerIntegerConv` left as ``add(dequantize(acc), r)``
(``qref.split_bias``) joins the rounding constant (``qref.requantize``'s ``bias_residual``).

Preconditions: constant scales/zero points; ``s_a`` and ``s_y`` (with ``z_y``) per-tensor or
per-channel along one axis (NNCF quantizes a depthwise conv's input per channel). Position:
quantize phase, after the passes that produce ``dequantize(acc)`` (:class:`LowerIntegerConv`,
:class:`LowerIntegerAdd`, :class:`LowerIntegerConcat`, :class:`LowerIntegerPool`) and
:class:`SinkDequantize`.
"""
from __future__ import annotations

import numpy as np

from tvmq import qref
from tvmq._tvm import relax, tvm
from tvmq.passes import _qcommon as q

_NAME = "IntegerRequantize"


def _pattern():
    """``quantize`` anchored; optional ReLU/Clip between it and an integer ``dequantize``."""
    return {"anchor": "relax.quantize", "activations": ("relax.nn.relu", "relax.clip"),
            "source": "relax.dequantize"}


def _prim(value):
    v = getattr(value, "value", value)
    return float(getattr(v, "value", v))


def _activation(mut, expr):
    """(kind, clip limits, inner expr) of an optional fused activation."""
    act = q.producer(mut, expr, "relax.nn.relu", "relax.clip")
    if act is None:
        return None, None, expr
    if q.op_name(act) == "relax.nn.relu":
        return "relu", None, act.args[0]
    return "clip", (_prim(act.args[1]), _prim(act.args[2])), act.args[0]


def _channel_axis(src, out, ndim: int, residual=None):
    """The axis per-channel parameters run along (``src``'s, ``out``'s, a bias residual's,
    all the same), or None when they disagree."""
    axes = {p.axis % ndim for p in (src, out) if not p.per_tensor}
    if residual is not None and residual.size > 1:
        axes.add(next(i for i, d in enumerate(residual.shape) if d > 1))
    if len(axes) > 1:
        return None
    return axes.pop() if axes else src.axis % ndim


def _bias_residual(mut, expr):
    """``(inner, residual)`` of ``add(inner, r)`` with ``inner`` a ``dequantize`` and ``r`` a
    float constant broadcast along at most one axis (a bias residual that LowerIntegerConv
    left off the accumulator grid, ``qref.split_bias``), else ``(expr, None)``; ``residual``
    is reshaped to the output's rank."""
    add = q.producer(mut, expr, "relax.add")
    if add is None:
        return expr, None
    ndim = len(q.shape_of(expr) or ())
    for a, b in ((0, 1), (1, 0)):
        r = q.const_np(add.args[b])
        if r is None or r.dtype.kind != "f" or r.ndim > ndim or \
                q.producer(mut, add.args[a], "relax.dequantize") is None:
            continue
        r = r.reshape((1,) * (ndim - r.ndim) + r.shape)
        if sum(d > 1 for d in r.shape) <= 1:
            return add.args[a], r
    return expr, None


# The rounding mode of the running pass (PyExprMutator subclasses cannot take extra state
# through the @mutator constructor).
_FLOAT32_ROUNDING = [False]


@relax.expr_functor.mutator
class _Requantize(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if q.op_name(call) != "relax.quantize":
            return call
        new = self._rewrite(call)
        return call if new is None else new

    def _rewrite(self, call):
        out = q.QParams(call)
        kind, limits, inner = _activation(self, call.args[0])
        inner, residual = _bias_residual(self, inner)
        d = q.producer(self, inner, "relax.dequantize")
        if d is None or not out.ok:
            return None
        src = q.QParams(d)
        if not src.ok or q.dtype_of(src.data) not in q.INT_DTYPES:
            return None
        ndim = len(q.shape_of(call))
        axis = _channel_axis(src, out, ndim, residual)
        if axis is None:
            return None
        frac = None
        if residual is not None:  # in accumulator units, per index of ``axis``
            frac = residual.reshape(-1).astype(np.float64) / src.scale.astype(np.float64)
            if np.any(np.abs(frac) > 0.5 + 1e-6):  # not a bias residual: a float add stays
                return None
        out_dtype = str(call.attrs.out_dtype)
        s_y = out.scale.astype(np.float32)
        z_y = out.zero.astype(np.int64)
        bounds = [qref.activation_bounds(kind, sc, int(z), out_dtype, limits)
                  for sc, z in np.broadcast(s_y, z_y)]
        lo, hi = (np.array([b[i] for b in bounds], np.int64) for i in (0, 1))
        if out.per_tensor:
            lo, hi, z_y = int(lo[0]), int(hi[0]), int(z_y[0])
        emit = self.builder_.emit
        if (src.per_tensor and out.per_tensor and residual is None
                and src.scale[0] == out.scale[0]
                and src.zero[0] == z_y and q.dtype_of(src.data) == out_dtype):
            return self._clamp_only(src.data, lo, hi, out_dtype)
        # float32 division: the multiplier onnxruntime uses (qref module docstring)
        multiplier = (src.scale.astype(np.float32) / s_y).astype(np.float32)
        if np.any(multiplier >= 2.0 ** 30):
            q.skip(_NAME, call, "requantize multiplier >= 2**30")
            return None
        acc, offset = q.split_offset(self, src.data, ndim, axis)
        if offset is None and src.per_tensor and out.per_tensor and residual is None:
            # one multiplier: any axis can carry a bias
            for other in (1, ndim - 1):
                if 0 <= other < ndim and other != axis:
                    acc, offset = q.split_offset(self, src.data, ndim, other)
                    if offset is not None:
                        axis = other
                        break
        return q.requantize(emit, acc, multiplier, src.zero, z_y, lo, hi, out_dtype, ndim,
                            axis, _FLOAT32_ROUNDING[0], acc_range=q.int_range(self, src.data),
                            acc_offset=offset, acc_frac=frac)

    def _clamp_only(self, data, lo, hi, dtype):
        qmin, qmax = qref.dtype_range(dtype)
        if (lo, hi) == (qmin, qmax):
            return data
        low = self.builder_.emit(relax.op.maximum(data, q.c(lo, dtype)))
        return relax.op.minimum(low, q.c(hi, dtype))


@tvm.transform.module_pass(opt_level=0, name=_NAME)
class IntegerRequantize:
    """Replace float requantization (dequantize -> act -> quantize) with fixed-point integers."""

    def __init__(self, float32_rounding: bool = False):
        """``float32_rounding``: reproduce onnxruntime's float32 product rounding (exact
        agreement on conv/dense layers, ~2x more ops, not fused into the conv epilogue);
        default: exact round-half-to-even of the rational, purely elementwise."""
        self.float32_rounding = float32_rounding

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        _FLOAT32_ROUNDING[0] = self.float32_rounding
        try:
            return q.run_mutator(mod, _Requantize)
        finally:
            _FLOAT32_ROUNDING[0] = False
