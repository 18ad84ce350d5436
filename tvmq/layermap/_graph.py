"""Relax dataflow of compute layers, the pairing of layers across compile stages, and the
PrimFunc that runs each layer (see :mod:`tvmq.layermap`)."""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Callable

from tvmq._tvm import Constant, TensorLoad, loaded_buffer, relax, s_tir, tir

#: Relax ops that are layers of the map
LAYER_OPS = {"relax.nn.conv2d": "conv2d", "relax.matmul": "matmul"}


@dataclasses.dataclass
class Node:
    """A compute binding of a Relax ``main`` and the compute nodes upstream of it."""

    index: int
    var: Any
    value: Any
    preds: frozenset
    macs: int


# -- Relax dataflow ------------------------------------------------------------------------
def bindings(func):
    """The bindings of a Relax function's body, in program order."""
    for block in getattr(func.body, "blocks", ()):
        yield from block.bindings


def _vars(expr) -> list:
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in _vars(f)]
    if isinstance(expr, relax.TupleGetItem):
        return _vars(expr.tuple_value)
    if isinstance(expr, relax.Call):
        return [v for a in expr.args for v in _vars(a)]
    return []


def dataflow(func, macs_of: Callable) -> tuple[list[Node], dict]:
    """Compute nodes of ``func`` in program order, and every binding (var -> value).

    ``macs_of(var, value)`` is the MAC count of a compute binding, None for any other.
    """
    reach: dict = {}  # var -> compute nodes it depends on, up to the nearest ones
    nodes: list[Node] = []
    bound: dict = {}
    for binding in bindings(func):
        var, value = binding.var, binding.value
        bound[var] = value
        up = frozenset().union(*(reach.get(v, frozenset()) for v in _vars(value)))
        macs = macs_of(var, value)
        if macs is None:
            reach[var] = up
        else:
            nodes.append(Node(len(nodes), var, value, up, macs))
            reach[var] = frozenset([len(nodes) - 1])
    return nodes, bound


def relax_macs(var, value) -> int | None:
    """MACs of a compute layer binding (:data:`LAYER_OPS`), None for any other binding."""
    from tvmq.report import _macs, _shape

    if not isinstance(value, relax.Call) or getattr(value.op, "name", None) not in LAYER_OPS:
        return None
    return _macs(LAYER_OPS[value.op.name], value, _shape(var))


def match(src: list[Node], dst: list[Node], fits: Callable) -> dict[int, int]:
    """Pair ``dst`` nodes with ``src`` nodes: ``{dst index: src index}``.

    Visiting ``dst`` in program order, a candidate is an unpaired ``src`` node that ``fits``;
    one whose upstream nodes are paired with the ``dst`` node's upstream wins over one whose
    upstream is merely all paired (independent branches may be reordered); among those, the
    closest in MACs, then the first in program order.
    """
    pairs: dict[int, int] = {}
    used: set[int] = set()
    for d in dst:
        want = {pairs.get(p, -1) for p in d.preds}
        cands = [s for s in src if s.index not in used and fits(s, d)]
        exact = [s for s in cands if set(s.preds) == want]
        ready = [s for s in cands if s.preds <= used]
        best = exact or ready
        if best:
            pick = min(best, key=lambda s: (abs(math.log((d.macs + 1) / (s.macs + 1))),
                                            s.index))
            pairs[d.index] = pick.index
            used.add(pick.index)
    return pairs


def _signature(node: Node) -> tuple:
    from tvmq.report import _shape

    return (node.value.op.name, tuple(_shape(node.value.args[1]) or ()),
            tuple(_shape(node.var) or ()))


def same_layer(a: Node, b: Node) -> bool:
    """Same op, weight shape and output shape (the passes rewrite values, not these)."""
    return _signature(a) == _signature(b)


def kernel_fits(layer: Node, kernel: Node) -> bool:
    """Whether a PrimFunc's MACs can be the layer's: blocked kernels pad channels to their
    block (1 input channel -> 4, 10 outputs -> 16), so up to a few times more."""
    return layer.macs <= kernel.macs <= max(64 * layer.macs, 1) or layer.macs == 0


# -- PrimFuncs -----------------------------------------------------------------------------
def _reads(expr, depth: int = 0) -> bool:
    """Whether a TIR expression loads from a buffer (through casts, decode arithmetic)."""
    if isinstance(expr, TensorLoad):
        return True
    if depth > 8:
        return False
    kids = [getattr(expr, k, None) for k in ("a", "b", "value")]
    kids += list(getattr(expr, "args", None) or [])
    return any(k is not None and _reads(k, depth + 1) for k in kids)


def _is_mac(block) -> bool:
    """``acc[...] = acc[...] + f(x[...]) * g(w[...])`` over a reduction: a layer's block."""
    body = block.body
    if not any(int(iv.iter_type) == 2 for iv in block.iter_vars):  # CommReduce
        return False
    if not isinstance(body, tir.BufferStore) or not isinstance(body.value, tir.Add):
        return False
    for acc, prod in ((body.value.a, body.value.b), (body.value.b, body.value.a)):
        if (isinstance(acc, TensorLoad) and loaded_buffer(acc).same_as(body.buffer)
                and isinstance(prod, tir.Mul)):
            return _reads(prod.a) and _reads(prod.b)
    return False


def primfunc_macs(func) -> int:
    """Multiply-accumulates of a PrimFunc's MAC reduction blocks (0 when it has none)."""
    try:
        sch = s_tir().Schedule(func)
        blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    except Exception:  # noqa: BLE001 - no root block (not a TE/TVMScript PrimFunc)
        return 0
    return sum(_block_macs(b) for b in blocks if _is_mac(b))


#: block annotation: the multiply-accumulates of the layer a kernel computes, where its own
#: loop nest does them differently (:mod:`tvmq.schedules.lut_gemv`: table lookups)
LAYER_MACS_ATTR = "tvmq.layer_macs"


def _block_macs(block) -> int:
    ann = block.annotations or {}
    if LAYER_MACS_ATTR in ann:
        return int(ann[LAYER_MACS_ATTR])
    return math.prod(int(iv.dom.extent) for iv in block.iter_vars)


def call_tir_macs(mod) -> Callable:
    """``macs_of`` for :func:`dataflow` over a legalized ``main``: a ``call_tir`` of a PrimFunc
    with MAC blocks is a compute node."""
    cache: dict[str, int] = {}

    def macs_of(var, value) -> int | None:
        if not (isinstance(value, relax.Call) and getattr(value.op, "name", "") ==
                "relax.call_tir"):
            return None
        name = value.args[0].name_hint
        if name not in cache:
            cache[name] = primfunc_macs(mod[name])
        return cache[name] or None

    return macs_of


def primfuncs(legalized, lowered_nodes: list[Node]) -> dict[int, tuple[str, int]]:
    """``{lowered node index: (PrimFunc name, which call of it in main)}``."""
    nodes, _ = dataflow(legalized["main"], call_tir_macs(legalized))
    calls = collections.Counter()
    occurrence = {}
    for binding in bindings(legalized["main"]):
        value = binding.value
        if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir":
            name = value.args[0].name_hint
            occurrence[binding.var] = (name, calls[name])
            calls[name] += 1
    pairs = match(lowered_nodes, nodes, kernel_fits)
    return {pairs[n.index]: occurrence[n.var] for n in nodes if n.index in pairs}


# -- constant ancestry ---------------------------------------------------------------------
def leaves(expr, bound, inputs, depth: int = 0, memo=None) -> list | None:
    """Constants and parameters ``expr`` is computed from alone; None when it depends on a
    user input (an activation), or on a chain too long to be a weight's decoding."""
    memo = {} if memo is None else memo
    if isinstance(expr, Constant):
        return [expr]
    if isinstance(expr, relax.Var):
        if expr not in bound:
            return None if expr in inputs else [expr]
        if expr not in memo:
            memo[expr] = None if depth > 32 else \
                leaves(bound[expr], bound, inputs, depth + 1, memo)
        return memo[expr]
    if isinstance(expr, relax.TupleGetItem):
        return leaves(expr.tuple_value, bound, inputs, depth, memo)
    kids = expr.fields if isinstance(expr, relax.Tuple) else \
        expr.args if isinstance(expr, relax.Call) else []
    out: list = []
    for kid in kids:
        sub = leaves(kid, bound, inputs, depth, memo)
        if sub is None:
            return None
        out += sub
    return out


def main_nodes(mod) -> tuple[list[Node], dict, set]:
    """Compute nodes and bindings of ``mod["main"]``, and its user inputs (not weights)."""
    main = mod["main"]
    n_in = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs \
        else len(main.params)
    nodes, bound = dataflow(main, relax_macs)
    return nodes, bound, set(main.params[:n_in])
