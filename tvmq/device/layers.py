"""Per-layer latency: time each compiled PrimFunc the VM calls, on the device.

TVM 0.27 has no Relax VM profiler (``VirtualMachine.profile`` is gone, ``set_instrument``
needs a function living on the device, and a Python callback cannot cross RPC). What works, on
the host and over RPC, for host and cross artifacts alike:

1. the executable's bytecode (``as_text``) gives the PrimFuncs ``main`` calls, in order;
2. each PrimFunc is reachable with ``get_function(name, query_imports=True)``; called with no
   arguments it answers with its full signature (shapes and dtypes), which we parse;
3. it is timed on the device with random tensors of those shapes. Locally the library module's
   ``time_evaluator`` does it; over RPC the root module's ``time_evaluator`` cannot see the
   library import, so each layer is timed as a loop of remote calls minus the measured cost of
   an empty remote call (``rpc-call-loop``): good for layers well above ~0.1 ms.
"""
from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

_CALL = re.compile(r"^\s*call\s+(\S+)\s+in:")
_TENSOR = re.compile(r"(\w+): Tensor\(\[([^\]]*)\], (\w+)\)")
_SIG = re.compile(r"`(\w+)\((.*)\)`", re.S)


def called_primfuncs(bytecode: str) -> list[str]:
    """Names of the non-builtin functions ``@main`` calls, in program order."""
    names, in_main = [], False
    for line in bytecode.splitlines():
        if line.startswith("@"):
            in_main = line.startswith("@main:")
            continue
        match = _CALL.match(line)
        if in_main and match and not match.group(1).startswith("vm."):
            names.append(match.group(1))
    return names


def parse_signature(message: str) -> list[tuple[tuple[int, ...], str]] | None:
    """Shapes/dtypes from a PrimFunc's argument-count error; None if a parameter is not a
    static tensor."""
    match = _SIG.search(message)
    if not match:
        return None
    params = [p for p in re.split(r",\s*(?=\w+:)", match.group(2)) if p.strip()]
    out = []
    for param in params:
        tensor = _TENSOR.match(param.strip())
        if not tensor:
            return None
        dims = re.findall(r"T\.int64\((\d+)\)|\b(\d+)\b", tensor.group(2))
        out.append((tuple(int(a or b) for a, b in dims), tensor.group(3)))
    return out


def _signature(func) -> list[tuple[tuple[int, ...], str]] | None:
    try:
        func()
    except Exception as err:  # the argument check's message carries the signature
        return parse_signature(str(err))
    return None


def _random(shape, dtype, rng) -> np.ndarray:
    if np.issubdtype(np.dtype(dtype), np.integer):
        return rng.integers(-4, 5, size=shape).astype(dtype) if "u" not in dtype else \
            rng.integers(0, 9, size=shape).astype(dtype)
    return rng.uniform(-1, 1, size=shape).astype(dtype)


def _loop_ms(call, args, number: int, repeat: int) -> list[float]:
    call(*args)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            call(*args)
        samples.append((time.perf_counter() - t0) * 1e3 / number)
    return samples


def profile_layers(session, root_module, dev, number: int = 10, repeat: int = 5,
                   local_library=None) -> tuple[list[dict[str, Any]], str]:
    """Time every PrimFunc ``main`` calls; returns (rows, method)."""
    from tvmq._tvm import tvm

    rng = np.random.default_rng(0)
    overhead = 0.0
    if local_library is None:
        empty = session.get_function("ffi.ModuleGetKind")
        overhead = float(np.median(_loop_ms(empty, [root_module], number * 4, repeat)))
    rows = []
    for name in called_primfuncs(root_module["as_text"]()):
        row: dict[str, Any] = {"name": name, "median_ms": None}
        func = root_module.get_function(name, query_imports=True)
        sig = _signature(func)
        if sig is None:
            row["skipped"] = "signature is not static tensors"
            rows.append(row)
            continue
        row["args"] = " ".join(f"{'x'.join(map(str, s)) or 'scalar'}:{d}" for s, d in sig)
        args = [tvm.runtime.tensor(_random(s, d, rng), dev) for s, d in sig]
        if local_library is not None:
            res = local_library.time_evaluator(name, dev, number=number, repeat=repeat)(*args)
            samples = [r * 1e3 for r in res.results]
        else:
            samples = [max(0.0, s - overhead) for s in _loop_ms(func, args, number, repeat)]
        row["median_ms"] = float(np.median(samples))
        rows.append(row)
    total = sum(r["median_ms"] or 0.0 for r in rows) or 1.0
    for r in rows:
        r["share"] = None if r["median_ms"] is None else r["median_ms"] / total
    method = "library time_evaluator" if local_library is not None else \
        f"rpc-call-loop (empty-call overhead {overhead:.4f} ms subtracted)"
    return rows, method
