"""Compile-time choice between the direct and the activation-table (LUT) batch-1 GEMV.

Which of the two kernels of a batch-1 codebook dense layer is faster depends on the CPU,
the layer shape and the codebook size (:mod:`tvmq.schedules.lut_gemv`: the LUT kernel's
work grows with the number of distinct weight values, the direct kernel's does not). The
choice is made at compile time and is deterministic: no timing inside :func:`tvmq.compile`.
It reads a table measured once per CPU by ``scripts/bench_lut_gemv.py --write-table`` and
shipped as ``schedules/host/<mcpu>/lut_gemv.json``::

    {"mcpu": "znver4", "cpu": "...", "entries": [
        {"in_features": 512, "out_features": 1000, "k": 4, "form": "lut",
         "direct_ms": 0.017, "lut_ms": 0.012}, ...]}

A shape (``in_features``, ``out_features``, ``K``) takes the LUT kernel only where the table
says so for the target's ``mcpu`` (measured at least 10% faster, :data:`LUT_MARGIN`); every
other shape, and every CPU without a table, takes the direct kernel. ``mode``
(:class:`tvmq.pipeline.PipelineOptions` ``gemv_form``) forces either form, e.g. for tests.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

DIRECT, LUT, AUTO = "direct", "lut", "auto"
MODES = (AUTO, DIRECT, LUT)
TABLE_FILE = "lut_gemv.json"
TABLE_ROOT = Path(__file__).parent / "host"
#: the LUT form is entered only where its median is below this fraction of the direct
#: kernel's: timings on a shared 2-core machine vary by about +-25% between runs, and a
#: tie should keep the kernel every other layer uses
LUT_MARGIN = 0.9


def table_path(mcpu: str) -> Path:
    """Where the selection table of CPU ``mcpu`` is shipped."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (mcpu or "generic"))
    return TABLE_ROOT / safe / TABLE_FILE


@functools.lru_cache(maxsize=None)
def _load(path: str) -> dict:
    """``{(in_features, out_features, k): form}`` from a table file ({} when absent)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {(int(e["in_features"]), int(e["out_features"]), int(e["k"])): str(e["form"])
            for e in data.get("entries", []) if e.get("form") in (DIRECT, LUT)}


def choose_form(mcpu: str, in_features: int, out_features: int, k: int,
                mode: str = AUTO, path: str | Path | None = None) -> str:
    """``"lut"`` or ``"direct"`` for a batch-1 codebook dense layer.

    Parameters
    ----------
    mcpu : str
        The target's ``mcpu`` (``""``: none; then only a forced mode picks the LUT).
    in_features, out_features : int
        The layer's reduction length and output channels.
    k : int
        Codebook entries (``2 ** bits``).
    mode : {"auto", "direct", "lut"}
        ``"auto"``: the shipped table's measured winner, ``"direct"`` when not measured;
        the other two force that form.
    path : path, optional
        A table file instead of the shipped one (tests, a fresh measurement).
    """
    if mode not in MODES:
        raise ValueError(f"gemv form {mode!r} is not one of {MODES}: pass e.g. "
                         f"PipelineOptions(gemv_form='auto')")
    if mode != AUTO:
        return mode
    table = _load(str(path if path is not None else table_path(mcpu)))
    return table.get((int(in_features), int(out_features), int(k)), DIRECT)


def table_entries(rows: list[dict]) -> list[dict]:
    """Selection-table entries of benchmark rows (``in_features``, ``out_features``, ``k``,
    ``direct_ms``, ``lut_ms``, optionally ``lut_over_direct``: the median of paired ratios,
    else the ratio of the medians): the LUT form where that ratio is below
    :data:`LUT_MARGIN`."""
    out = []
    for r in rows:
        ratio = r.get("lut_over_direct", r["lut_ms"] / r["direct_ms"])
        out.append({"in_features": r["in_features"], "out_features": r["out_features"],
                    "k": r["k"], "form": LUT if ratio < LUT_MARGIN else DIRECT,
                    "direct_ms": r["direct_ms"], "lut_ms": r["lut_ms"],
                    "lut_over_direct": round(ratio, 3)})
    return out
