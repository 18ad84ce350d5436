"""aarch64 parameters of the blocked int8 schedules (NEON: 32 q registers, 4 int32 lanes).

The 4x4 intrinsics cover 4 output channels, so a tile takes 4 channel blocks (16 channels,
one activation broadcast feeding 4 dot products) by up to 6 output pixels: 24 accumulators.
"""
from __future__ import annotations

from tvmq.schedules import tiling
from tvmq.schedules.arm.intrin import SDOT_2x4x4, SDOT_4x4, SDOT_4x4x4


#: accumulators of an in-order core's conv tile (Cortex-A53): with 16, LLVM spills and
#: copies registers around the smull/smlal2/sadalp chains (llvm-mca, 3x3 64->64 conv at
#: 56x56: 2.41 MACs/cycle with 4x4 pixels x blocks, 2.88 with 2x4)
IN_ORDER_MAX_ACC = 8


def schedule_conv_in_order(sch, intrin: str, **kw):
    return schedule_conv(sch, intrin, **{"max_acc": IN_ORDER_MAX_ACC, **kw})


def schedule_conv(sch, intrin: str, **kw):
    if intrin == SDOT_4x4:  # unit-stride convs: G pixels' inputs in one load, sdot by element
        kw = {"group_intrins": {4: SDOT_4x4x4, 2: SDOT_2x4x4}, **kw}
    return tiling.schedule_conv(sch, intrin, **{"max_acc": 24, "max_ow": 6, "min_ob": 4, **kw})


def schedule_dense(sch, intrin: str, **kw):
    return tiling.schedule_dense(sch, intrin, **{"max_acc": 24, **kw})


def schedule_depthwise(sch, **kw):
    return tiling.schedule_depthwise(sch, **{"vec": 8, **kw})
