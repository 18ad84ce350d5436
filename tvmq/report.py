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
    func = mod["main"]

    class _Visitor(relax.PyExprVisitor):
        def visit_var_binding_(self, binding):
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm_ir_op):
                op = _LAYER_OPS.get(value.op.name)
                if op is not None:
                    out = _shape(binding.var)
                    layers.append({
                        "name": binding.var.name, "op": op, "out_shape": out,
                        "dtype": _dtype(binding.var), "macs": _macs(op, value, out),
                        "precision": "float32", "integer": False,
                    })
            super().visit_var_binding_(binding)

    from tvm.ir import Op as tvm_ir_op

    relax.expr_functor.visitor(_Visitor)().visit_expr(func)
    return layers


def _dtype(expr) -> str | None:
    try:
        return struct_dtype(expr)
    except (TypeError, AttributeError):
        return None


def format_layers(layers: list[dict[str, Any]]) -> str:
    """A fixed-width table of the per-layer report."""
    rows = [f"{'layer':<18}{'op':<16}{'out shape':<22}{'precision':<11}{'MMACs':>9}  note"]
    for layer in layers:
        shape = "x".join(map(str, layer.get("out_shape") or []))
        rows.append(f"{layer['name'][:17]:<18}{layer['op']:<16}{shape:<22}"
                    f"{layer.get('precision', ''):<11}{layer.get('macs', 0) / 1e6:>9.2f}  "
                    f"{layer.get('reason', '')}")
    return "\n".join(rows)
