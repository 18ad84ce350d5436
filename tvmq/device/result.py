"""The benchmark result and its writers (JSON, CSV, optional matplotlib plot).

Every writer goes through a temporary file in the destination directory renamed into place, so
a failed or interrupted run never leaves a partial report behind.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass
class BenchResult:
    """End-to-end latency of an artifact on one device, after an output check.

    Times are milliseconds. ``samples_ms`` holds one value per repeat (each the mean of
    ``number`` runs). ``layers`` is the per-layer table when ``per_layer=True`` was asked.
    """

    artifact: str
    device: str
    device_description: str
    board: str
    arch: str
    samples_ms: list[float]
    number: int
    repeat: int
    min_repeat_ms: int
    warmup: int
    validated: bool
    max_abs_error: float | None
    layers: list[dict[str, Any]] | None = None
    layer_method: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    tvm_version: str = ""

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 90))

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def std_ms(self) -> float:
        return float(np.std(self.samples_ms))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(median_ms=self.median_ms, p90_ms=self.p90_ms, mean_ms=self.mean_ms,
                    std_ms=self.std_ms, min_ms=float(np.min(self.samples_ms)),
                    max_ms=float(np.max(self.samples_ms)))
        return data

    def summary(self) -> str:
        """A few human lines: latency, check, notes, and the layer table if any."""
        lines = [f"{self.board} on {self.device_description}",
                 f"  median {self.median_ms:.4f} ms  p90 {self.p90_ms:.4f} ms  "
                 f"std {self.std_ms:.4f} ms  ({self.repeat} repeats x {self.number} runs)",
                 f"  outputs checked against the host reference: "
                 + (f"max |err| {self.max_abs_error:.3g}" if self.validated else "NOT checked")]
        lines += [f"  note: {n}" for n in self.notes]
        if self.layers:
            lines.append(f"  per layer ({self.layer_method}):")
            lines += ["    " + row for row in format_layers(self.layers).splitlines()]
        return "\n".join(lines)

    def write_json(self, path: str | os.PathLike) -> Path:
        return _atomic_write(path, lambda f: f.write(json.dumps(self.to_dict(), indent=2)))

    def write_csv(self, path: str | os.PathLike) -> Path:
        """One table: a row per timing sample, then a row per layer."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["kind", "index", "name", "latency_ms", "share", "args", "layer"])
        for i, ms in enumerate(self.samples_ms):
            w.writerow(["sample", i, "end_to_end", f"{ms:.6f}", "", "", ""])
        for i, layer in enumerate(self.layers or []):
            w.writerow(["layer", i, layer["name"], _fmt(layer.get("median_ms")),
                        _fmt(layer.get("share")), layer.get("args", ""),
                        layer.get("layer") or ""])
        return _atomic_write(path, lambda f: f.write(buf.getvalue()))

    def write_plot(self, path: str | os.PathLike) -> Path:
        """Latency samples (and the per-layer bars when present) as an image."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        ncols = 2 if self.layers else 1
        fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
        ax = axes[0][0]
        ax.plot(self.samples_ms, "o-")
        ax.axhline(self.median_ms, linestyle="--", label=f"median {self.median_ms:.3f} ms")
        ax.set(xlabel="repeat", ylabel="ms", title=f"{self.board} on {self.device}")
        ax.legend()
        if self.layers:
            timed = [lay for lay in self.layers if lay.get("median_ms") is not None]
            axes[0][1].barh([lay["name"] for lay in timed], [lay["median_ms"] for lay in timed])
            axes[0][1].invert_yaxis()
            axes[0][1].set(xlabel="ms", title="per layer")
        fig.tight_layout()
        try:
            return _atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix[1:] or "png"),
                                 binary=True)
        finally:
            plt.close(fig)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.6f}"


def format_layers(layers: list[dict[str, Any]]) -> str:
    """Per-PrimFunc timings; ``layer`` (the user's layer name) and its widths where known."""
    rows = [f"{'#':>3}  {'layer':<24}{'W/A':>6}  {'function':<34}{'median ms':>11}{'share':>8}"
            f"  args"]
    for i, lay in enumerate(layers):
        ms = "-" if lay.get("median_ms") is None else f"{lay['median_ms']:.4f}"
        share = "" if lay.get("share") is None else f"{100 * lay['share']:.1f}%"
        bits = f"{lay['weight_bits']}/{lay['act_bits']}" if lay.get("layer") else ""
        rows.append(f"{i:>3}  {str(lay.get('layer') or '')[:23]:<24}{bits:>6}  "
                    f"{lay['name'][:33]:<34}{ms:>11}{share:>8}  "
                    f"{lay.get('args') or lay.get('skipped', '')}")
    return "\n".join(rows)


def _atomic_write(path: str | os.PathLike, write: Callable, binary: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
