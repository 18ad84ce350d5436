"""FoldBatchNormIntoConv: fold inference BatchNorm into the preceding conv2d.

Rewrites ``bn(conv2d(x, W) [+ b], gamma, beta, mean, var)[0]`` into
``conv2d(x, W * k) + (b - mean) * k + beta`` with ``k = gamma / sqrt(var + eps)`` per output
channel. TVM's own ``FoldBatchnormToConv2D`` misses the ``conv + bias + BN`` form that
``torch.export`` produces, hence this pass.

Preconditions: parameters are bound as constants and ``FoldConstant`` has run (so that the
bias ``reshape(b)`` is a constant); NCHW data, OIHW kernel. Run it early in the pipeline,
before any quantization rewrite (it produces a float conv).
"""
from __future__ import annotations

import numpy as np

from tvmq._tvm import const_value, relax, struct_dtype, tvm
from tvm.relax.dpl import is_const, is_op, is_tuple_get_item, wildcard


def _pattern():
    conv = is_op("relax.nn.conv2d")(wildcard(), is_const())
    bias = is_const()
    conv_bias = is_op("relax.add")(conv, bias)
    stats = [is_const() for _ in range(4)]
    bn = is_op("relax.nn.batch_norm")(conv_bias | conv, *stats)
    out = is_tuple_get_item(bn, 0)
    annotations = {"conv": conv, "bias": bias, "bn": bn, "stats": stats}
    return out, annotations


def _folded(matched, conv_call, bias_const, bn_call):
    attrs = conv_call.attrs
    if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or bn_call.attrs.axis != 1:
        return None
    weight = const_value(conv_call.args[1]).numpy().astype(np.float64)
    gamma, beta, mean, var = (const_value(a).numpy().astype(np.float64) for a in bn_call.args[1:5])
    if not bn_call.attrs.scale:
        gamma = np.ones_like(gamma)
    if not bn_call.attrs.center:
        beta = np.zeros_like(beta)
    k = gamma / np.sqrt(var + bn_call.attrs.epsilon)
    bias = np.zeros_like(mean)
    if bias_const is not None:
        b = const_value(bias_const).numpy()
        if b.size != mean.size:
            return None
        bias = b.reshape(-1).astype(np.float64)
    dtype = struct_dtype(conv_call.args[1])
    new_w = relax.const((weight * k.reshape(-1, 1, 1, 1)).astype(dtype))
    new_b = relax.const(((bias - mean) * k + beta).astype(dtype).reshape(1, -1, 1, 1))
    conv = relax.op.nn.conv2d(conv_call.args[0], new_w, strides=attrs.strides,
                              padding=attrs.padding, dilation=attrs.dilation, groups=attrs.groups,
                              data_layout="NCHW", kernel_layout="OIHW",
                              out_layout=attrs.out_layout, out_dtype=attrs.out_dtype)
    return relax.op.add(conv, new_b)


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNormIntoConv")
class FoldBatchNormIntoConv:
    """Fold ``conv2d [+ bias] -> batch_norm`` (inference) into one conv2d plus a bias add."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        pattern, ann = _pattern()

        def rewriter(expr, matches):
            bias = matches.get(ann["bias"])
            new = _folded(matches, matches[ann["conv"]], bias, matches[ann["bn"]])
            return expr if new is None else new

        updates = {}
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                updates[gvar] = relax.dpl.rewrite_call(pattern, rewriter, func)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod
