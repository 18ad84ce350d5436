"""tvmq's Relax passes (installed as ``tvmq.passes``).

Every pass is a standard ``tvm.transform.Pass``: drop it into your own Relax pipeline.
Passes are target-independent; hardware-specific code lives in ``tvmq.schedules``.

Integer lowering of QDQ graphs, in pipeline order::

    LowerCodebookWeights           Gather(table, indices) weights -> codebook-lookup weights
                                   (canonicalize phase, first)
    FoldConstantKeepQuantized      (canonicalize phase, instead of FoldConstant)
    LowerIntegerLUT                quantize(f(dequantize(x))) over 8-bit x, f elementwise
                                   (Hardswish, SiLU, GELU, ...) -> 256-entry table lookup
    SinkDequantize                 activations dequantized before flatten / max_pool reach
                                   the conv or dense they feed
    LowerIntegerConv               conv2d / depthwise / matmul (+ bias) -> int32 accumulator
    LowerIntegerAdd                residual add at a common accumulator scale
    LowerIntegerConcat             concat at a common accumulator scale
    LowerIntegerPool               avg / global-average pool as integer window sums
    SinkDequantize                 move dequantize below reshape/permute/max_pool
    IntegerRequantize              fixed-point requantize fused with ReLU/Clip and zero point
    PackSubByteWeights             2..7-bit weights bit-packed (tvmq.ir codecs; the mark
                                   survives FoldConstant)
"""
from tvmq.passes.fold_batchnorm_into_conv import FoldBatchNormIntoConv
from tvmq.passes.fold_constant_keep_quantized import FoldConstantKeepQuantized
from tvmq.passes.integer_requantize import IntegerRequantize
from tvmq.passes.lower_codebook_weights import LowerCodebookWeights
from tvmq.passes.lower_integer_add import LowerIntegerAdd
from tvmq.passes.lower_integer_concat import LowerIntegerConcat
from tvmq.passes.lower_integer_conv import LowerIntegerConv
from tvmq.passes.lower_integer_lut import LowerIntegerLUT, MarkLookupsElementwise
from tvmq.passes.lower_integer_pool import LowerIntegerPool
from tvmq.passes.pack_sub_byte_weights import PackSubByteWeights
from tvmq.passes.sink_dequantize import SinkDequantize

__all__ = ["FoldBatchNormIntoConv", "FoldConstantKeepQuantized", "IntegerRequantize",
           "LowerCodebookWeights", "LowerIntegerAdd", "LowerIntegerConcat", "LowerIntegerConv",
           "LowerIntegerLUT", "LowerIntegerPool", "MarkLookupsElementwise",
           "PackSubByteWeights", "SinkDequantize"]
