"""Pareto plot of the plans tried: accuracy against size and against latency."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence


def pareto_front(points: Sequence[dict[str, Any]], cost: str, quality: str) -> list[int]:
    """Indices of the points no other point beats (cost <= and quality >=, one strictly),
    in order of cost; points lacking either key are left out."""
    have = [i for i, p in enumerate(points) if p.get(cost) is not None
            and p.get(quality) is not None]
    front = []
    for i in have:
        ci, qi = points[i][cost], points[i][quality]
        if not any(points[j][cost] <= ci and points[j][quality] >= qi and
                   (points[j][cost] < ci or points[j][quality] > qi) for j in have):
            front.append(i)
    return sorted(front, key=lambda i: points[i][cost])


_AXES = (("size_bytes", "weight bytes"), ("latency_ms", "latency (ms)"))


def plot_pareto(points: Sequence[dict[str, Any]], path: str | os.PathLike,
                quality: str = "accuracy", quality_label: str = "accuracy (%)",
                title: str = "") -> Path:
    """Write ``quality`` against ``size_bytes`` and against ``latency_ms`` (the panels whose
    cost the points have), one marker per point ``kind`` (``mckp``, ``uniform``, ``random``
    ...), the Pareto front as a line. Written atomically (png/svg/pdf by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = [(k, lab) for k, lab in _AXES if any(p.get(k) is not None for p in points)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4),
                             squeeze=False)
    for ax, (cost, label) in zip(axes[0], panels):
        for kind in sorted({p.get("kind", "plan") for p in points}):
            mine = [p for p in points if p.get("kind", "plan") == kind and p.get(cost) is not None
                    and p.get(quality) is not None]
            ax.scatter([p[cost] for p in mine], [p[quality] for p in mine], label=kind, s=22)
        draw_front(ax, points, cost, quality)
        ax.set(xlabel=label, ylabel=quality_label, title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_front(ax, points: Sequence[dict[str, Any]], cost: str, quality: str) -> None:
    """The Pareto front of ``points`` as a dashed line on ``ax``."""
    front = pareto_front(points, cost, quality)
    ax.plot([points[i][cost] for i in front], [points[i][quality] for i in front], "k--",
            lw=0.8, label="Pareto front")


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` atomically (png/svg/pdf by suffix) and close it."""
    from matplotlib import pyplot as plt

    from tvmq.artifact import atomic_write

    fmt = Path(path).suffix[1:] or "png"
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format=fmt))
    finally:
        plt.close(fig)
