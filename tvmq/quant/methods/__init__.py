"""Quantization methods, one file each: a config dataclass, its quantizer, its handler.

Importing this package registers every method (:func:`tvmq.quant.register_method`). To add
one, write ``tvmq/quant/methods/<name>.py`` and import it here; user-facing names go into
:data:`tvmq.quant.PRESETS`.
"""
from tvmq.quant.methods.uniform import FakeQuantConfig, FakeQuantizer
from tvmq.quant.methods.lsq import LSQConfig, LSQPlusConfig
from tvmq.quant.methods.dgms import CodebookWeight, DGMSConfig, GMMQuantizer

__all__ = ["CodebookWeight", "DGMSConfig", "FakeQuantConfig", "FakeQuantizer", "GMMQuantizer",
           "LSQConfig", "LSQPlusConfig"]
