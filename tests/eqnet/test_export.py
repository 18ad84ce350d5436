"""A searched subnet exports through tq.export and compiles with tvmq.compile; TVM matches
the converted PyTorch subnet."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tvmq
import tvmq.quant as tq


@pytest.mark.build
@pytest.mark.parametrize("per_channel, symmetric", [(True, True), (False, False)])
def test_subnet_compiles_and_matches_pytorch(tmp_path, supernet, digits_data, per_channel,
                                             symmetric):
    train, test = digits_data
    sub = supernet.uniform(3, 4, per_channel=per_channel, act_symmetric=symmetric)
    sub.bits["features.6"] = (2, 6)
    model = supernet.to_quantized(sub, calibration=train, bn_batches=2)
    path = tq.export(model, torch.from_numpy(test.x[:1]), tmp_path / "eqnet.onnx")
    art = tvmq.compile(path, input_shapes={"input": (1, 1, 8, 8)})
    layers = {ly["name"]: (ly["weight_bits"], ly["act_bits"]) for ly in art.meta["layers"]}
    assert layers == sub.bits
    x = test.x[:32]
    got = np.concatenate([art.run(x[i:i + 1])[0] for i in range(len(x))])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    err = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    assert err < 1e-3 and agree == 1.0, f"max |TVM - torch| {err:.2e}, top-1 agree {agree:.0%}"
