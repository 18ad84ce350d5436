"""Per-target kernel strategy: block sizes, operand signedness, intrinsic and schedules.

:func:`strategy_for` is the single place that maps a target's features to a kernel family;
everything else (the Relax rewrite, the schedule pass, the standalone builders) takes a
:class:`Strategy`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from tvmq._tvm import target_has_features


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How integer kernels are built for one target.

    Parameters
    ----------
    name : str
        e.g. ``"x86-vnni"``, ``"arm-sdot"``.
    ob, ib : int
        Output-channel block (intrinsic lanes) and reduction block (intrinsic depth).
    act_dtype : str
        Activation signedness the instruction wants (``"uint8"`` on x86, ``"int8"`` on Arm).
    intrin : str
        Registered tensor intrinsic name.
    schedule_conv, schedule_dense, schedule_depthwise : callable
        ``f(sch, intrin)`` / ``f(sch)`` schedules of :mod:`tvmq.schedules.blocked` kernels.
    dw_pixels : int
        Output pixels per depthwise vector in the blocked layout (``dw_pixels * ob`` int32
        lanes: 64 on x86 = 4 zmm accumulators, 16 on Arm = 4 q registers).
    dw_intrin : str or None
        Per-lane 4-tap dot-product intrinsic for blocked depthwise convs
        (:func:`tvmq.schedules.blocked.depthwise_nchwc_dot`); None: per-tap multiply-adds.
    """

    name: str
    ob: int
    ib: int
    act_dtype: str
    intrin: str
    schedule_conv: Callable
    schedule_dense: Callable
    schedule_depthwise: Callable
    dw_pixels: int = 4
    dw_intrin: str | None = None


def _x86(intrin: str, name: str, dw_intrin: str | None = None) -> Strategy:
    from tvmq.schedules.x86 import conv2d_int8 as k

    return Strategy(name, 16, 4, "uint8", intrin, k.schedule_conv, k.schedule_dense,
                    k.schedule_depthwise, dw_intrin=dw_intrin)


def _arm(intrin: str, name: str) -> Strategy:
    from tvmq.schedules.arm import conv2d_int8 as k

    return Strategy(name, 4, 4, "int8", intrin, k.schedule_conv, k.schedule_dense,
                    k.schedule_depthwise, dw_pixels=4)


def strategy_for(target) -> Strategy | None:
    """The integer-kernel strategy of ``target`` (a ``tvm.target.Target``), or None."""
    kind_ok = str(target.kind.name) == "llvm"
    if not kind_ok:
        return None
    mtriple = str(target.attrs.get("mtriple", ""))
    if mtriple.startswith("aarch64"):
        from tvmq.schedules.arm import intrin as ai

        if target_has_features(target, "dotprod"):
            return _arm(ai.SDOT_4x4, "arm-sdot")
        return _arm(ai.NEON_4x4, "arm-neon")
    if mtriple and not mtriple.startswith("x86_64"):
        return None
    from tvmq.schedules.x86 import intrin as xi

    intrin = xi.select_intrin(target)
    if intrin is None:
        return None
    return _x86(intrin, "x86-vnni" if intrin == xi.VNNI_16x4 else "x86-avx2",
                xi.select_dw_intrin(target))
