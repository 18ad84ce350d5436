"""LowerIntegerLUT: elementwise float functions between quantized tensors as lookup tables.

Rewrites ``quantize(f(dequantize(x, s_x, z_x)), s_y, z_y)`` where ``x`` is an 8-bit tensor
(int8/uint8), the parameters are per-tensor constants and ``f`` is any expression of
elementwise float32 ops whose only non-constant input is that one ``dequantize`` (scalar
constants allowed) into ``take(T, x)``: a 256-entry table ``T[i] = quantize(f(dequantize(i)))``
computed at compile time. Hardswish, HardSigmoid, SiLU (``x * sigmoid(x)``), LeakyReLU,
GELU (erf and tanh forms), Sigmoid, Tanh, Mish, ELU-like ``exp`` chains ... all become one
gather from a 256-byte table, with no float op left in the compiled model. What onnxruntime
(QDQ format) and other quantizers emit around activations they do not quantize themselves
(DQ -> act -> Q) is exactly this pattern.

The table follows the graph's float32 semantics: ``dequantize`` and ``quantize`` as ONNX
defines them (:func:`tvmq.qref.dequantize`, :func:`tvmq.qref.quantize`: float32, round half
to even, saturate), ``f`` evaluated op by op in float32 with NumPy (transcendentals: NumPy's
float32 ``exp``/``tanh``/``log``, SciPy's ``erf``), see :func:`tvmq.qref.lut`. A float path
that computes ``f`` with a different libm can differ by one ulp and so, where ``f(x) / s_y``
lies within an ulp of a rounding tie, by one quantization step.

Left alone: ``quantize(relu|clip(dequantize(x)))`` (:class:`IntegerRequantize`'s fixed-point
form is cheaper than a gather), non-8-bit or per-channel parameters, per-channel constants
inside ``f``, and anything reading a second tensor. Position: quantize phase, first (before
the patterns it matches are taken apart by the other passes).
"""
from __future__ import annotations

import numpy as np

from tvmq import qref
from tvmq._tvm import relax, tir, tvm
from tvmq.passes import _qcommon as q

_NAME = "LowerIntegerLUT"
_MAX_NODES = 64


def _prim(value) -> float:
    v = getattr(value, "value", value)
    return float(getattr(v, "value", v))


def _erf(x):
    from scipy.special import erf

    return erf(x).astype(np.float32)


def _f32(v) -> np.float32:
    return np.float32(v)


def _softplus(x, beta, threshold):
    bx = x * _f32(beta)
    return np.where(bx > _f32(threshold), x,
                    np.log1p(np.exp(bx)) / _f32(beta)).astype(np.float32)


#: unary ops: numpy float32 implementation of the op's TVM legalization, given the call
_UNARY = {
    "relax.nn.relu": lambda c, x: np.maximum(x, _f32(0)),
    "relax.clip": lambda c, x: np.clip(x, _f32(_prim(c.args[1])), _f32(_prim(c.args[2]))),
    "relax.nn.leakyrelu": lambda c, x: np.where(x > 0, x, x * _f32(c.attrs.alpha)),
    "relax.sigmoid": lambda c, x: _f32(1) / (_f32(1) + np.exp(-x)),
    "relax.nn.silu": lambda c, x: x * (_f32(1) / (_f32(1) + np.exp(-x))),
    "relax.tanh": lambda c, x: np.tanh(x),
    "relax.exp": lambda c, x: np.exp(x),
    "relax.log": lambda c, x: np.log(x),
    "relax.sqrt": lambda c, x: np.sqrt(x),
    "relax.rsqrt": lambda c, x: _f32(1) / np.sqrt(x),
    "relax.erf": lambda c, x: _erf(x),
    "relax.negative": lambda c, x: -x,
    "relax.abs": lambda c, x: np.abs(x),
    "relax.square": lambda c, x: x * x,
    "relax.nn.gelu": lambda c, x: x * (_f32(0.5) + _erf(x * _f32(np.sqrt(0.5))) * _f32(0.5)),
    "relax.nn.gelu_tanh": lambda c, x: _f32(0.5) * x * (_f32(1) + np.tanh(
        _f32(np.sqrt(2 / np.pi)) * (x + _f32(0.044715) * (x * x * x)))),
    "relax.nn.softplus": lambda c, x: _softplus(x, c.attrs.beta, c.attrs.threshold),
}
_BINARY = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
    "relax.divide": np.divide, "relax.maximum": np.maximum, "relax.minimum": np.minimum,
    "relax.power": np.power,
}
#: IntegerRequantize's own pattern: one relu/clip straight on the dequantize
_REQUANTIZE_ACTS = ("relax.nn.relu", "relax.clip")


class _Expr:
    """The DAG of ``f``: builds a NumPy function of the table index ``i`` (input value
    ``lo + i`` of the 8-bit source), or fails.

    Leaves: scalar float constants; ``dequantize(x)`` of the one 8-bit source ``x``; and
    ``dequantize(take(T, x))``, a table this pass already made from ``x`` (so a chain that an
    exporter quantized op by op, e.g. onnxruntime's SiLU as ``Sigmoid -> Q -> DQ -> Mul``,
    collapses into one table with every intermediate rounding kept).
    """

    def __init__(self, mut):
        self.mut = mut
        self.data = None  # the 8-bit source tensor
        self.params = None  # the source dequantize's (scale, zero point) args
        self.ops: list[str] = []

    def _bound(self, expr):
        while isinstance(expr, relax.Var):
            nxt = self.mut.lookup_binding(expr)
            if nxt is None:
                return expr
            expr = nxt
        return expr

    def _same_source(self, data) -> bool:
        if q.dtype_of(data) not in ("int8", "uint8"):
            return False
        if self.data is None:
            self.data = data
        return data.same_as(self.data)

    def _table_source(self, take):
        """``(T, x)`` when ``take`` is ``take(T, astype(x, int32) - lo)`` as emitted below."""
        table = q.const_np(take.args[0])
        idx = self._bound(take.args[1])
        if table is None or table.ndim != 1 or table.size != 256:
            return None
        offset = 0
        if q.op_name(idx) == "relax.subtract":
            offset = q.const_np(idx.args[1])
            offset = None if offset is None or offset.size != 1 else int(offset.reshape(()))
            idx = self._bound(idx.args[0])
        if q.op_name(idx) != "relax.astype" or str(idx.attrs.dtype) != "int32":
            return None
        data = idx.args[0]
        if offset != qref.dtype_range(q.dtype_of(data) or "int32")[0]:
            return None
        return table, data

    def _leaf(self, d):
        p = q.QParams(d)
        if not p.per_tensor:
            return None
        scale, zero = p.scale[0], p.zero[0]
        inner = self._bound(p.data)
        if q.op_name(inner) == "relax.take":
            found = self._table_source(inner)
            if found is None or not self._same_source(found[1]):
                return None
            table = found[0].astype(np.int64)
            return lambda i: qref.dequantize(table[i], scale, zero, axis=0)
        if not self._same_source(p.data):
            return None
        if self.params is None:
            self.params = d
        elif not (d.args[1].same_as(self.params.args[1])
                  and d.args[2].same_as(self.params.args[2])):
            return None
        lo = qref.dtype_range(q.dtype_of(p.data))[0]
        return lambda i: qref.dequantize(i + lo, scale, zero, axis=0)

    def build(self, expr):
        """A function ``i -> f_sub`` (float32 arrays) for ``expr``, or None."""
        if len(self.ops) > _MAX_NODES:
            return None
        value = q.const_np(expr)
        if value is not None:
            if value.size != 1 or value.dtype.kind != "f":
                return None
            v = np.float32(value.reshape(()))
            return lambda i: v
        bound = self._bound(expr)
        name = q.op_name(bound)
        if name == "relax.dequantize":
            data = q.const_np(bound.args[0])
            if data is None:
                return self._leaf(bound)
            p = q.QParams(bound)  # a quantized scalar constant (onnxruntime quantizes them)
            if not p.per_tensor or data.size != 1:
                return None
            v = np.float32(qref.dequantize(data.reshape(()), p.scale[0], p.zero[0], axis=0))
            return lambda i: v
        if q.dtype_of(bound) != "float32":
            return None
        if name == "relax.astype":
            self.ops.append(name)
            return self.build(bound.args[0])
        if name in _UNARY:
            self.ops.append(name)
            inner, impl, call = self.build(bound.args[0]), _UNARY[name], bound
            if inner is None:
                return None
            return lambda i: np.asarray(impl(call, inner(i)), np.float32)
        if name in _BINARY:
            self.ops.append(name)
            a, b = self.build(bound.args[0]), self.build(bound.args[1])
            if a is None or b is None:
                return None
            impl = _BINARY[name]
            return lambda i: np.asarray(impl(a(i), b(i)), np.float32)
        return None


@relax.expr_functor.mutator
class _Lower(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if q.op_name(call) != "relax.quantize":
            return call
        out = q.QParams(call)
        out_dtype = str(call.attrs.out_dtype)
        if not out.per_tensor or out_dtype not in ("int8", "uint8", "int16", "uint16"):
            return call
        dag = _Expr(self)
        fn = dag.build(call.args[0])
        if fn is None or dag.data is None or not dag.ops:
            return call
        if len(dag.ops) == 1 and dag.ops[0] in _REQUANTIZE_ACTS and dag.params is not None:
            return call  # IntegerRequantize's fixed-point form
        in_dtype = q.dtype_of(dag.data)
        lo, hi = qref.dtype_range(in_dtype)
        with np.errstate(all="ignore"):
            values = np.broadcast_to(fn(np.arange(hi - lo + 1)), (hi - lo + 1,))
        if np.isnan(values).any():
            q.skip(_NAME, call, "no lookup table: the function is NaN at some input")
            return call
        table = qref.quantize(values, out.scale[0], out.zero[0], out_dtype, axis=0)
        emit = self.builder_.emit
        idx = emit(relax.op.astype(dag.data, "int32"))
        if lo:
            idx = emit(relax.op.subtract(idx, q.c(lo, "int32")))
        return relax.op.take(q.c(table, out_dtype), idx, axis=0, mode="clip")


@tvm.transform.module_pass(opt_level=0, name=_NAME)
class LowerIntegerLUT:
    """Rewrite ``quantize(f(dequantize(x)))`` over 8-bit ``x`` into a table lookup."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return q.run_mutator(mod, _Lower)


@tvm.transform.module_pass(opt_level=0, name="MarkLookupsElementwise")
class MarkLookupsElementwise:
    """Mark the legalized table lookups elementwise, so they fuse with their neighbours.

    ``LegalizeOps`` turns ``take(T, idx)`` into a PrimFunc that ``AnnotateTIROpPattern``
    calls opaque; with a 1-D table each output element reads the index at its own position
    (and the constant table), which is elementwise: ``FuseOps`` may then fuse the index cast
    before it and the next layer's input packing after it. Position: legalize phase, after
    ``AnnotateTIROpPattern``, before ``FuseOps``.
    """

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        lookups = set()
        call_tir = tvm.ir.Op.get("relax.call_tir")

        def visit(expr):
            if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
                gvar, args = expr.args[0], expr.args[1]
                fields = list(getattr(args, "fields", []))
                if gvar.name_hint.startswith("take") and len(fields) == 2:
                    shape = q.shape_of(fields[0])
                    if shape is not None and len(shape) == 1:
                        lookups.add(gvar.name_hint)

        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func, visit)
        for gvar, func in list(mod.functions.items()):
            if gvar.name_hint in lookups and isinstance(func, tir.PrimFunc):
                mod[gvar] = func.with_attr("op_pattern", 0)  # kElemWise
        return mod
