"""tvmq's Relax passes (installed as ``tvmq.passes``).

Every pass is a standard ``tvm.transform.Pass``: drop it into your own Relax pipeline.
Passes are target-independent; hardware-specific code lives in ``tvmq.schedules``.
"""
from tvmq.passes.fold_batchnorm_into_conv import FoldBatchNormIntoConv

__all__ = ["FoldBatchNormIntoConv"]
