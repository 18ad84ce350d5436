"""Hardware-specific schedules, tensor intrinsics and tuned databases (``tvmq.schedules``).

Entry points for the pipeline (``tvmq.pipeline``):

* :func:`legalize_prelude` -- passes to run before ``LegalizeOps`` (:class:`BlockIntegerOps`,
  :class:`BlockFloatOps`);
* :func:`schedule_passes` -- the schedule phase (:class:`ScheduleFloatKernels`,
  :class:`ScheduleIntegerKernels`).

Both pick the board's kernel family with :func:`strategy_for` (x86: AVX-512 VNNI, else AVX2;
aarch64: sdot with ``+dotprod``, else NEON smull) and :func:`float_strategy_for` (float32
FMA register tiles: AVX-512, AVX2, NEON) and do nothing on other targets.
"""
from __future__ import annotations

from tvmq.schedules.block_float_ops import BlockFloatOps
from tvmq.schedules.block_integer_ops import BlockIntegerOps
from tvmq.schedules.blocked_activation_layout import BlockedActivationLayout
from tvmq.schedules.blocked_float_layout import BlockedFloatLayout
from tvmq.schedules.schedule_float_kernels import ScheduleFloatKernels
from tvmq.schedules.schedule_integer_kernels import ScheduleIntegerKernels
from tvmq.schedules.strategy import FloatStrategy, Strategy, float_strategy_for, strategy_for


def legalize_prelude(target, subbyte_in_kernel: bool = True, blocked_layout: bool = True,
                     float_kernels: bool = True, gemv_form: str = "auto") -> list:
    """Passes to put before ``LegalizeOps`` for ``target`` (a ``tvm.target.Target``).

    ``blocked_layout``: integer layers exchange activations in ``NCHW{ob}c``
    (:class:`BlockedActivationLayout`), so layout transforms happen at the graph's edges,
    not around every conv. ``subbyte_in_kernel=False`` stores bit-packed (2..7-bit)
    weights as int8 (see :class:`BlockIntegerOps`). ``float_kernels``: float32 conv/dense
    with constant weights run tvmq's blocked float kernels (:class:`BlockFloatOps`); False
    leaves them to ``LegalizeOps`` (for comparison). ``gemv_form``: kernel of batch-1
    codebook dense layers (:func:`tvmq.schedules.gemv_select.choose_form`).
    """
    st = strategy_for(target)
    layout = [BlockedActivationLayout(st)] if blocked_layout and st is not None else []
    fs = float_strategy_for(target) if float_kernels else None
    if fs is not None and blocked_layout:
        layout.append(BlockedFloatLayout(fs))
    floats = [BlockFloatOps(fs)] if fs is not None else []
    mcpu = str(target.attrs.get("mcpu", "") or "")
    return [*layout, BlockIntegerOps(st, subbyte_in_kernel=subbyte_in_kernel,
                                     gemv_form=gemv_form, mcpu=mcpu), *floats]


def schedule_passes(target) -> list:
    """The default-schedule passes of the schedule phase for ``target``."""
    return [ScheduleFloatKernels(float_strategy_for(target)),
            ScheduleIntegerKernels(strategy_for(target))]


__all__ = ["BlockFloatOps", "BlockIntegerOps", "BlockedActivationLayout", "BlockedFloatLayout",
           "FloatStrategy",
           "ScheduleFloatKernels", "ScheduleIntegerKernels", "Strategy", "float_strategy_for",
           "strategy_for", "legalize_prelude", "schedule_passes"]
