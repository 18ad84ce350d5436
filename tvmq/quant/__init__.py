"""PyTorch QAT/PTQ front-end: fake quantization, LSQ/LSQ+, BN folding, ONNX QDQ export.

Methods plug in through :class:`Quantizer` (the protocol), :func:`register_method` and
:func:`register_export`; each lives in one file under :mod:`tvmq.quant.methods`.

>>> from tvmq.quant import quantize_, QATConfig, get_preset, fit, export
>>> quantize_(model, QATConfig(get_preset("w4a4"), step="prepare"))
>>> fit(model, train_set, epochs=10)
>>> quantize_(model, QATConfig(get_preset("w4a4"), step="convert"))
>>> export(model, torch.randn(1, 1, 8, 8), "qmodel.onnx")
"""
from tvmq.quant.api import (calibrate, convert, freeze_bn, quantizable_layers, quantize_,
                            quantizers, register_step)
from tvmq.quant.config import MethodConfig, PerChannel, PerTensor, PTQConfig, QATConfig, QuantSpec
from tvmq.quant.export import export
from tvmq.quant.methods import (CodebookWeight, DGMSConfig, FakeQuantConfig, FakeQuantizer,
                                GMMQuantizer, LSQConfig, LSQPlusConfig)
from tvmq.quant.layers import QuantConv2d, QuantConvBn2d, QuantLinear
from tvmq.quant.observers import MinMaxObserver, MSEObserver, Observer, PercentileObserver
from tvmq.quant.plan import load_plan, save_plan
from tvmq.quant.presets import PRESETS, get_preset, list_presets
from tvmq.quant.qat import fit
from tvmq.quant.quantizer import (Quantizer, UniformActivation, UniformWeight, fake_quant,
                                  grad_scale, round_ste)
from tvmq.quant.registry import register_export, register_method

__all__ = [
    "CodebookWeight", "DGMSConfig", "GMMQuantizer", "FakeQuantConfig", "FakeQuantizer", "LSQConfig", "LSQPlusConfig", "MSEObserver",
    "MethodConfig", "MinMaxObserver", "Observer", "Quantizer", "UniformActivation",
    "UniformWeight", "register_export", "PRESETS", "PTQConfig", "PerChannel", "PerTensor",
    "PercentileObserver", "QATConfig", "QuantConv2d", "QuantConvBn2d", "QuantLinear",
    "QuantSpec", "calibrate", "convert", "export", "fake_quant", "fit", "freeze_bn",
    "get_preset", "grad_scale", "list_presets", "load_plan", "save_plan",
    "quantizable_layers", "quantize_",
    "quantizers", "register_method", "register_step", "round_ste",
]
