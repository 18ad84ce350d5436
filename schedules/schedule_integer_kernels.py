"""ScheduleIntegerKernels: default (untuned) schedules for a legalized, fused module.

For every PrimFunc not yet scheduled:

* one holding a tvmq kernel block (:mod:`tvmq.schedules.blocked`, emitted by
  :class:`BlockIntegerOps` and fused with its epilogue by ``FuseOps``/``FuseTIR``) gets the
  target strategy's tensorized schedule;
* any other all-spatial PrimFunc (requantize, add, pack, pad, pools' elementwise tails) gets
  a parallel + vectorized loop nest: ``tvm.compile``'s default CPU pipeline would run it on
  one thread, scalar;
* a pool (one window reduction over one input, its pad inlined) is parallel over rows and
  vectorized over the blocked layout's channels.

A schedule that fails, or that computes a block whole in every iteration of a parallel loop
(:func:`check_parallel_writes`: threads would race), leaves the function as it was, with a
warning: slower, never wrong.
Position: schedule phase (after ``FuseTIR``), before ``MetaScheduleApplyDatabase`` would
otherwise run; marks what it schedules ``tirx.is_scheduled``.
"""
from __future__ import annotations

import warnings

from tvmq._tvm import s_tir, tir, tvm
from tvmq.schedules import blocked as B
from tvmq.schedules.common import (PACK_BLOCKS, child_blocks, inline_epilogue,
                                   parallel_overlaps, schedule_injective)
from tvmq.schedules.lut_gemv import BLOCK_GEMV
from tvmq.schedules.strategy import Strategy

KERNEL_BLOCKS = (B.BLOCK_CONV, B.BLOCK_DENSE, B.BLOCK_DWCONV, BLOCK_GEMV)


def _blocks(func) -> list:
    """Blocks directly under the root block (all of them, after ``FuseTIR``)."""
    try:
        sch = s_tir().Schedule(func)
        return [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    except Exception:  # noqa: BLE001 - no root block: not a TE/TIR-script PrimFunc
        return []


def _is_spatial(func) -> bool:
    blocks = _blocks(func)
    return bool(blocks) and all(int(iv.iter_type) == 0 for b in blocks for iv in b.iter_vars)


def _has_kernel(func) -> bool:
    return bool({b.name_hint for b in _blocks(func)} & set(KERNEL_BLOCKS))


def schedule_func(func, st: Strategy):
    """The scheduled ``func``, or None when nothing applies."""
    from tvmq.schedules.kernels import schedule

    names = {b.name_hint for b in _blocks(func)}
    if names & set(KERNEL_BLOCKS):
        return schedule(func, st)
    if not _is_spatial(func):
        return _schedule_window_reduction(func)
    sch = s_tir().Schedule(func)
    for out in inline_epilogue(sch, ()):
        schedule_injective(sch, out)
    for blk in child_blocks(sch):  # a pack fused after the model input's quantize
        if sch.get(blk).name_hint in PACK_BLOCKS:
            schedule_injective(sch, blk)
    return sch.mod["main"]


#: fewest window elements a pool reads before it runs on several threads
POOL_PARALLEL_MIN = 1 << 16


def _schedule_window_reduction(func):
    """A pool (one reduction block over a small window, its pad inlined into it): parallel
    over rows, the last spatial loop (a blocked layout's channels) vectorized inside the
    window loops. None when ``func`` is not shaped like that.

    Measured (Zen 5, 2 cores): ResNet-18's 3x3/2 max pool over ``[1, 4, 112, 112, 16]``
    0.028 ms unscheduled (LLVM's own vectorizer, one thread) -> 0.008 ms.
    """
    sch = s_tir().Schedule(func)
    blocks = child_blocks(sch)
    red = [b for b in blocks if any(int(iv.iter_type) != 0 for iv in sch.get(b).iter_vars)]
    if len(red) != 1 or len({r.source.name for r in sch.get(red[0]).reads}) != 1:
        return None  # one input: a pool, not a conv or matmul (those read weights too)
    for blk in blocks:
        if not blk.same_as(red[0]):
            try:
                sch.compute_inline(blk)
            except Exception:  # noqa: BLE001 - e.g. an epilogue after the reduction
                return None
    red = red[0]
    ivs = sch.get(red).iter_vars
    loops = sch.get_loops(red)
    n_sp = sum(1 for iv in ivs if int(iv.iter_type) == 0)
    if len(loops) != len(ivs) or any(int(iv.iter_type) != 0 for iv in ivs[:n_sp]) \
            or n_sp < 3 or int(sch.get(loops[n_sp - 1]).extent) > 64:
        return None
    if not _reads_last_axis_unit_stride(sch.get(red), ivs[n_sp - 1].var):
        return None  # e.g. NCHW: the last loop is W, read with the pool's stride (gathers)
    spatial, window = loops[:n_sp], loops[n_sp:]
    work = 1
    for lp in loops:
        work *= int(sch.get(lp).extent)
    sch.reorder(*spatial[:-1], *window, spatial[-1])
    if work >= POOL_PARALLEL_MIN:  # a global average pool's 25 K adds: one thread is faster
        sch.parallel(sch.fuse(*spatial[:-2]))
    sch.vectorize(spatial[-1])  # before decompose_reduction: after, the update is incomplete
    init = sch.decompose_reduction(red, window[0])
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


def _reads_last_axis_unit_stride(block, var) -> bool:
    """Whether ``block`` reads its input's last axis at exactly ``var`` (one element)."""
    last = [r.region[-1] for r in block.reads]
    return bool(last) and all(rg.min.same_as(var) and int(rg.extent) == 1 for rg in last)


class ParallelRaceError(RuntimeError):
    """A schedule computes the same outputs in several parallel iterations."""


def check_parallel_writes(func) -> None:
    """Raise :class:`ParallelRaceError` when several iterations of a parallel loop of the
    scheduled ``func`` compute the same instances of a block (:func:`parallel_overlaps`)."""
    bad = parallel_overlaps(func)
    if bad:
        raise ParallelRaceError(f"blocks {', '.join(bad)} would be computed whole in every "
                                "parallel iteration (threads race)")


def ScheduleIntegerKernels(strategy: Strategy | None) -> tvm.transform.Pass:  # noqa: N802
    """The schedule pass for ``strategy`` (identity when None)."""

    @tvm.transform.module_pass(opt_level=0, name="tvmq.ScheduleIntegerKernels")
    def _pass(mod, _ctx):
        if strategy is None:
            return mod
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tir.PrimFunc) or func.attrs is not None and \
                    func.attrs.get("tirx.is_scheduled", False):
                continue
            try:
                new = schedule_func(func, strategy)
                if new is not None:
                    check_parallel_writes(new)
            except Exception as err:  # noqa: BLE001 - fall back to the unscheduled loop nest
                if _has_kernel(func):  # generic loop nests may legitimately not fit
                    warnings.warn(f"tvmq: default schedule of {gv.name_hint} failed "
                                  f"({err!s:.200}); it runs unscheduled", stacklevel=1)
                continue
            if new is not None:
                updates[gv] = new.with_attr("tirx.is_scheduled", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass
