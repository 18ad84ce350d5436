"""Zero-shot quantization: calibration data synthesized from the model alone.

A thin front of :mod:`tvmq.calib` (the methods live there, one file each)::

    from tvmq import zeroshot
    calib = zeroshot.synthesize(model, n=256, method="gzsq", input_shape=(1, 8, 8))
    zeroshot.save_grid(calib, "samples.png")
    quantize_(model, PTQConfig(get_preset("w8a8"), calibration=calib))
"""
from tvmq.calib import (METHODS, GZSQConfig, NoiseConfig, SynthesisConfig, ZeroQConfig, check,
                        save_grid, save_samples, synthesize)

__all__ = ["GZSQConfig", "METHODS", "NoiseConfig", "SynthesisConfig", "ZeroQConfig", "check",
           "save_grid", "save_samples", "synthesize"]
