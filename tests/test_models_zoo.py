"""Every zoo model through both routes (torch.export and ONNX) matches PyTorch (max abs 1e-4)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import tvmq
from tvmq import models

ATOL = 1e-4  # float32 end to end; measured errors are ~1e-6 on these models

pytestmark = pytest.mark.build


def _reference(model, x):
    with torch.no_grad():
        return model(x).numpy()


def _export_onnx(model, x, path, fold=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          do_constant_folding=fold)


@pytest.mark.parametrize("name", list(models.ZOO))
def test_torch_route_matches_pytorch(name):
    model = models.create(name)
    x = torch.randn(*models.input_shape(name), generator=torch.Generator().manual_seed(1))
    out = tvmq.compile(model, example_inputs=x).run(x.numpy())[0]
    err = float(np.abs(out - _reference(model, x)).max())
    assert err < ATOL, f"{name}: torch route max abs error {err:.3g} >= {ATOL}"


@pytest.mark.parametrize("name", list(models.ZOO))
def test_onnx_route_matches_pytorch(name, tmp_path):
    model = models.create(name)
    x = torch.randn(*models.input_shape(name), generator=torch.Generator().manual_seed(2))
    # Without constant folding the exporter keeps BatchNormalization nodes, so the ONNX
    # route exercises FoldBatchNormIntoConv too.
    _export_onnx(model, x, tmp_path / "m.onnx", fold=False)
    art = tvmq.compile(tmp_path / "m.onnx")
    assert art.meta["inputs"] == [{"name": "input", "shape": list(x.shape), "dtype": "float32"}]
    assert art.meta["outputs"][0]["name"] == "logits"
    err = float(np.abs(art.run(x.numpy())[0] - _reference(model, x)).max())
    assert err < ATOL, f"{name}: ONNX route max abs error {err:.3g} >= {ATOL}"


def test_zoo_unknown_name_lists_valid_ones():
    with pytest.raises(tvmq.TvmqError, match="resnet18"):
        models.create("resnet-18")


def test_digits_models_train_quickly(digits_data):
    from tvmq import train

    tr, te = digits_data
    model = train.train(models.create("digits_cnn"), tr, epochs=8, progress=False)
    acc = train.accuracy(train.predict(model, te.x), te.y)
    assert acc > 90.0, f"digits CNN reached only {acc:.1f}% after 8 epochs"


def test_resnet20_digits_is_a_1_channel_resnet20():
    model = models.create("resnet20_digits")
    assert models.input_shape("resnet20_digits") == (1, 1, 32, 32)
    assert model.conv1.in_channels == 1 and len(model.layer3) == 3
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 21  # stem + 9 blocks x 2 + 2 downsample shortcuts
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_resnet20_digits_recipe_reaches_97_percent():
    import time

    from tvmq import data, train

    name = "resnet20_digits"
    tr, te = data.digits(size=32)
    start = time.perf_counter()
    model = train.train(models.create(name), tr, epochs=models.train_epochs(name),
                        lr=models.train_lr(name), progress=False)
    seconds = time.perf_counter() - start
    acc = train.accuracy(train.predict(model, te.x), te.y)
    assert acc >= 97.0, (f"{name}: {acc:.2f}% after {models.train_epochs(name)} epochs "
                         f"({seconds:.0f} s); the recipe should reach >= 97%")
    print(f"{name}: {acc:.2f}% test accuracy, trained in {seconds:.0f} s")
