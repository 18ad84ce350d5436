"""A mixed-precision plan compiles into one artifact with int8, int4, int3 and int2 layers."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import tvmq
import tvmq.quant as tq
from tvmq.mixed import MixedPlan


@pytest.mark.build
def test_mixed_plan_compiles_with_each_layers_bits(tmp_path, trained_digits_cnn, digits_data):
    from tvmq.mixed.plans import packed_bytes

    train, test = digits_data
    bits = {"features.0": (2, 8), "features.3": (3, 4), "features.6": (4, 6),
            "classifier": (8, 8)}
    plan = MixedPlan.from_bits(tq.get_preset("w8a8"), bits)
    model = copy.deepcopy(trained_digits_cnn)
    tq.quantize_(model, tq.PTQConfig(tq.get_preset("w8a8"), calibration=train, overrides=plan,
                                     max_batches=2, progress=False))
    path = tq.export(model, torch.from_numpy(test.x[:1]), tmp_path / "mixed.onnx")
    art = tvmq.compile(path, input_shapes={"input": (1, 1, 8, 8)})
    layers = {ly["name"]: ly for ly in art.meta["layers"]}
    assert sorted(layers) == sorted(bits)
    for name, (w, a) in bits.items():
        ly = layers[name]
        assert ly["integer"] and (ly["weight_bits"], ly["act_bits"]) == (w, a), ly
        weights = int(np.prod(ly["weight_shape"]))
        assert ly["weight_bytes"] == packed_bytes(weights, w), ly  # packed as predicted
    x = test.x[:32]
    tvm_logits = np.concatenate([art.run(x[i:i + 1])[0] for i in range(len(x))])
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x)).numpy()
    agree = float((tvm_logits.argmax(1) == torch_logits.argmax(1)).mean())
    assert agree >= 0.97, f"TVM and fake-quant top-1 agree on {agree:.1%} of 32 images"
