"""x86 parameters of the blocked int8 schedules (AVX-512: 32 zmm, 16 int32 lanes)."""
from __future__ import annotations

from tvmq.schedules import tiling
from tvmq.schedules.x86.intrin import AVX2_16x4, AVX2_PAIRS_16x4, DW_VNNI_16x4, VNNI_16x4

#: most 16-lane int32 accumulators of one register tile, per intrinsic. AVX-512: one zmm
#: each (of 32); at most 14: with 16-24 (4x6, 8x2, 16x1 tiles) LLVM spills around the
#: epilogue; measured (Zen 5, 2 cores) MobileNetV2's 1x1 16->96 conv at 112x112: 4x6
#: 0.123 ms, 8x2 0.139, 7x2 / 14x1 / 2x6 0.097-0.101; the whole model 7.8% faster.
#: AVX2: two ymm each (of 16). The exact vpmaddwd kernel holds 4 widened weight vectors and
#: 2 activation pairs besides: at most 4 (measured, Zen 3, ResNet-18 end to end, alternating:
#: 4 / 6 / 14 accumulators 29.6 / 30.4 / 31.2 ms; llvm-mca: 14 spill 43 moves an iteration).
#: (Before its weights were widened by vpshufb, 14 won on Zen 2: reloading and re-widening
#: a tile's weights for fewer pixels cost more.) The vpmaddubsw kernel reads int8 weights as
#: they are: at most 7 (ResNet-18 with 7-bit weights, 5 / 7 / 8: 19.5 / 18.2 / 19.2 ms).
#: Dense kernels (batch-1 classifiers, a few us) were not re-measured.
CONV_MAX_ACC = {VNNI_16x4: 14, AVX2_16x4: 4, AVX2_PAIRS_16x4: 7}
DENSE_MAX_ACC = {VNNI_16x4: 24, AVX2_16x4: 24, AVX2_PAIRS_16x4: 7}


def schedule_conv(sch, intrin: str, **kw):
    return tiling.schedule_conv(sch, intrin, **{"max_acc": CONV_MAX_ACC.get(intrin, 14),
                                                "max_ow": 16, **kw})


def schedule_dense(sch, intrin: str, **kw):
    return tiling.schedule_dense(sch, intrin, **{"max_acc": DENSE_MAX_ACC.get(intrin, 24),
                                                 **kw})


def schedule_depthwise(sch, **kw):
    # a whole output row per vector loop: measured 1.9x faster than 16 lanes (56-wide rows)
    return tiling.schedule_depthwise(sch, **{"vec": 64, "dot_intrin": DW_VNNI_16x4, **kw})
