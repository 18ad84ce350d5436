"""x86 integer kernels: AVX-512 VNNI / AVX2 16x4 intrinsics and their default schedules."""
from tvmq.schedules.kernels import build_conv_kernel, build_dense_kernel, build_depthwise_kernel
from tvmq.schedules.x86.intrin import AVX2_16x4, AVX2_PAIRS_16x4, VNNI_16x4, select_intrin


def tune_space(target):
    """MetaSchedule space generator around the x86 kernels (:func:`tvmq.schedules.tune_space`)."""
    from tvmq.schedules.tune import tune_space as _ts

    return _ts(target)

__all__ = ["VNNI_16x4", "AVX2_16x4", "AVX2_PAIRS_16x4", "select_intrin", "build_conv_kernel",
           "build_dense_kernel", "build_depthwise_kernel", "tune_space"]
