"""ONNX-level canonicalization and op converters tvmq adds to Relax's ONNX frontend.

:func:`canonicalize` runs on the ModelProto before import (``tvmq.frontend.import_onnx``),
after :func:`tvmq.onnx_checks.check_quantization_params` rejected invalid scales/zero points:

* **QOperator -> QDQ.** ``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``, and the
  ``com.microsoft`` ``QGemm``, ``QLinearAdd``, ``QLinearMul``, ``QLinearConcat``,
  ``QLinearSigmoid``, ``QLinearLeakyRelu``, ``QLinearAveragePool``,
  ``QLinearGlobalAveragePool``, ``QLinearSoftmax``, ``QLinearWhere``, ``QLinearReduceMean``
  (what onnxruntime's ``quantize_static`` emits in QOperator format) are rewritten into
  ``DequantizeLinear -> float op -> QuantizeLinear`` (``ConvInteger``: ``-> Cast(int32)``).
  The integer-lowering passes (``tvmq.passes``) then turn these QDQ patterns back into integer
  ops, so one lowering path serves both formats. A ``QLinearConv``/``QGemm`` bias is
  dequantized at ``s_x * s_w`` (the QOperator definition), which requires constant scales.
* **Sub-byte containers.** int4/uint4/int2/uint2 tensors (opset 21) are widened to
  int8/uint8 (TVM's ``int4`` dtype is broken on llvm); a ``QuantizeLinear`` to a sub-byte type
  gets a ``Clip`` to that type's range. ``PackSubByteWeights`` packs the weights again.
* **Blocked Q/DQ** (``block_size``, opset 21) with constant parameters is expanded to
  elementwise arithmetic (``Div/Round/Add/Clip`` and ``Sub/Mul``); such layers stay float.
* The default-domain opset is raised to 13 when lower (per-axis Q/DQ needs it).

``EXTRA_CONVERTERS`` maps an ONNX op type to a factory of an ``OnnxOpConverter`` subclass
(TVM is imported only when the factory runs), registered only
inside :func:`registered`, so importing tvmq never changes TVM globally.
"""
from __future__ import annotations

import contextlib

import numpy as np

EXTRA_CONVERTERS: dict[str, type] = {}


def _const_bound(expr):
    """A scalar constant clip bound as a float (None: absent or not a finite constant)."""
    from tvmq._tvm import Constant, const_value

    if expr is None:
        return None
    if not isinstance(expr, Constant) or const_value(expr).numpy().size != 1:
        return False
    value = float(const_value(expr).numpy().reshape(()))
    return value if np.isfinite(value) else False


def _clip_converter():
    """ONNX ``Clip`` with constant bounds as ``relax.clip`` (ReLU when only ``min=0``).

    TVM's importer always emits ``maximum``/``minimum`` TIR calls, which no integer
    lowering can see through: ``IntegerRequantize`` fuses ``relax.clip``/``relu`` into the
    requantization (exact: rounding is monotone, so clipping before or after it agrees).
    Other bounds (tensors, NaN) keep TVM's converter.
    """
    from tvm.relax.frontend.onnx.onnx_frontend import Clip, get_constant

    from tvmq._tvm import relax

    class _Clip(Clip):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            lo, hi = (_const_bound(get_constant(inputs[i], params) if len(inputs) > i
                                   and inputs[i] is not None else None) for i in (1, 2))
            if lo is False or hi is False or (lo is None and hi is None):
                return super()._impl_v13(bb, inputs, attr, params)
            if hi is None:
                return relax.op.nn.relu(inputs[0]) if lo == 0.0 else \
                    super()._impl_v13(bb, inputs, attr, params)
            lo = float(np.finfo(np.float32).min) if lo is None else lo
            return relax.op.clip(inputs[0], lo, hi)

    return _Clip


EXTRA_CONVERTERS["Clip"] = _clip_converter

#: a 1-D constant table of at most this many entries, gathered by a constant index tensor of
#: at least this many elements (and 2+ dimensions), is a codebook weight
CODEBOOK_MAX_ENTRIES, CODEBOOK_MIN_INDICES = 256, 16


def _gather_converter():
    """ONNX ``Gather`` of a codebook (a constant 1-D table of <= 256 entries, constant indices
    of 2+ dimensions) stays ``relax.take(table, indices)``: TVM's importer would evaluate it
    into the dense weight. :class:`tvmq.passes.LowerCodebookWeights` turns it into the
    codebook-encoded weight; indices are kept ``uint8`` (they were ``Cast`` to int64 for
    ONNX). Everything else keeps TVM's converter.
    """
    from tvm.relax.frontend.onnx.onnx_frontend import Gather, get_constant

    from tvmq._tvm import Constant, const_value, relax, tvm

    class _Gather(Gather):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            data, idx = get_constant(inputs[0], params), inputs[1]
            if isinstance(idx, relax.Var):  # bound by an earlier converter (a Cast)
                idx = bb.lookup_binding(idx) or idx
            if (isinstance(idx, relax.Call) and isinstance(idx.op, tvm.ir.Op)
                    and idx.op.name == "relax.astype"):  # the Cast of uint8 indices
                idx = idx.args[0]
            idx = get_constant(idx, params)
            if (isinstance(data, Constant) and isinstance(idx, Constant)
                    and attr.get("axis", 0) == 0):
                table, ind = const_value(data).numpy(), const_value(idx).numpy()
                if (table.ndim == 1 and 0 < table.size <= CODEBOOK_MAX_ENTRIES
                        and ind.ndim >= 2 and ind.size >= CODEBOOK_MIN_INDICES
                        and ind.dtype.kind in "iu" and ind.min() >= 0
                        and ind.max() < table.size):
                    return relax.op.take(data, relax.const(ind.astype(np.uint8), "uint8"),
                                         axis=0)
            return super()._impl_v13(bb, inputs, attr, params)

    return _Gather


EXTRA_CONVERTERS["Gather"] = _gather_converter

_SUB_BYTE = {"INT4": "INT8", "UINT4": "UINT8", "INT2": "INT8", "UINT2": "UINT8"}
_RANGE = {"INT4": (-8, 7), "UINT4": (0, 15), "INT2": (-2, 1), "UINT2": (0, 3)}
QOPERATOR_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "QGemm", "QLinearAdd",
                 "QLinearGlobalAveragePool", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
                 "QLinearLeakyRelu", "QLinearAveragePool", "QLinearSoftmax", "QLinearWhere",
                 "QLinearReduceMean")


@contextlib.contextmanager
def registered():
    """Make ``EXTRA_CONVERTERS`` visible to ``from_onnx`` for the duration of the block."""
    from tvm.relax.frontend.onnx import onnx_frontend as frontend

    original = frontend._get_convert_map

    def _patched():
        table = dict(original())
        table.update({op: make() for op, make in EXTRA_CONVERTERS.items()})
        return table

    frontend._get_convert_map = _patched
    try:
        yield
    finally:
        frontend._get_convert_map = original


class _Graph:
    """Small helper to emit nodes/initializers with fresh names."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        self.g = model.graph
        self.inits = {i.name: i for i in self.g.initializer}
        self._np = numpy_helper
        self._count = 0

    def value(self, name):
        init = self.inits.get(name)
        return None if init is None else self._np.to_array(init)

    def const(self, array, hint="c") -> str:
        self._count += 1
        name = f"tvmq_{hint}_{self._count}"
        tensor = self._np.from_array(np.asarray(array), name)
        self.g.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def fresh(self, hint) -> str:
        self._count += 1
        return f"tvmq_{hint}_{self._count}"


def _node(op, inputs, outputs, name, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=name, **attrs)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dq(g, x, s, z, name, axis=None):
    out = g.fresh("dq")
    kw = {} if axis is None else {"axis": axis}
    inputs = [x, s] + ([z] if z else [])
    return _node("DequantizeLinear", inputs, [out], f"{name}/dq_{x}"[:120], **kw), out


def _per_axis(g, scale_name) -> bool:
    v = g.value(scale_name)
    return v is not None and v.size > 1


def _float16_matmul_scales(g, i: list) -> list:
    """QLinearMatMul with float16 scales: ONNX forms ``M = s_a * s_b / s_y`` in float16
    arithmetic. Fold that exact float16 ``M`` into the weight scale (``s_a = s_y = 1``) so the
    integer requantization uses the same multiplier (exact in float32)."""
    sa, sb, sy = (g.value(i[k]) for k in (1, 4, 6))
    if any(v is None or v.dtype != np.float16 for v in (sa, sb, sy)):
        return i
    m16 = (sa.astype(np.float16) * sb.astype(np.float16)) / sy.astype(np.float16)
    one = g.const(np.float32(1.0), "one")
    return [i[0], one, i[2], i[3], g.const(m16.astype(np.float32), "m16"), i[5], one, i[7]]


def _qoperator_to_qdq(g, node) -> list | None:
    i, name, op = list(node.input), node.name or node.op_type, node.op_type
    a = _attrs(node)
    nodes = []
    if op == "QLinearMatMul":
        i = _float16_matmul_scales(g, i)
    if op in ("QLinearConv", "QLinearMatMul", "QGemm"):
        wi = 3
        x_dq, x = _dq(g, i[0], i[1], i[2], name)
        w_axis = 0 if op != "QLinearMatMul" else 1
        if op == "QGemm" and not a.get("transB", 0):
            w_axis = 1
        w_dq, w = _dq(g, i[wi], i[wi + 1], i[wi + 2], name,
                      w_axis if _per_axis(g, i[wi + 1]) else None)
        nodes += [x_dq, w_dq]
        bias = None
        bias_idx = 8 if op == "QLinearConv" else (6 if op == "QGemm" else None)
        if bias_idx is not None and len(i) > bias_idx and i[bias_idx]:
            sx, sw = g.value(i[1]), g.value(i[wi + 1])
            if sx is None or sw is None:
                return None
            s_b = (np.float32(sx.reshape(-1)[0]) * sw.astype(np.float32)).astype(np.float32)
            b_dq, bias = _dq(g, i[bias_idx], g.const(s_b.reshape(-1) if s_b.size > 1
                                                     else s_b.reshape(()), "bias_scale"),
                             None, name, 0 if s_b.size > 1 else None)
            nodes.append(b_dq)
        y = g.fresh("y")
        if op == "QLinearConv":
            nodes.append(_node("Conv", [x, w] + ([bias] if bias else []), [y], name, **a))
        elif op == "QLinearMatMul":
            nodes.append(_node("MatMul", [x, w], [y], name))
        else:
            nodes.append(_node("Gemm", [x, w] + ([bias] if bias else []), [y], name, **a))
        ys, yz = (i[6], i[7]) if op == "QLinearConv" else (i[6], i[7]) if op == "QLinearMatMul" \
            else (i[7], i[8] if len(i) > 8 else "")
        if op == "QGemm" and not ys:
            return None  # float output QGemm: the Gemm result is the output
        nodes.append(_node("QuantizeLinear", [y, ys] + ([yz] if yz else []), [node.output[0]],
                           f"{name}/q"))
        return nodes
    if op == "ConvInteger":
        zx, zw = (i[k] if len(i) > k else "" for k in (2, 3))
        ones = [np.ones_like(g.value(z), np.float32) if z and g.value(z) is not None
                else np.float32(1.0) for z in (zx, zw)]
        x_dq, x = _dq(g, i[0], g.const(ones[0], "one"), zx, name)
        w_dq, w = _dq(g, i[1], g.const(ones[1], "one"), zw, name,
                      0 if np.size(ones[1]) > 1 else None)
        y = g.fresh("y")
        return [x_dq, w_dq, _node("Conv", [x, w], [y], name, **a),
                _node("Cast", [y], [node.output[0]], f"{name}/cast", to=6)]
    if op == "QLinearAdd":
        a_dq, xa = _dq(g, i[0], i[1], i[2], name)
        b_dq, xb = _dq(g, i[3], i[4], i[5], name)
        y = g.fresh("y")
        return [a_dq, b_dq, _node("Add", [xa, xb], [y], name),
                _node("QuantizeLinear", [y, i[6]] + ([i[7]] if len(i) > 7 else []),
                      [node.output[0]], f"{name}/q")]
    if op in _QLINEAR_ELEMENTWISE or op in _QLINEAR_UNARY or op in _QLINEAR_OTHER:
        return _qlinear_via_float(g, node, i, a, name, op)
    if op == "QLinearGlobalAveragePool":
        if a.get("channels_last", 0):
            return None
        x_dq, x = _dq(g, i[0], i[1], i[2], name)
        y = g.fresh("y")
        return [x_dq, _node("GlobalAveragePool", [x], [y], name),
                _node("QuantizeLinear", [y, i[3], i[4]], [node.output[0]], f"{name}/q")]
    return None


#: com.microsoft binary ops (A, sA, zA, B, sB, zB, sC, zC) -> their float op
_QLINEAR_ELEMENTWISE = {"QLinearMul": "Mul"}
#: com.microsoft unary ops (X, sX, zX, sY, zY) -> their float op (attributes carried over)
_QLINEAR_UNARY = {"QLinearSigmoid": "Sigmoid", "QLinearLeakyRelu": "LeakyRelu",
                  "QLinearAveragePool": "AveragePool", "QLinearSoftmax": "Softmax",
                  "QLinearReduceMean": "ReduceMean"}
_QLINEAR_OTHER = ("QLinearConcat", "QLinearWhere")
#: attributes of the contrib op that the float op does not have
_DROPPED_ATTRS = {"QLinearSoftmax": ("opset",), "QLinearAveragePool": ("channels_last",)}


def _q(name, y, s, z, out):
    return _node("QuantizeLinear", [y, s] + ([z] if z else []), [out], f"{name}/q")


def _qlinear_via_float(g, node, i, a, name, op) -> list | None:
    """``DequantizeLinear`` of every quantized input -> the float op -> ``QuantizeLinear``
    (the integer passes lower the pattern where they can; onnxruntime rounds the float
    result the same way, so outputs agree within one step)."""
    arg = lambda k: i[k] if k < len(i) else ""  # noqa: E731 optional inputs
    y, nodes = g.fresh("y"), []
    if op in _QLINEAR_ELEMENTWISE:
        a_dq, xa = _dq(g, i[0], i[1], arg(2), name)
        b_dq, xb = _dq(g, i[3], i[4], arg(5), name)
        return [a_dq, b_dq, _node(_QLINEAR_ELEMENTWISE[op], [xa, xb], [y], name),
                _q(name, y, i[6], arg(7), node.output[0])]
    if op == "QLinearConcat":  # Y_scale, Y_zp, then (X, X_scale, X_zp) per input
        xs = []
        for k in range(2, len(i), 3):
            dq, x = _dq(g, i[k], i[k + 1], i[k + 2], name)
            nodes.append(dq)
            xs.append(x)
        return nodes + [_node("Concat", xs, [y], name, axis=a.get("axis", 0)),
                        _q(name, y, i[0], i[1], node.output[0])]
    if op == "QLinearWhere":  # cond, X, sX, zX, Y, sY, zY, sZ, zZ
        x_dq, x = _dq(g, i[1], i[2], i[3], name)
        y_dq, yv = _dq(g, i[4], i[5], i[6], name)
        return [x_dq, y_dq, _node("Where", [i[0], x, yv], [y], name),
                _q(name, y, i[7], arg(8), node.output[0])]
    if a.get("channels_last", 0):
        return None  # NHWC pooling: not in ONNX's float op
    attrs = {k: v for k, v in a.items() if k not in _DROPPED_ATTRS.get(op, ())}
    x_dq, x = _dq(g, i[0], i[1], arg(2), name)
    inputs = [x]
    if op == "QLinearReduceMean" and "axes" in attrs and _opset(g.model) >= 18:
        inputs.append(g.const(np.asarray(attrs.pop("axes"), np.int64), "axes"))
    return [x_dq, _node(_QLINEAR_UNARY[op], inputs, [y], name, **attrs),
            _q(name, y, i[3], arg(4), node.output[0])]


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
               default=1)


def _widen_sub_byte(model) -> None:
    from onnx import TensorProto, numpy_helper

    names = {getattr(TensorProto, k): getattr(TensorProto, v) for k, v in _SUB_BYTE.items()
             if hasattr(TensorProto, k)}
    for idx, init in enumerate(list(model.graph.initializer)):
        if init.data_type in names:
            arr = numpy_helper.to_array(init).astype(np.int64)
            dtype = np.int8 if names[init.data_type] == TensorProto.INT8 else np.uint8
            model.graph.initializer[idx].CopyFrom(numpy_helper.from_array(arr.astype(dtype),
                                                                          init.name))
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        t = vi.type.tensor_type
        if t.elem_type in names:
            t.elem_type = names[t.elem_type]


def _sub_byte_quantize_outputs(model) -> dict[str, tuple[int, int]]:
    """QuantizeLinear outputs whose type (zero point or output_dtype) is sub-byte."""
    from onnx import TensorProto

    code = {getattr(TensorProto, k): k for k in _SUB_BYTE if hasattr(TensorProto, k)}
    types = {i.name: i.data_type for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        t = types.get(node.input[2]) if len(node.input) > 2 else None
        t = _attrs(node).get("output_dtype", t)
        if t in code:
            found[node.output[0]] = _RANGE[code[t]]
    return found


def _clip_sub_byte(g, ranges) -> None:
    if not ranges:
        return
    new_nodes = []
    for node in g.g.node:
        out = node.output[0] if node.output else None
        if node.op_type == "QuantizeLinear" and out in ranges:
            wide = g.fresh("q8")
            node.output[0] = wide
            a = [x for x in node.attribute if x.name != "output_dtype"]
            del node.attribute[:]
            node.attribute.extend(a)
            lo, hi = ranges[out]
            zp = g.value(node.input[2]) if len(node.input) > 2 else None
            dtype = zp.dtype if zp is not None else np.int8
            new_nodes += [node, _node("Clip", [wide, g.const(np.array(lo, dtype), "lo"),
                                               g.const(np.array(hi, dtype), "hi")], [out],
                                      f"{node.name}/clip")]
        else:
            new_nodes.append(node)
    del g.g.node[:]
    g.g.node.extend(new_nodes)


def _expand_blocked(g, node) -> list | None:
    a = _attrs(node)
    block = a.get("block_size", 0)
    if not block or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
        return None
    x_shape = None
    xv = g.value(node.input[0])
    s = g.value(node.input[1])
    z = g.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if s is None:
        return None
    axis = a.get("axis", 1) % s.ndim
    shape = list(s.shape)
    shape[axis] *= block
    full = lambda p: np.repeat(p, block, axis=axis)  # noqa: E731
    s_full, z_full = full(s), full(z) if z is not None else np.zeros(shape, np.int8)
    if xv is not None:
        x_shape = xv.shape
    else:
        x_shape = _static_shape(g.model, node.input[0])
    if x_shape is None:
        return None
    sl = tuple(slice(0, d) for d in x_shape)
    s_full, z_full = s_full[sl], z_full[sl]
    name = node.name or node.op_type
    t = [g.fresh("b") for _ in range(4)]
    if node.op_type == "DequantizeLinear":
        return [_node("Cast", [node.input[0]], [t[0]], f"{name}/c", to=1),
                _node("Sub", [t[0], g.const(z_full.astype(np.float32), "z")], [t[1]], f"{name}/s"),
                _node("Mul", [t[1], g.const(s_full.astype(np.float32), "s")], [node.output[0]],
                      f"{name}/m")]
    from onnx import helper

    from tvmq.qref import dtype_range

    zname = np.dtype(z_full.dtype).name if z is not None else "int8"
    lo, hi = dtype_range(zname)
    zt = np.uint8 if zname.startswith("u") else np.int8
    return [_node("Div", [node.input[0], g.const(s_full.astype(np.float32), "s")], [t[0]],
                  f"{name}/d"),
            _node("Round", [t[0]], [t[1]], f"{name}/r"),
            _node("Add", [t[1], g.const(z_full.astype(np.float32), "z")], [t[2]], f"{name}/a"),
            _node("Clip", [t[2], g.const(np.float32(lo), "lo"), g.const(np.float32(hi), "hi")],
                  [t[3]], f"{name}/cl"),
            _node("Cast", [t[3]], [node.output[0]], f"{name}/c",
                  to=helper.np_dtype_to_tensor_dtype(np.dtype(zt)))]


def _static_shape(model, name):
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if vi.name == name:
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            return tuple(dims) if all(d > 0 for d in dims) else None
    return None


def _rewrite_nodes(g, fn) -> None:
    out = []
    for node in g.g.node:
        new = fn(g, node)
        if new is None:
            out.append(node)
        else:
            out.extend(new)
    del g.g.node[:]
    g.g.node.extend(out)


def canonicalize(model):
    """Rewrite ``model`` (a copy) so Relax's ONNX frontend and tvmq's passes accept it.

    Invalid quantization parameters raise :class:`~tvmq.errors.QuantizationParamError`
    first (:func:`tvmq.onnx_checks.check_quantization_params`).
    """
    import onnx

    from tvmq.onnx_checks import check_quantization_params

    check_quantization_params(model)

    model = onnx.ModelProto.FromString(model.SerializeToString())
    _drop_initializer_inputs(model)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version < 13:
            op.version = 13
    g = _Graph(model)
    _rewrite_nodes(g, _qoperator_to_qdq)
    _rewrite_nodes(g, _expand_blocked)
    ranges = _sub_byte_quantize_outputs(model)
    _widen_sub_byte(model)
    g = _Graph(model)
    _clip_sub_byte(g, ranges)
    return model


def _drop_initializer_inputs(model) -> None:
    """Graph inputs that are also initializers become plain constants.

    Older exporters, torch's ``keep_initializers_as_inputs`` and both of Brevitas's export
    paths list every weight as a graph input too (ONNX: an input with a default value). TVM
    would make each a second function parameter of the same name; a compiled model's
    weights are constants, as onnxruntime uses them when the input is not fed.
    """
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)
