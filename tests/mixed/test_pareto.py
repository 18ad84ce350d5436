"""Pareto front and plot."""
from __future__ import annotations

from tvmq.mixed import pareto_front, plot_pareto

POINTS = [{"kind": "mckp", "size_bytes": 10, "latency_ms": 1.0, "accuracy": 90},
          {"kind": "mckp", "size_bytes": 20, "latency_ms": 0.9, "accuracy": 95},
          {"kind": "uniform", "size_bytes": 20, "latency_ms": 2.0, "accuracy": 93},  # beaten
          {"kind": "random", "size_bytes": 5, "latency_ms": None, "accuracy": 50},
          {"kind": "random", "size_bytes": 30, "latency_ms": 3.0, "accuracy": 95}]  # beaten


def test_front():
    assert pareto_front(POINTS, "size_bytes", "accuracy") == [3, 0, 1]
    assert pareto_front(POINTS, "latency_ms", "accuracy") == [1]


def test_plot_writes_an_image(tmp_path):
    path = plot_pareto(POINTS, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
