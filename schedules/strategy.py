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
    intrin_full : str or None
        Intrinsic exact for every int8 weight, for kernels whose weights reach -128
        (blocks annotated :data:`tvmq.schedules.blocked.WEIGHT_MIN_ATTR`); None: ``intrin``
        is exact for all of them. Set when ``intrin`` sums two products in int16 (exact for
        weights in [-127, 127], which symmetric quantization guarantees).
    intrin_pairs : str or None
        Faster intrinsic exact only for kernels whose weight pairs fit an int16 sum with any
        u8 activation (blocks annotated :data:`tvmq.schedules.blocked.WEIGHT_PAIRS_ATTR`:
        e.g. 7-bit weights); None: no such intrinsic.
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
    intrin_full: str | None = None
    intrin_pairs: str | None = None

    def kernel_intrin(self, block) -> str:
        """The intrinsic for kernel ``block`` (a ``tir.SBlock``): :attr:`intrin_pairs` when its
        weights allow it, :attr:`intrin_full` when they reach -128 and the fast intrinsic is
        not exact for them, else :attr:`intrin`."""
        from tvmq.schedules.blocked import WEIGHT_MIN_ATTR, WEIGHT_PAIRS_ATTR

        ann = block.annotations or {}
        if self.intrin_pairs is not None and WEIGHT_PAIRS_ATTR in ann:
            return self.intrin_pairs
        if self.intrin_full is not None and WEIGHT_MIN_ATTR in ann:
            return self.intrin_full
        return self.intrin

    def weight_attrs(self, wp) -> dict | None:
        """Annotations for a kernel block over packed int8 weights ``wp`` that
        :meth:`kernel_intrin` reads: the pair mark only where this strategy has
        :attr:`intrin_pairs` (other targets' kernels, and their tuning records, unchanged)."""
        from tvmq.schedules.blocked import weight_attrs

        return weight_attrs(wp, pairs=self.intrin_pairs is not None)


def _x86(intrin: str, name: str, dw_intrin: str | None = None,
         intrin_pairs: str | None = None) -> Strategy:
    from tvmq.schedules.x86 import conv2d_int8 as k

    return Strategy(name, 16, 4, "uint8", intrin, k.schedule_conv, k.schedule_dense,
                    k.schedule_depthwise, dw_intrin=dw_intrin, intrin_pairs=intrin_pairs)


def _arm(intrin: str, name: str, intrin_full: str | None = None,
         in_order: bool = False) -> Strategy:
    from tvmq.schedules.arm import conv2d_int8 as k

    conv = k.schedule_conv_in_order if in_order else k.schedule_conv
    return Strategy(name, 4, 4, "int8", intrin, conv, k.schedule_dense,
                    k.schedule_depthwise, dw_pixels=4, intrin_full=intrin_full)


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
        in_order = str(target.attrs.get("mcpu", "")) == "cortex-a53"
        return _arm(ai.NEON_4x4, "arm-neon-a53" if in_order else "arm-neon", ai.NEON_4x4_FULL,
                    in_order)
    if mtriple.startswith(("arm", "thumb")):
        if not target_has_features(target, "neon"):
            return None
        from tvmq.schedules.armv7 import conv2d_int8 as k7
        from tvmq.schedules.armv7 import intrin as a7

        # aarch64's blocked layouts; depthwise vectors of 2 pixels (8 lanes): 4 spilled
        # 16 q registers in strided kernels (llvm-mca, Cortex-A72)
        return Strategy("armv7-neon", 4, 4, "int8", a7.NEON_4x4, k7.schedule_conv,
                        k7.schedule_dense, k7.schedule_depthwise, dw_pixels=k7.DW_PIXELS,
                        intrin_full=a7.NEON_4x4_FULL)
    if mtriple and not mtriple.startswith("x86_64"):
        return None
    from tvmq.schedules.x86 import intrin as xi

    intrin = xi.select_intrin(target)
    if intrin is None:
        return None
    if intrin == xi.VNNI_16x4:
        return _x86(intrin, "x86-vnni", xi.select_dw_intrin(target))
    # AVX2: vpmaddwd (exact for every int8 weight) and, for layers whose weight pairs fit
    # int16 (7-bit weights: reduce_range), vpmaddubsw
    return _x86(intrin, "x86-avx2", xi.select_dw_intrin(target), xi.AVX2_PAIRS_16x4)


@dataclasses.dataclass(frozen=True)
class FloatStrategy:
    """How float32 kernels are built for one target (:mod:`tvmq.schedules.blocked_float`).

    Parameters
    ----------
    name : str
        e.g. ``"x86-avx2-fma"``, ``"arm-neon"``.
    lanes : int
        float32 lanes of one vector register (AVX-512 16, AVX2 8, SSE / NEON 4).
    block : int
        Channel block of the float layout ``NCHW{block}c`` and of the kernels' output
        vectors (one register; :meth:`with_block` for a multiple of it).
    regs : int
        Vector registers (AVX2, SSE, armv7 NEON q: 16; AVX-512, aarch64: 32).
    max_acc : int
        Most accumulator registers of one register tile; the others hold the tile's weight
        vectors and the broadcast input
        (:func:`tvmq.schedules.schedule_float_kernels.conv_tile`).
    """

    name: str
    lanes: int
    block: int
    regs: int
    max_acc: int

    def with_block(self, block: int) -> "FloatStrategy":
        """The same kernels over another layout block (a conv already in ``NCHW{block}c``,
        e.g. the integer layers' ``NCHW16c`` on AVX2: two registers a block)."""
        return dataclasses.replace(self, block=block)


def float_strategy_for(target) -> FloatStrategy | None:
    """The float-kernel strategy of ``target`` (any llvm CPU target), or None."""
    if str(target.kind.name) != "llvm":
        return None
    mtriple = str(target.attrs.get("mtriple", ""))
    if mtriple.startswith("aarch64"):
        return FloatStrategy("arm-neon", 4, 4, 32, 24)
    if mtriple.startswith(("arm", "thumb")):
        return FloatStrategy("armv7-neon", 4, 4, 16, 12) if target_has_features(target, "neon") \
            else None
    if mtriple and not mtriple.startswith("x86_64"):
        return None
    if target_has_features(target, "avx512f"):
        return FloatStrategy("x86-avx512", 16, 16, 32, 28)
    if target_has_features(target, "avx2"):
        return FloatStrategy("x86-avx2" + ("-fma" if target_has_features(target, "fma")
                                           else ""), 8, 8, 16, 12)
    return FloatStrategy("x86-sse", 4, 4, 16, 12)
