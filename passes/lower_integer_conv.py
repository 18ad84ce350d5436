"""LowerIntegerConv: integer conv2d / matmul with int32 accumulation.

Rewrites ``conv2d(dequantize(x_q), dequantize(W_q))`` (any groups, so depthwise too) and
``matmul(dequantize(x_q), [permute_dims](dequantize(W_q)))`` into an integer op with
``out_dtype="int32"`` followed by ``dequantize(acc, s_x*s_w, 0)``, and folds a following
constant bias add ``acc_f + b`` into ``acc + round(b / (s_x*s_w))`` (exact when the bias is an
int32 tensor quantized at ``s_x*s_w``, as onnxruntime's quantizer writes it). A float bias
off that grid (NNCF, Brevitas, BatchNorm folded into the conv) keeps the rest as a float
``add`` after the ``dequantize`` (:func:`tvmq.qref.split_bias`), which
:class:`IntegerRequantize` folds into its rounding constant.

Zero points are exact: a nonzero activation zero point ``z_x`` pads with ``z_x`` and subtracts
``z_x * sum(W)`` per output channel (activations stay uint8/int8); a nonzero weight zero point
switches to int16 operands ``x - z_x`` and ``W - z_w``.

Preconditions: weights are ``dequantize`` of constants (run :class:`FoldConstantKeepQuantized`,
not ``FoldConstant``, before); activations per-tensor (a depthwise conv's also per
channel); weights per-tensor or per-output-channel;
NCHW/OIHW conv. Anything else stays float (with a warning). Position: first pass of the
quantize phase; :class:`IntegerRequantize` consumes the ``dequantize(acc)`` it leaves.
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import relax, tvm
from tvmq.ir import encode_weight, find_encoded
from tvmq.passes import _qcommon as q

_NAME = "LowerIntegerConv"


def _pattern():
    """The ops this pass anchors on, and what their operands must be produced by."""
    return {"anchors": ("relax.nn.conv2d", "relax.matmul"),
            "operands": ("relax.dequantize", "relax.dequantize")}


def _weight(mut, expr, out_axis_of_w: int):
    """Integer weight (permutes applied), per-output-channel scale and zero point, or why not."""
    perm = None
    call = q.producer(mut, expr, "relax.dequantize", "relax.permute_dims")
    if q.op_name(call) == "relax.permute_dims":
        perm = None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
        call = q.producer(mut, call.args[0], "relax.dequantize")
    if call is None:
        return None, "weight is not a dequantized constant"
    p = q.QParams(call)
    w, codec = q.const_np(p.data), None
    if w is None:  # a codebook-lookup weight (LowerCodebookWeights): decode its values
        src, axes = p.data, None
        moved = q.producer(mut, src, "relax.permute_dims")  # SinkDequantize moved it above
        if moved is not None and moved.attrs.axes is not None:
            src, axes = moved.args[0], [int(a) for a in moved.attrs.axes]
        enc = find_encoded(mut.builder_.get(), src, mut.lookup_binding)
        if enc is not None and enc.codec.name == "codebook":
            w, codec = enc.decode(), enc.codec
            w = w if axes is None else np.transpose(w, axes)
    if w is None or not p.ok or q.dtype_of(p.data) not in q.INT_DTYPES:
        return None, "weight is not a constant integer tensor"
    axis = p.axis % w.ndim
    w = w.astype(np.int64)
    if perm is not None:
        w = np.transpose(w, perm)
        axis = perm.index(axis)
    n_out = w.shape[out_axis_of_w]
    if p.scale.size not in (1, n_out) or (p.scale.size > 1 and axis != out_axis_of_w):
        return None, "weight scale is neither per-tensor nor per-output-channel"
    scale = np.broadcast_to(p.scale, (n_out,)).astype(np.float32)
    zero = np.broadcast_to(p.zero, (n_out,)).astype(np.int64)
    return (w, scale, zero, codec), None


def _activation(mut, expr, per_channel: bool = False):
    """QParams of a dequantized int8/uint8 input, or why not. ``per_channel``: a depthwise
    conv also takes one scale (and zero point) per input channel, which is its output
    channel (NNCF quantizes a depthwise conv's input that way)."""
    call = q.producer(mut, expr, "relax.dequantize")
    if call is None:
        return None, "input is not dequantized"
    p = q.QParams(call)
    ndim = len(q.shape_of(expr) or ())
    channel = per_channel and p.ok and p.axis % max(ndim, 1) == 1
    if not (p.per_tensor or channel) or q.dtype_of(p.data) not in ("int8", "uint8"):
        return None, "input is not a per-tensor int8/uint8 dequantize"
    return p, None


def _w_const(w):
    lo, hi = int(w.min(initial=0)), int(w.max(initial=0))
    return q.c(w, "int8" if -128 <= lo and hi <= 127 else "int16")


@relax.expr_functor.mutator
class _Lower(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = q.op_name(call)
        if name == "relax.nn.conv2d":
            return self._conv(call)
        if name == "relax.matmul":
            return self._matmul(call)
        if name == "relax.add":
            return self._bias(call)
        return call

    def _operands(self, call, out_axis_of_w, per_channel_input: bool = False):
        if q.dtype_of(call) != "float32":
            return None
        xp, why = _activation(self, call.args[0], per_channel_input)
        wt, why_w = _weight(self, call.args[1], out_axis_of_w) if xp else (None, None)
        if xp is None or wt is None:
            w_dq = q.producer(self, call.args[1], "relax.dequantize")
            if xp is not None or w_dq is not None:  # Relax exprs have no truth value
                q.skip(_NAME, call, why or why_w)
            return None
        return xp, wt

    def _int_input(self, xp, wt):
        """(data, weight const, activation zero point to correct; 0 on the int16 path).

        A codebook weight stays a codebook (re-encoded in the lowered op's layout, the
        same ``K``) on the int8 path; the int16 path stores it dense."""
        w, _, zw, codec = wt
        zx = int(xp.zero[0]) if xp.per_tensor else 0
        per_channel_zx = not xp.per_tensor and np.any(xp.zero != 0)
        if np.any(zw != 0) or per_channel_zx:
            # int16 operands x - z_x, W - z_w: exact, padding with real zero (per-channel
            # input zero points cannot be a conv's single pad value)
            x16 = self.builder_.emit(relax.op.astype(xp.data, "int16"))
            if zx or per_channel_zx:
                z = q.c(xp.zero.reshape(1, -1, 1, 1) if per_channel_zx else zx, "int16")
                x16 = self.builder_.emit(relax.op.subtract(x16, z))
            zb = zw.reshape([-1 if i == 0 else 1 for i in range(w.ndim)]) if w.ndim == 4 \
                else zw.reshape(1, -1)
            return x16, q.c(w - zb, "int16"), 0
        if codec is not None and -128 <= w.min(initial=0) and w.max(initial=0) <= 127:
            return xp.data, self.builder_.emit(encode_weight(self.builder_, codec,
                                                             w.astype(np.int8))), zx
        return xp.data, _w_const(w), zx

    def _conv(self, call):
        attrs = call.attrs
        if (attrs.data_layout, attrs.kernel_layout) != ("NCHW", "OIHW"):
            q.skip(_NAME, call, "only NCHW/OIHW conv2d is lowered")
            return call
        depthwise = int(attrs.groups) > 1 and int(attrs.groups) == int(q.shape_of(call)[1]) \
            == int((q.shape_of(call.args[0]) or (0, 0))[1])
        ops = self._operands(call, 0, per_channel_input=depthwise)
        if ops is None:
            return call
        xp, wt = ops
        w, sw = wt[0], wt[1]
        data, w_c, zx = self._int_input(xp, wt)
        padding = [int(v) for v in attrs.padding]
        if zx and any(padding):
            top, left, bottom, right = padding
            data = self.builder_.emit(relax.op.nn.pad(
                data, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zx)))
            padding = [0, 0, 0, 0]
        acc = self.builder_.emit(relax.op.nn.conv2d(
            data, w_c, strides=attrs.strides, padding=padding, dilation=attrs.dilation,
            groups=attrs.groups, data_layout="NCHW", kernel_layout="OIHW", out_dtype="int32"))
        if zx:
            corr = zx * w.sum(axis=(1, 2, 3))
            acc = self.builder_.emit(relax.op.subtract(acc, q.c(corr.reshape(1, -1, 1, 1),
                                                                "int32")))
        s_acc = (xp.scale.astype(np.float32) * sw).astype(np.float32)
        return q.int_dequantize(acc, s_acc, 4, 1)

    def _matmul(self, call):
        w_shape = q.shape_of(call.args[1])
        if w_shape is None or len(w_shape) != 2:
            return call
        ops = self._operands(call, 1)
        if ops is None:
            return call
        xp, wt = ops
        w, sw = wt[0], wt[1]
        data, w_c, zx = self._int_input(xp, wt)
        acc = self.builder_.emit(relax.op.matmul(data, w_c, out_dtype="int32"))
        if zx:
            acc = self.builder_.emit(relax.op.subtract(acc, q.c(zx * w.sum(axis=0), "int32")))
        ndim = len(q.shape_of(call))
        s_acc = (np.float32(xp.scale[0]) * sw).astype(np.float32)
        return q.int_dequantize(acc, s_acc, ndim, ndim - 1)

    def _bias(self, call):
        for acc_side, bias_side in ((0, 1), (1, 0)):
            d = q.producer(self, call.args[acc_side], "relax.dequantize")
            if d is None or q.dtype_of(d.args[0]) != "int32":
                continue
            p = q.QParams(d)
            bias = q.const_eval(self, call.args[bias_side])
            if not p.ok or bias is None or np.any(p.zero != 0):
                continue
            new = self._add_bias(call, d, p, bias)
            if new is not None:
                return new
        return call

    def _add_bias(self, call, d, p, bias):
        ndim = len(q.shape_of(call))
        bias = bias.reshape((1,) * (ndim - bias.ndim) + bias.shape)
        scale = q.qref._bcast(p.scale.astype(np.float64), ndim, p.axis)
        b_int, residual = q.qref.split_bias(bias, scale)
        if np.abs(b_int).max(initial=0) >= 2 ** 31 or tuple(q.shape_of(call)) != \
                np.broadcast_shapes(q.shape_of(call), b_int.shape):
            return None
        acc = self.builder_.emit(relax.op.add(d.args[0], q.c(b_int, "int32")))
        out = relax.op.dequantize(acc, d.args[1], d.args[2], axis=p.axis)
        if not _SPLIT_BIAS[0] or not np.any(residual):
            return out
        # the bias off the accumulator grid stays a float add: IntegerRequantize folds it
        # into its rounding constant (qref.split_bias); a float consumer adds it as it is
        return relax.op.add(self.builder_.emit(out), q.c(residual, "float32"))


# Whether the running pass keeps off-grid bias residuals (the @mutator classes take no
# constructor arguments; as IntegerRequantize's rounding mode)
_SPLIT_BIAS = [True]


@tvm.transform.module_pass(opt_level=0, name=_NAME)
class LowerIntegerConv:
    """Lower dequantized conv2d/matmul (+ constant bias) to int32-accumulating integer ops."""

    def __init__(self, split_bias: bool = True):
        """``split_bias``: a float bias off the accumulator grid keeps its residual (exact
        against the QDQ graph); False rounds it to the grid, as onnxruntime's integer
        kernels do (``PipelineOptions(match_onnxruntime=True)``)."""
        self.split_bias = split_bias

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        _SPLIT_BIAS[0] = self.split_bias
        try:
            return q.run_mutator(mod, _Lower)
        finally:
            _SPLIT_BIAS[0] = True
