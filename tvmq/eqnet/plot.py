"""The search plot: predicted vs measured accuracy of the predictor's held-out subnets, and
every evaluated subnet's predicted accuracy against its cost with the Pareto front."""
from __future__ import annotations

import os
from pathlib import Path


def plot_search(result, report: dict, path: str | os.PathLike, budget: str = "") -> Path:
    """Write the two-panel figure (png/svg/pdf by suffix); returns the path.

    ``result`` is a :class:`~tvmq.eqnet.SearchResult`; ``report`` holds ``"predicted"`` and
    ``"measured"`` accuracies (optional) as from the results script or the CLI.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from tvmq.mixed.pareto import draw_front, save_figure

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    pred, meas = report.get("predicted"), report.get("measured")
    if pred is not None and meas is not None:
        ax0.scatter(meas, pred, s=14)
        lo, hi = min(min(meas), min(pred)), max(max(meas), max(pred))
        ax0.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax0.set(xlabel="measured accuracy (%)", ylabel="predicted accuracy (%)",
            title=f"predictor (Kendall tau {report.get('tau', float('nan')):.3f})")
    points = [{"cost": c, "acc": s} for _, s, c in result.history]
    ax1.scatter([p["cost"] for p in points], [p["acc"] for p in points], s=10,
                label="evaluated subnets")
    draw_front(ax1, points, "cost", "acc")
    ax1.set(xlabel="budget cost", ylabel="predicted accuracy (%)", title=f"search {budget}")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
