"""LowerIntegerPool: average and global-average pooling as integer window sums.

Rewrites ``mean(dequantize(x), axis=[2, 3])`` (ONNX GlobalAveragePool),
``adaptive_avg_pool2d(dequantize(x), output_size=1)`` and ``avg_pool2d(dequantize(x))``
(NCHW, ``count_include_pad`` or no padding, no ceil mode) into
``dequantize(S, s_x / k)`` where ``S`` is the int32 sum of ``x - z_x`` over each window of
``k`` elements: a ``sum`` for the global pools, a depthwise conv with a ones kernel (padding
with ``z_x``) for windows. :class:`IntegerRequantize` then divides by ``k`` as part of the
fixed-point requantization. Reference: :func:`tvmq.qref.avg_pool2d_int`,
:func:`tvmq.qref.global_avg_pool_int`.

Preconditions: constant per-tensor parameters. Position: quantize phase, before
:class:`IntegerRequantize`. Max pooling is :class:`SinkDequantize`'s.
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import relax, tvm
from tvmq.passes import _qcommon as q

_NAME = "LowerIntegerPool"
_OPS = ("relax.mean", "relax.nn.adaptive_avg_pool2d", "relax.nn.avg_pool2d")


def _pattern():
    return {"anchors": _OPS, "operand": "relax.dequantize"}


def _source(mut, call):
    d = q.producer(mut, call.args[0], "relax.dequantize")
    if d is None:
        return None
    p = q.QParams(d)
    if not p.per_tensor or q.dtype_of(p.data) not in ("int8", "uint8"):
        return None
    return p


def _scale(p, k: int) -> float:
    return float(np.float32(np.float32(p.scale[0]) / np.float32(k)))


@relax.expr_functor.mutator
class _Lower(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = q.op_name(call)
        if name not in _OPS:
            return call
        p = _source(self, call)
        shape = q.shape_of(call.args[0])
        if p is None or shape is None or len(shape) != 4:
            return call
        if name == "relax.nn.avg_pool2d":
            new = self._window(call, p)
            return call if new is None else new
        if name == "relax.mean":
            axes = sorted(int(a) % 4 for a in call.attrs.axis)
            if axes != [2, 3]:
                return call
        elif [int(v) for v in call.attrs.output_size or []] not in ([1, 1], [1]):
            return call
        emit = self.builder_.emit
        x = emit(relax.op.astype(p.data, "int32"))
        if p.zero[0]:
            x = emit(relax.op.subtract(x, q.c(p.zero[0], "int32")))
        keep = True if name != "relax.mean" else bool(call.attrs.keepdims)
        acc = emit(relax.op.sum(x, axis=[2, 3], keepdims=keep))
        return q.int_dequantize(acc, _scale(p, shape[2] * shape[3]), len(q.shape_of(call)), 1)

    def _window(self, call, p):
        attrs = call.attrs
        padding = [int(v) for v in attrs.padding]
        if attrs.layout != "NCHW" or attrs.ceil_mode or (any(padding)
                                                         and not attrs.count_include_pad):
            q.skip(_NAME, call, "avg_pool2d with ceil_mode or count_include_pad=0 and padding")
            return None
        kh, kw = (int(v) for v in attrs.pool_size)
        channels = q.shape_of(call)[1]
        emit = self.builder_.emit
        data, zx = p.data, int(p.zero[0])
        if zx and any(padding):
            top, left, bottom, right = padding
            data = emit(relax.op.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right],
                                        pad_value=float(zx)))
            padding = [0, 0, 0, 0]
        ones = q.c(np.ones((channels, 1, kh, kw)), "int8")
        acc = emit(relax.op.nn.conv2d(data, ones, strides=attrs.strides, padding=padding,
                                      dilation=attrs.dilation, groups=channels,
                                      out_dtype="int32"))
        if zx:
            acc = emit(relax.op.subtract(acc, q.c(zx * kh * kw, "int32")))
        return q.int_dequantize(acc, _scale(p, kh * kw), 4, 1)


@tvm.transform.module_pass(opt_level=0, name=_NAME)
class LowerIntegerPool:
    """Lower average pooling of dequantized tensors to integer window sums."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return q.run_mutator(mod, _Lower)
