"""Calibration data without data: images synthesized from the trained model alone.

>>> from tvmq.calib import synthesize
>>> calib = synthesize(model, 256, "gzsq", input_shape=(1, 8, 8))
>>> quantize_(model, PTQConfig(get_preset("w8a8"), calibration=calib))

Methods (one file each, a config dataclass plus a handler registered by type):
``"gzsq"`` (:mod:`tvmq.calib.gzsq`, weight-derived targets, no BatchNorm needed),
``"zeroq"`` (:mod:`tvmq.calib.zeroq`, BatchNorm statistics), ``"noise"``
(:mod:`tvmq.calib.noise`). ``docs/zeroshot.md`` derives the GZSQ targets.
"""
from tvmq.calib.base import METHODS, SynthesisConfig, register_synthesizer
from tvmq.calib.gzsq import GZSQConfig, weight_band
from tvmq.calib.images import save_grid, save_samples
from tvmq.calib.noise import NoiseConfig
from tvmq.calib.zeroq import ZeroQConfig
from tvmq.calib.api import check, synthesize  # noqa: E402  (after the methods register)

__all__ = ["GZSQConfig", "METHODS", "NoiseConfig", "SynthesisConfig", "ZeroQConfig", "check",
           "register_synthesizer", "save_grid", "save_samples", "synthesize", "weight_band"]
