"""Tiny float models quantized to ONNX QDQ with onnxruntime's quantize_static (test fixtures)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class MixedNet(nn.Module):
    """Depthwise conv, ReLU6, max/avg pool, concat, residual add, global pool, dense."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.branch = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = nn.functional.relu6(self.dw(x))
        y = self.pw(y) + x
        y = nn.functional.max_pool2d(y, 2)
        z = nn.functional.avg_pool2d(torch.relu(self.branch(x)), 2)
        y = torch.cat([y, z], dim=1)
        return self.fc(y.mean(dim=(2, 3)))


def make_qdq(model: nn.Module, shape, path: Path, per_channel: bool = True,
             activation: str = "uint8", seed: int = 0) -> Path:
    """Export ``model`` (opset 17) and quantize it statically to QDQ at ``path``."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    torch.manual_seed(seed)
    float_path = path.with_suffix(".float.onnx")
    torch.onnx.export(model.eval(), torch.randn(*shape), str(float_path), dynamo=False,
                      opset_version=17, input_names=["x"])
    rng = np.random.RandomState(seed)

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": rng.randn(*shape).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.items, None)

    act = QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8
    quantize_static(str(float_path), str(path), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=act, weight_type=QuantType.QInt8)
    return path
