"""What search-bits calls: --bops parsing, the budget sweep, the printed plan."""
from __future__ import annotations

import pytest

from tvmq.errors import ConfigError
from tvmq.mixed import BopsBudget, SizeBudget, allocate
from tvmq.mixed.search import format_plan, parse_bops, sweep


def test_parse_bops():
    assert parse_bops("w4a4") == BopsBudget(uniform=(4, 4))
    assert parse_bops("3.5e9") == BopsBudget(bops=3.5e9)
    with pytest.raises(ConfigError, match="neither a number nor WxAy"):
        parse_bops("w4")


def test_sweep_spans_the_range_with_distinct_plans(sens):
    plans = sweep(sens, SizeBudget(avg_bits=3), points=6)
    keys = [tuple(sorted(p.bits.items())) for p in plans]
    assert len(set(keys)) == len(keys) >= 4
    bits = [p.predicted["avg_bits"] for p in plans]
    assert min(bits) == 2 and max(bits) == 8
    assert any(abs(b - allocate(sens, SizeBudget(avg_bits=3)).predicted["avg_bits"]) < 1e-9
               for b in bits)  # the requested budget's own plan is among them


def test_format_plan_lists_every_layer(sens):
    text = format_plan(allocate(sens, SizeBudget(avg_bits=4)), sens)
    assert all(ly.name in text for ly in sens.layers) and "predicted:" in text
