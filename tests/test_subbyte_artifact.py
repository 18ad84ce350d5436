"""int4 weights stay packed in the artifact (decoded inside the kernels) and run exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tvmq
from tvmq.onnx_tools import export_float, ort_quantize_static, requantize_weights

pytestmark = pytest.mark.build


class _Wide(torch.nn.Module):
    """Weight-dominated: 512x512 int8 weights (256 KiB) dwarf the generated code."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(512, 512)
        self.fc2 = torch.nn.Linear(512, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    fp32 = export_float(_Wide(), (1, 512), tmp / "w.onnx")
    int8 = ort_quantize_static(fp32, tmp / "w8.onnx")
    return int8, requantize_weights(int8, tmp / "w4.onnx", bits=4)


def test_int4_artifact_holds_weights_at_half_size(models, tmp_path):
    int8, int4 = models
    a8 = tvmq.compile(int8).save(tmp_path / "a8")
    a4 = tvmq.compile(int4).save(tmp_path / "a4")
    size8, size4 = ((p / "lib.so").stat().st_size for p in (a8, a4))
    saved = size8 - size4
    # 512*512 + 512*16 weights: two per byte saves ~135 KB. The int4 build pays for its
    # in-kernel decode and for per-channel requantization (4-bit weights get per-channel
    # scales: 7 int32 constants per channel in the all-int32 form, and their loads).
    # Measured (debug sections stripped): 323,528 B -> 200,632 B, 122,896 B saved (91%).
    ideal = (512 * 512 + 512 * 16) / 2
    assert saved > 0.85 * ideal, f"int8 {size8} B, int4 {size4} B, saved {saved} B"


def test_packed_and_decoded_int4_agree(models, tmp_path):
    _, int4 = models
    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    packed = tvmq.compile(int4)
    decoded = tvmq.compile(int4, options=tvmq.PipelineOptions(keep_subbyte_packed=False))
    np.testing.assert_array_equal(packed.run(x)[0], decoded.run(x)[0])
    sizes = [(a.save(tmp_path / n) / "lib.so").stat().st_size
             for n, a in (("p", packed), ("d", decoded))]
    assert sizes[0] < sizes[1]
