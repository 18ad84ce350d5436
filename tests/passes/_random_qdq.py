"""Small ONNX QDQ graphs built op by op, each with its exact integer reference (tvmq.qref).

:class:`QDQGraph` appends ONNX nodes and, for the concrete input it was given, computes the
quantized integer value of every tensor with :mod:`tvmq.qref` (the semantics tvmq's integer
lowering must reproduce bit for bit). :func:`random_graph` draws a graph from a list of op
names (the differential fuzzer in ``test_differential_fuzz.py``); :func:`residual_requant_graph`
is the 14-node graph of the epilogue race (issue 26).

Rounding: every rescale is ``qref.requantize`` (exact rational, half to even) with the
float32 multipliers ONNX's scales give (qref module docstring); the model input is an exact
multiple of its scale, so its QuantizeLinear has no rounding choice.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvmq import qref

F32 = np.float32
ONNX_DTYPE = {"int8": np.int8, "uint8": np.uint8}


@dataclasses.dataclass
class QTensor:
    """A dequantized tensor of the graph: ONNX name, integer reference, its parameters."""

    name: str
    q: np.ndarray  # int64 integer values (the QuantizeLinear output)
    scale: np.float32
    zero: int
    dtype: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    def dequantized(self) -> np.ndarray:
        return ((self.q - self.zero).astype(F32) * self.scale).astype(F32)


class QDQGraph:
    """An ONNX QDQ graph (opset 13) under construction, with integer references."""

    def __init__(self, shape, rng: np.random.RandomState, scale: float = 0.03,
                 dtype: str = "int8", zero: int = 0):
        self.rng, self.nodes, self.inits, self._n = rng, [], [], 0
        lo, hi = qref.dtype_range(dtype)
        q = rng.randint(lo, hi + 1, size=shape).astype(np.int64)
        self.x = ((q - zero).astype(F32) * F32(scale)).astype(F32)
        self.input = self._qdq("x", q, scale, zero, dtype)

    # ---- plumbing -------------------------------------------------------------------------
    def _name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def _const(self, arr, stem: str) -> str:
        name = self._name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def _node(self, op: str, inputs, stem: str, **attrs) -> str:
        out = self._name(stem)
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def _qdq(self, src: str, q, scale, zero, dtype: str) -> QTensor:
        """``src`` -> QuantizeLinear -> DequantizeLinear; ``q`` is its integer reference.
        ``scale`` and ``zero`` are scalars, or ``(1, C, 1, 1)`` arrays (per channel)."""
        per_channel = np.ndim(scale) > 0
        s = self._const(np.asarray(scale, F32).reshape(-1) if per_channel else F32(scale), "s")
        z = self._const(np.asarray(zero).astype(ONNX_DTYPE[dtype]).reshape(
            -1 if per_channel else ()), "z")
        axis = {"axis": 1} if per_channel else {}
        qn = self._node("QuantizeLinear", [src, s, z], "q", **axis)
        if not per_channel:
            scale, zero = F32(scale), int(zero)
        return QTensor(self._node("DequantizeLinear", [qn, s, z], "dq", **axis),
                       np.asarray(q, np.int64), scale, zero, dtype)

    def _out_params(self, relu: bool, scale=None, dtype: str | None = None):
        """(scale, zero point, dtype) of a new quantized output."""
        scale = F32(scale or self.rng.uniform(0.005, 0.05))
        if dtype == "int8":
            return scale, 0, "int8"
        if relu or dtype == "uint8" or self.rng.rand() < 0.3:
            return scale, (0 if relu else int(self.rng.randint(100, 156))), "uint8"
        return scale, 0, "int8"

    def _requant(self, acc, m, z_out, dtype: str, relu: bool, frac=None, axis: int = 1):
        z = np.asarray(z_out, np.int64).reshape(-1)
        lo = np.maximum(z, qref.dtype_range(dtype)[0]) if relu else None
        return qref.requantize(acc, m, 0, z if z.size > 1 else int(z[0]), dtype, axis=axis,
                               lo=lo, bias_residual=frac)

    def _bias(self, b_int, s_acc, float_bias: bool):
        """(float32 bias for the graph, its integer part, its residual in accumulator units
        or None), split as tvmq splits it (``qref.split_bias``)."""
        s64 = np.asarray(s_acc, np.float64)
        if not float_bias:
            return (b_int * s64).astype(F32), b_int, None
        bias = (self.rng.uniform(-2000, 2000, b_int.shape) * s64).astype(F32)
        b, residual = qref.split_bias(bias, s64)
        return bias, b.astype(np.int64), residual.astype(np.float64) / s64

    # ---- ops ------------------------------------------------------------------------------
    def conv(self, t: QTensor, cout: int, k: int = 3, stride: int = 1, depthwise: bool = False,
             relu: bool = True, per_channel: bool = True, scale=None,
             per_channel_out: bool = False, weight_bits: int = 8,
             weight_chain: str = "int", float_bias: bool = False) -> QTensor:
        """Conv (+ ReLU) quantized per tensor, or with ``per_channel_out`` per output channel
        with its own zero points (NNCF's quantization of a depthwise conv's input).

        ``weight_chain``: how the integer weight reaches its DequantizeLinear: ``"int"`` (an
        integer initializer), ``"clip"`` (integer -> Clip, Brevitas's TorchScript export),
        ``"q_clip"`` (float -> QuantizeLinear -> Clip, its dynamo export) or ``"q"``
        (float -> QuantizeLinear). ``weight_bits``: narrow range ``[-(2**(b-1) - 1), ...]``.
        ``float_bias``: a float bias off the accumulator grid (NNCF, Brevitas, folded
        BatchNorm), else an integer one times ``s_acc`` (onnxruntime's quantizer).
        """
        cin = t.shape[1]
        cout, groups = (cin, cin) if depthwise else (cout, 1)
        wmax = (1 << (weight_bits - 1)) - 1
        w = self.rng.randint(-wmax, wmax + 1, size=(cout, cin // groups, k, k)).astype(np.int8)
        s_w = (self.rng.uniform(0.0005, 0.003, cout) if per_channel
               else np.full(cout, self.rng.uniform(0.0005, 0.003))).astype(F32)
        s_acc = (np.asarray(t.scale, F32).reshape(-1) * s_w).astype(F32)
        b = self.rng.randint(-2000, 2000, cout)
        axis = {"axis": 0} if per_channel else {}
        sw = self._const(s_w if per_channel else s_w[:1].reshape(()), "sw")
        zw = self._const(np.zeros(cout if per_channel else (), np.int8), "zw")
        wdq = self._node("DequantizeLinear", [self._weight(w, s_w, sw, zw, wmax, weight_chain,
                                                           axis), sw, zw], "wdq", **axis)
        bias_f, b, frac = self._bias(b, s_acc, float_bias)
        bias = self._const(bias_f, "b")
        pad = k // 2
        y = self._node("Conv", [t.name, wdq, bias], "conv", pads=[pad] * 4,
                       strides=[stride] * 2, group=groups)
        if relu:
            y = self._node("Relu", [y], "relu")
        zx = np.asarray(t.zero, np.int64)  # (1, C, 1, 1) when the input is per channel
        acc = qref.conv2d_int(t.q, w, zx, 0, (stride, stride), (pad,) * 4, groups=groups)
        acc = acc + b.reshape(1, -1, 1, 1)
        if per_channel_out:
            s_y = self.rng.uniform(0.005, 0.05, (1, cout, 1, 1)).astype(F32)
            z_y = self.rng.randint(0, 30, (1, cout, 1, 1)) if not relu else np.zeros(
                (1, cout, 1, 1), np.int64)
            dtype = "uint8"
        else:
            s_y, z_y, dtype = self._out_params(relu, scale)
        m = (s_acc.reshape(1, -1, 1, 1) / s_y).astype(F32).reshape(-1)
        q = self._requant(acc, m if m.size > 1 else m[0], z_y, dtype, relu, frac)
        return self._qdq(y, q, s_y, z_y, dtype)

    def _weight(self, w, s_w, sw: str, zw: str, wmax: int, chain: str, axis: dict) -> str:
        """The integer weight ``w`` as the exporter's chain ending before DequantizeLinear."""
        if chain == "int":
            return self._const(w, "w")
        if chain == "clip":
            src = self._const(w, "w")
        else:  # float weights exactly on the grid: QuantizeLinear gives back ``w``
            real = (w.astype(F32) * s_w.reshape(-1, *([1] * (w.ndim - 1)))).astype(F32)
            src = self._node("QuantizeLinear", [self._const(real, "wf"), sw, zw], "wq", **axis)
            if chain == "q":
                return src
        return self._node("Clip", [src, self._const(np.int8(-wmax), "lo"),
                                   self._const(np.int8(wmax), "hi")], "wclip")

    def dense(self, t: QTensor, n_out: int, scale=None, float_bias: bool = False) -> QTensor:
        """Flatten -> Gemm (transB) of a ``[1, C, 1, 1]`` or ``[1, K]`` tensor."""
        a = t.q.reshape(t.shape[0], -1)
        k = a.shape[1]
        w = self.rng.randint(-127, 128, size=(n_out, k)).astype(np.int8)
        s_w = F32(self.rng.uniform(0.0005, 0.003))
        s_acc = F32(F32(t.scale) * s_w)
        bias_f, b, frac = self._bias(self.rng.randint(-2000, 2000, n_out),
                                     np.full(n_out, s_acc, F32), float_bias)
        wdq = self._node("DequantizeLinear", [self._const(w, "w"), self._const(s_w, "sw"),
                                              self._const(np.int8(0), "zw")], "wdq")
        flat = self._node("Flatten", [t.name], "flat") if t.q.ndim > 2 else t.name
        y = self._node("Gemm", [flat, wdq, self._const(bias_f, "b")], "gemm", transB=1)
        acc = qref.matmul_int(a, w.T.astype(np.int64), t.zero) + b
        s_y, z_y, dtype = self._out_params(False, scale)
        q = self._requant(acc, F32(s_acc / s_y), z_y, dtype, False, frac, axis=1)
        return self._qdq(y, q, s_y, z_y, dtype)

    def requant(self, t: QTensor, scale=None, dtype: str | None = None) -> QTensor:
        """The same tensor quantized again at another scale (Q -> DQ -> Q -> DQ)."""
        s_y, z_y, dtype = self._out_params(False, scale, dtype)
        q = qref.requantize(t.q, F32(F32(t.scale) / s_y), t.zero, z_y, dtype)
        return self._qdq(t.name, q, s_y, z_y, dtype)

    def add(self, a: QTensor, b: QTensor, relu: bool = False, scale=None,
            dtype: str | None = None) -> QTensor:
        y = self._node("Add", [a.name, b.name], "add")
        if relu:
            y = self._node("Relu", [y], "relu")
        s_y, z_y, dtype = self._out_params(relu, scale, dtype)
        q = qref.add_int(a.q, b.q, a.scale, a.zero, b.scale, b.zero, s_y, z_y, dtype,
                         lo=z_y if relu else None)
        return self._qdq(y, q, s_y, z_y, dtype)

    def concat(self, ts: list[QTensor], scale=None) -> QTensor:
        y = self._node("Concat", [t.name for t in ts], "cat", axis=1)
        s_y, z_y, dtype = self._out_params(False, scale)
        q = qref.concat_int([(t.q, t.scale, t.zero) for t in ts], 1, s_y, z_y, dtype)
        return self._qdq(y, q, s_y, z_y, dtype)

    def maxpool(self, t: QTensor, requantize: bool = True) -> QTensor:
        """3x3 / 2 max pool, pad 1 (ResNet's), re-quantized at its input's parameters, or
        with ``requantize=False`` consumed as it is (NNCF's DQ -> MaxPool -> Conv)."""
        y = self._node("MaxPool", [t.name], "maxpool", kernel_shape=[3, 3], strides=[2, 2],
                       pads=[1, 1, 1, 1])
        q = qref.max_pool2d_int(t.q, (3, 3), (2, 2), (1, 1, 1, 1))
        if not requantize:
            return QTensor(y, q, t.scale, t.zero, t.dtype)
        return self._qdq(y, q, t.scale, t.zero, t.dtype)

    def avgpool(self, t: QTensor, scale=None) -> QTensor:
        y = self._node("AveragePool", [t.name], "avgpool", kernel_shape=[2, 2], strides=[2, 2])
        s_y, z_y, dtype = self._out_params(False, scale)
        q = qref.avg_pool2d_int(t.q, t.scale, t.zero, s_y, z_y, (2, 2), (2, 2), dtype=dtype)
        return self._qdq(y, q, s_y, z_y, dtype)

    def global_pool(self, t: QTensor, scale=None) -> QTensor:
        y = self._node("GlobalAveragePool", [t.name], "gap")
        s_y, z_y, dtype = self._out_params(False, scale)
        return self._qdq(y, qref.global_avg_pool_int(t.q, t.scale, t.zero, s_y, z_y, dtype),
                         s_y, z_y, dtype)

    # ---- the model ------------------------------------------------------------------------
    def model(self, outputs: list[QTensor]) -> onnx.ModelProto:
        vi = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.shape))
              for t in outputs]
        graph = helper.make_graph(
            self.nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                              list(self.x.shape))],
            vi, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


#: the op names :func:`random_graph` draws from
OPS = ("conv", "conv_s2", "conv1x1", "depthwise", "add", "add_requant", "concat", "maxpool",
       "avgpool", "requant", "requant_chain", "maxpool_conv")


def random_graph(ops, channels: int, hw: int, seed: int):
    """(model, input, reference outputs) of a graph applying ``ops`` in order.

    Each op takes its input(s) from any tensor built so far (so tensors get several
    consumers); the graph outputs are the last tensor and, through a global pool and a
    dense layer, the one before it.
    """
    rng = np.random.RandomState(seed)
    g = QDQGraph((1, channels, hw, hw), rng, dtype="int8" if rng.rand() < 0.5 else "uint8",
                 zero=0)
    pool = [g.input]

    def pick(min_hw: int = 1):
        cands = [t for t in pool if t.q.ndim == 4 and t.shape[2] >= min_hw]
        return cands[rng.randint(len(cands))] if cands else pool[0]

    def same_hw(t):
        return [u for u in pool if u.q.ndim == 4 and u.shape[2:] == t.shape[2:]]

    for op in ops:
        t = pick(2 if op in ("conv_s2", "maxpool", "avgpool", "maxpool_conv") else 1)
        cout = int(rng.choice([4, 8, 16, 20, 24, 32]))
        if op == "conv":
            t = g.conv(t, cout, relu=rng.rand() < 0.7, per_channel=rng.rand() < 0.8,
                       float_bias=rng.rand() < 0.5)
        elif op == "conv_s2":
            t = g.conv(t, cout, stride=2)
        elif op == "conv1x1":
            t = g.conv(t, cout, k=1, relu=rng.rand() < 0.5, float_bias=rng.rand() < 0.5)
        elif op == "depthwise":
            t = g.conv(t, 0, depthwise=True)
        elif op in ("add", "add_requant"):
            others = [u for u in pool if u.shape == t.shape and u is not t]
            u = others[rng.randint(len(others))] if others and op == "add" else g.requant(t)
            t = g.add(t, u, relu=rng.rand() < 0.5)
        elif op == "concat":
            others = same_hw(t)
            t = g.concat([t, others[rng.randint(len(others))]])
        elif op == "maxpool":
            t = g.maxpool(t)
        elif op == "maxpool_conv":
            t = g.conv(g.maxpool(t, requantize=False), cout)
        elif op == "avgpool":
            t = g.avgpool(t)
        elif op == "requant":
            t = g.requant(t)
        elif op == "requant_chain":
            t = g.requant(g.requant(t))
        pool.append(t)
    head = g.dense(g.global_pool(pool[-2] if len(pool) > 2 else pool[-1]), 10,
                   float_bias=rng.rand() < 0.5)
    outputs = [pool[-1], head]
    return g.model(outputs), g.x, outputs


def residual_requant_graph(seed: int = 0):
    """The race's graph (issue 26): conv -> ReLU -> uint8, conv -> ReLU -> uint8, and a skip
    that re-quantizes the first conv's output to int8 (Brevitas's shared ``QuantIdentity``)
    added to the second; all scales scalar."""
    g = QDQGraph((1, 3, 16, 16), np.random.RandomState(seed), scale=0.03)
    r1 = g.conv(g.input, 16, per_channel=False, scale=0.0097)
    r2 = g.conv(r1, 16, per_channel=False, scale=0.0033)
    a = g.requant(r1, scale=0.0157, dtype="int8")
    y = g.add(a, r2, scale=0.0157, dtype="int8")
    return g.model([y]), g.x, [y]
