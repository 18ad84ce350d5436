"""Paired timing of two local callables (tuned vs default builds, any A/B on this machine).

Each round times ``a`` and ``b`` back to back, each sample averaging enough calls to last
``sample_s`` after one untimed call; the order alternates every round (the second of two
back-to-back runs measured ~2% faster: identical ResNet-20 builds, "b" faster in 85% of
rounds). The per-round ratio cancels the machine's drift (about +-25% between runs here).
"""
from __future__ import annotations

import math
import time


def paired_ms(run_a, run_b, rounds: int, sample_s: float = 0.02,
              min_inner: int = 3) -> tuple[list[float], list[float]]:
    """Per-round ms per call of ``run_a`` and ``run_b`` (same length, paired by index)."""
    runs = (run_a, run_b)
    for run in runs * 2:
        run()
    t0 = time.perf_counter()
    for run in runs:
        run()
    one = max((time.perf_counter() - t0) / 2, 1e-6)
    inner = max(min_inner, math.ceil(sample_s / one))
    out: tuple[list[float], list[float]] = ([], [])
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            runs[i]()
            t0 = time.perf_counter()
            for _ in range(inner):
                runs[i]()
            out[i].append((time.perf_counter() - t0) / inner * 1e3)
    return out
