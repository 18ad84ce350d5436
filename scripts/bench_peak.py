"""int8 dot-product peak of this machine, as tvmq's own tensorized kernels reach it.

Compute-bound kernels (operands in L1/L2, little output) built with tvmq's default x86 schedule
for this host's CPU (``vpdpbusd``, or the AVX2 kernels) run many times; the best GMAC/s is the
ceiling ``scripts/bench_kernels.py`` reports kernels against. Shapes: a 3x3 conv 64->64 at
28x28 (29 M MACs, 37 KB of weights) and a dense 96x1024 @ 1024x128.

Usage: python scripts/bench_peak.py [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from tvmq._tvm import tensor, tvm
from tvmq.schedules.x86 import build_conv_kernel, build_dense_kernel


def _time(lib, args, repeat: int, number: int) -> float:
    ev = lib.mod.time_evaluator(lib.mod.entry_name, tvm.cpu(), number=number, repeat=repeat)
    return float(np.median(ev(*args).results))


def _conv(target, repeat):
    c, h = 64, 28
    lib, wp, corr = build_conv_kernel((1, c, h, h), np.ones((c, c, 3, 3), "int8"), "uint8",
                                      target, padding=(1, 1, 1, 1))
    args = [tensor(np.ones((1, c, h, h), "uint8")), tensor(wp),
            tensor(np.zeros((1, c, h, h), "int32"))]
    return lib, c * c * 9 * h * h, _time(lib, args, repeat, 50)


def _dense(target, repeat):
    m, k, n = 96, 1024, 128
    lib, wp, _ = build_dense_kernel(m, np.ones((k, n), "int8"), "uint8", target)
    args = [tensor(np.ones((m, k), "uint8")), tensor(wp), tensor(np.zeros((m, n), "int32"))]
    return lib, m * k * n, _time(lib, args, repeat, 200)


def measure(threads: int, repeat: int = 9) -> dict:
    """Best GMAC/s over the peak kernels on ``threads`` cores (this host's CPU target: the
    VNNI kernels where it has AVX-512 VNNI, the AVX2 ones elsewhere)."""
    from tvmq.boards import get_board, host_cpu_name
    from tvmq.schedules.strategy import strategy_for

    host = dict(get_board("host").target)
    target = tvm.target.Target({**host, "num-cores": threads})
    res = {}
    for name, fn in (("conv3x3_64_28", _conv), ("dense_96x1024x128", _dense)):
        lib, macs, sec = fn(target, repeat)
        asm = lib.mod.inspect_source("asm")
        res[name] = {"seconds": sec, "gmacs": macs / sec / 1e9,
                     "dot_instructions_in_asm": {i: asm.count(i) for i in (
                         "vpdpbusd", "vpmaddubsw", "vpmaddwd")}}
    best = max(r["gmacs"] for r in res.values())
    return {"threads": threads, "cpu": host_cpu_name(), "mcpu": host.get("mcpu"),
            "strategy": strategy_for(target).name, "gmacs": best,
            "gmacs_per_core": best / threads, "kernels": res}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the result there")
    args = ap.parse_args(argv)
    res = {"single": measure(1), "all": measure(args.threads)}
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
