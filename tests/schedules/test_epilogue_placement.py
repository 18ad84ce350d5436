"""Epilogue placement in the kernel schedules: every fused block is computed per tile, and a
schedule that would compute a block whole in each parallel iteration is caught.

The module is issue 26's graph at the ``tuned`` phase: its second kernel carries a fused
requantize of the conv's *input* (independent of the conv) feeding the residual add.
"""
from __future__ import annotations

import warnings

import pytest

from tvmq._tvm import tir
from tvmq.boards import get_board
from tvmq.pipeline import PipelineOptions, run_phases
from tvmq.schedules import common, tiling
from tvmq.schedules.schedule_integer_kernels import (ParallelRaceError, ScheduleIntegerKernels,
                                                     check_parallel_writes, schedule_func)
from tvmq.schedules.strategy import strategy_for

from ..passes._random_qdq import residual_requant_graph

pytestmark = pytest.mark.build


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """(board, module after the tuned phase, the kernel with an independent epilogue block)."""
    import onnx

    from tvmq.frontend import import_model

    path = tmp_path_factory.mktemp("race") / "g.onnx"
    onnx.save(residual_requant_graph()[0], path)
    board = get_board("host")
    mod = run_phases(import_model(str(path)).bind_params(), board,
                     PipelineOptions(use_shipped_database=False), until="tuned")
    st = strategy_for(board.tvm_target())
    for gv, func in mod.functions.items():
        if isinstance(func, tir.PrimFunc) and _independent_blocks(func, st):
            return board, mod, gv
    pytest.fail("no fused kernel with an epilogue block independent of the conv")


def _independent_blocks(func, st):
    from tvmq._tvm import s_tir
    from tvmq.schedules.blocked import BLOCK_CONV

    sch = s_tir().Schedule(func)
    names = {sch.get(b).name_hint for b in common.child_blocks(sch)}
    if BLOCK_CONV not in names:
        return []
    outs = common.inline_epilogue(sch, (BLOCK_CONV,))
    return common.split_epilogue(sch, BLOCK_CONV, outs)[1]


def _old_placement(sch, anchor, outs, at_loop, preserve_unit_loops=True):
    """The placement before the fix: every remaining block under the tile loop."""
    for out in outs:
        sch.reverse_compute_at(out, at_loop, preserve_unit_loops=True)
    return outs


def test_independent_block_is_computed_per_tile(fused):
    board, mod, gv = fused
    with board.tvm_target():
        new = schedule_func(mod[gv], strategy_for(board.tvm_target()))
    assert common.parallel_overlaps(new) == []
    check_parallel_writes(new)
    loops = [ln for ln in new.script().splitlines() if "T.parallel(" in ln]
    # the kernel's tiles (its pack is below common.MIN_PARALLEL_WORK: one thread)
    assert len(loops) >= 1, "the kernel is not parallel"


def test_racy_placement_is_detected_and_falls_back(fused, monkeypatch):
    """Without the fix the add would cover the whole tensor in every parallel tile: the
    guard names the blocks, and the schedule pass leaves the function unscheduled (slower,
    never wrong) with a warning."""
    board, mod, gv = fused
    monkeypatch.setattr(tiling, "place_epilogue", _old_placement)
    st = strategy_for(board.tvm_target())
    with board.tvm_target():
        racy = schedule_func(mod[gv], st)
    assert common.parallel_overlaps(racy), "the guard missed a block computed whole per tile"
    with pytest.raises(ParallelRaceError, match="threads race"):
        check_parallel_writes(racy)
    with board.tvm_target(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ScheduleIntegerKernels(st)(mod)
    assert any("threads race" in str(w.message) for w in caught)
    assert not (out[gv].attrs and out[gv].attrs.get("tirx.is_scheduled", False))


def test_guard_accepts_predicated_tiles(tmp_path):
    """A dense of 1000 outputs tiles 7 x 144 (63 blocks of 16, the last tile predicated):
    1008 loop iterations for 1000 elements is not a race (the guard once said so and left
    MobileNetV2's classifier unscheduled, 4% of the model's time)."""
    import numpy as np
    import onnx

    import tvmq

    from ..passes._random_qdq import QDQGraph

    g = QDQGraph((1, 64, 4, 4), np.random.RandomState(0))
    out = g.dense(g.global_pool(g.input), 1000)
    path = tmp_path / "d.onnx"
    onnx.save(g.model([out]), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        art = tvmq.compile(str(path))
    assert not [w for w in caught if "threads race" in str(w.message)]
    y = art.run(g.x)[0]
    assert np.array_equal(np.rint(y / out.scale).astype(np.int64) + out.zero, out.q)
