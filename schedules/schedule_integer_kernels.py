"""ScheduleIntegerKernels: default (untuned) schedules for a legalized, fused module.

For every PrimFunc not yet scheduled:

* one holding a tvmq kernel block (:mod:`tvmq.schedules.blocked`, emitted by
  :class:`BlockIntegerOps` and fused with its epilogue by ``FuseOps``/``FuseTIR``) gets the
  target strategy's tensorized schedule;
* any other all-spatial PrimFunc (requantize, add, pack, pad, pools' elementwise tails) gets
  a parallel + vectorized loop nest: ``tvm.compile``'s default CPU pipeline would run it on
  one thread, scalar.

A schedule that fails leaves the function as it was, with a warning: slower, never wrong.
Position: schedule phase (after ``FuseTIR``), before ``MetaScheduleApplyDatabase`` would
otherwise run; marks what it schedules ``tirx.is_scheduled``.
"""
from __future__ import annotations

import warnings

from tvmq._tvm import s_tir, tir, tvm
from tvmq.schedules import blocked as B
from tvmq.schedules.common import PACK_BLOCKS, child_blocks, inline_epilogue, schedule_injective
from tvmq.schedules.strategy import Strategy

KERNEL_BLOCKS = (B.BLOCK_CONV, B.BLOCK_DENSE, B.BLOCK_DWCONV)


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
        return None
    sch = s_tir().Schedule(func)
    for out in inline_epilogue(sch, ()):
        schedule_injective(sch, out)
    for blk in child_blocks(sch):  # a pack fused after the model input's quantize
        if sch.get(blk).name_hint in PACK_BLOCKS:
            schedule_injective(sch, blk)
    return sch.mod["main"]


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
