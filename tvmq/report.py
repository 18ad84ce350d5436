"""Per-layer report of a Relax module: op, shapes, MACs and how the layer runs."""
from __future__ import annotations

import math
from typing import Any

from tvmq._tvm import relax, struct_dtype, struct_shape

# Ops listed in the report; data movement (reshape, permute, ...) is left out.
_LAYER_OPS = {
    "relax.nn.conv2d": "conv2d", "relax.matmul": "matmul", "relax.linear": "dense",
    "relax.nn.max_pool2d": "max_pool2d", "relax.nn.avg_pool2d": "avg_pool2d",
    "relax.nn.adaptive_avg_pool2d": "global_avg_pool", "relax.mean": "mean",
    "relax.add": "add", "relax.concat": "concat", "relax.nn.relu": "relu",
    "relax.nn.softmax": "softmax", "relax.quantize": "quantize", "relax.dequantize": "dequantize",
    "relax.take": "lookup",  # LowerIntegerLUT's activation tables (or a model's own gather)
}


def _shape(expr) -> list[int] | None:
    try:
        return list(struct_shape(expr))
    except (TypeError, AttributeError, ValueError):
        return None


def _macs(op: str, call, out_shape) -> int:
    if out_shape is None:
        return 0
    if op == "conv2d":
        w = _shape(call.args[1]) or [0, 1, 1, 1]
        return math.prod(out_shape) * math.prod(w[1:])
    if op in ("matmul", "dense"):
        a = _shape(call.args[0]) or [0]
        return math.prod(out_shape) * a[-1]
    return 0


def layer_report(mod) -> list[dict[str, Any]]:
    """One entry per compute layer of ``mod["main"]``, in program order."""
    layers: list[dict[str, Any]] = []
    bound: dict = {}
    func = mod["main"]

    class _Visitor(relax.PyExprVisitor):
        def visit_var_binding_(self, binding):
            entry = describe_binding(binding.var, binding.value, bound, mod)
            if entry is not None:
                layers.append(entry)
            bound[binding.var] = binding.value
            super().visit_var_binding_(binding)

    relax.expr_functor.visitor(_Visitor)().visit_expr(func)
    return layers


def describe_binding(var, value, bound, mod=None) -> dict[str, Any] | None:
    """The report entry of one binding ``var = value`` (``bound``: the bindings before it),
    or None when it is no layer (data movement, requantization arithmetic)."""
    from tvm.ir import Op

    if not (isinstance(value, relax.Call) and isinstance(value.op, Op)):
        return None
    op = _LAYER_OPS.get(value.op.name)
    if op is None or _dtype(var) in ("int64", "bool"):
        # int64/bool ops are the fixed-point requantization arithmetic, not layers
        return None
    out = _shape(var)
    entry = {"name": var.name, "op": op, "out_shape": out, "dtype": _dtype(var),
             "macs": _macs(op, value, out), "precision": "float32", "integer": False}
    entry.update(_integer_info(op, value, bound, mod))
    return entry


def _dtype(expr) -> str | None:
    try:
        return struct_dtype(expr)
    except (TypeError, AttributeError):
        return None


def format_layers(layers: list[dict[str, Any]]) -> str:
    """A fixed-width table of the per-layer map (``meta.json``'s ``layers``), by layer name."""
    width = min(max([len(str(ly.get("name", ""))) for ly in layers] + [5]) + 2, 42)
    rows = [f"{'layer':<{width}}{'op':<9}{'out shape':<16}{'precision':<10}{'W':>3}{'A':>4}"
            f"{'weight B':>10}{'MMACs':>9}{'GBOPs':>9}  note"]
    for layer in layers:
        shape = "x".join(map(str, layer.get("out_shape") or []))
        w, a = ("" if layer.get(k) is None else layer[k] for k in ("weight_bits", "act_bits"))
        rows.append(f"{str(layer.get('name', ''))[:width - 1]:<{width}}{layer.get('op', ''):<9}"
                    f"{shape:<16}{layer.get('precision') or '':<10}{w:>3}{a:>4}"
                    f"{layer.get('weight_bytes', ''):>10}{(layer.get('macs') or 0) / 1e6:>9.2f}"
                    f"{(layer.get('bops') or 0) / 1e9:>9.3f}  {_note(layer)}")
    return "\n".join(rows)


def _note(layer: dict[str, Any]) -> str:
    book = layer.get("codebook")
    if book:
        return f"codebook K={book['k']} ({book['index_bits']}-bit indices)"
    return layer.get("why_not") or ""


def format_codebooks(layers: list[dict[str, Any]]) -> str:
    """The tables of the codebook layers: one line each (``tvmq info``)."""
    lines = []
    for layer in layers:
        book = layer.get("codebook")
        if book:
            vals = book["table"]
            shown = " ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals[:16])
            more = f" ... ({len(vals)} entries)" if len(vals) > 16 else ""
            lines.append(f"codebook {layer.get('name')}: K={book['k']} {book['table_dtype']} "
                         f"[{shown}{more}], {layer.get('weight_bytes')} B stored")
    return "\n".join(lines)


def format_float_ops(ops: list[dict[str, Any]]) -> str:
    """One line per reason the ops of ``meta.json``'s ``ops`` that run in float do so."""
    why: dict[str, list[str]] = {}
    for op in ops:
        if op.get("op") in ("conv2d", "matmul", "dense"):
            continue  # in the layer table
        if not op.get("integer") and op.get("why_not"):
            why.setdefault(op["why_not"], []).append(op["op"])
    lines = []
    for reason, names in why.items():
        counts = ", ".join(f"{names.count(n)}x {n}" for n in dict.fromkeys(names))
        lines.append(f"float ops  {counts}: {reason}")
    return "\n".join(lines)


_BITS = {"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "bool": 1}


def _op_name(expr) -> str | None:
    op = getattr(expr, "op", None)
    return getattr(op, "name", None) if isinstance(expr, relax.Call) else None


def _packed_bits(weight, bound, mod=None) -> int | None:
    """Bits per stored value of an encoded weight (the mark ``PackSubByteWeights`` leaves,
    :func:`tvmq.ir.encoded_bits`), else None."""
    from tvmq.ir import encoded_bits

    return None if mod is None else encoded_bits(mod, weight, bound.get)


def _integer_info(op: str, call, bound, mod=None) -> dict[str, Any]:
    """``integer``/``precision``/``bits``/``why_not`` of one layer (after the quantize phase)."""
    args = [f for a in call.args for f in (a.fields if isinstance(a, relax.Tuple) else [a])]
    dtypes = [_dtype(a) for a in args if isinstance(a, relax.Expr)]  # concat: a tuple
    tensor_dtypes = [d for d in dtypes if d is not None]
    if op in ("quantize", "dequantize"):
        return {"bits": None, "why_not": None}
    if op == "lookup" and _dtype(call) in _BITS:  # a table of integers: its output's width
        bits = _BITS[_dtype(call)]
        return {"integer": True, "precision": f"int{bits}", "bits": bits, "why_not": None}
    if tensor_dtypes and all(d in _BITS for d in tensor_dtypes):
        bits = max(_BITS[d] for d in tensor_dtypes if d != "bool")
        info = {"integer": True, "precision": f"int{bits}", "bits": bits, "why_not": None}
        if op in ("conv2d", "matmul", "dense") and len(call.args) > 1:
            wbits = _packed_bits(call.args[1], bound, mod)
            info["weight_bits"] = wbits or _BITS.get(_dtype(call.args[1]) or "", None)
        return info
    from tvmq.passes._qcommon import SKIPPED

    quantized = any(_op_name(bound.get(a)) == "relax.dequantize" for a in call.args
                    if isinstance(a, relax.Var))
    why = SKIPPED.get((_op_name(call), tuple(_shape(call) or ())))
    if why is None:
        why = ("no integer lowering pattern matched (an operand is not a dequantized integer "
               "tensor); it runs in float" if quantized
               else "inputs are float (the model does not quantize this layer)")
    return {"bits": 32, "why_not": why}
