"""armv7 parameters of the blocked int8 schedules (NEON: 16 q registers, 4 int32 lanes).

A register tile of ``ow x ob`` accumulators also holds its ``ob`` weight vectors, two
broadcast activation pairs per pixel and one int16 product per accumulator in flight (LLVM
issues all of a step's multiplies before the pairwise adds). Measured with llvm-mca
(Cortex-A72, 3x3 64->64 conv at 56x56, fast intrinsic; MACs per cycle of the inner loop):
2x2 5.3, 1x4 5.3, 4x1 4.0, 2x4 4.7 and 4x2 4.4 (both spill accumulators to the stack),
1x8 4.1. The loads (a ``vld2.16`` per weight vector, a ``vld1.16 {d[]}`` per activation
pair) share the second NEON pipe with ``vpadal``, so 4 accumulators already keep the
multiply pipe busy: ``max_acc`` 4.
"""
from __future__ import annotations

from tvmq.schedules import tiling

MAX_ACC = 4
#: output pixels per blocked depthwise vector (2 x 4 int32 lanes): 4 pixels spilled in strided
#: kernels (448 spill/fill instructions in a row, 0.8 vs 1.9 MACs/cycle)
DW_PIXELS = 2


def schedule_conv(sch, intrin: str, **kw):
    return tiling.schedule_conv(sch, intrin, **{"max_acc": MAX_ACC, "max_ow": 4, "min_ob": 2,
                                                **kw})


def schedule_dense(sch, intrin: str, **kw):
    return tiling.schedule_dense(sch, intrin, **{"max_acc": MAX_ACC, **kw})


def schedule_depthwise(sch, **kw):
    return tiling.schedule_depthwise(sch, **{"vec": 8, **kw})
