"""Zero-shot calibration (tvmq.calib / tvmq.zeroshot): the weight-derived targets against
Monte Carlo, the three synthesizers, PTQ on synthesized data, PNG output, bad input, CLI."""
from __future__ import annotations

import argparse
import copy
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests._threads import one_torch_thread
import tvmq.quant as tq
from tvmq import models, zeroshot
from tvmq.calib import GZSQConfig, SynthesisConfig, register_synthesizer, weight_band
from tvmq.calib.gzsq import fold_conv_bn
from tvmq.errors import ConfigError
from tvmq.train import predict, train

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def nobn(digits_data):
    """The BN-free digits CNN, briefly trained (its zoo learning rate)."""
    return train(models.create("digits_cnn_nobn"), digits_data[0], epochs=6, lr=5e-2,
                 progress=False)


@pytest.fixture(scope="module")
def bn(digits_data):
    """The digits CNN with BatchNorm, briefly trained."""
    return train(models.create("digits_cnn"), digits_data[0], epochs=3, progress=False)


def _sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()))


# -- the targets ------------------------------------------------------------------------------
def _sd(out: torch.Tensor) -> torch.Tensor:
    return out.transpose(0, 1).reshape(out.shape[1], -1).std(1)


@pytest.mark.parametrize("groups, padding", [(1, 1), (1, 0), (4, 1), (8, 1)])
def test_lower_end_is_the_sd_of_independent_inputs(groups, padding):
    """Independent pixels (distinct variances and means per channel): the output's channel
    standard deviation is the band's lower end, zero padding included (Monte Carlo, 3%)."""
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, padding=padding, groups=groups)
    std = torch.rand(8, generator=gen) * 2 + 0.5
    mean = torch.randn(8, generator=gen)
    x = torch.randn(4000, 8, 6, 6, generator=gen) * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    with torch.no_grad():
        lo, hi = weight_band(conv, x)
        got = _sd(conv(x))
    assert torch.allclose(got, lo, rtol=0.03), (got / lo)
    assert bool((hi >= lo).all())


def test_upper_end_is_the_sd_of_filter_shaped_inputs():
    """Inputs whose variance lies along the unit filters, equally (x = sum_j g_j u_j, g iid):
    each output's standard deviation is the band's upper end (Monte Carlo, 3%); white inputs
    of the same per-feature variance are at the lower end."""
    gen = torch.Generator().manual_seed(2)
    fc = nn.Linear(24, 12)
    w = fc.weight.detach()
    unit = w / w.norm(dim=1, keepdim=True)
    x = 1.7 * torch.randn(20000, 12, generator=gen) @ unit
    with torch.no_grad():
        lo, hi = weight_band(fc, x)
        got = fc(x).std(0)
        white = fc(torch.randn(20000, 24, generator=gen) * x.std(0)).std(0)
    assert torch.allclose(got, hi, rtol=0.03), (got / hi)
    assert bool((white < hi).all()) and torch.allclose(white, lo, rtol=0.03)


def test_folding_keeps_the_function():
    model = models.create("digits_cnn")
    x = torch.randn(4, *SHAPE)
    folded = fold_conv_bn(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


# -- the synthesizers -------------------------------------------------------------------------
def test_synthesize_returns_a_dataset_and_leaves_the_model_alone(nobn):
    model = copy.deepcopy(nobn).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = zeroshot.synthesize(model, 12, "gzsq", input_shape=(1, *SHAPE), iters=3,
                             progress=False)
    assert ds.x.shape == (12, *SHAPE) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64 and ds.classes == [str(i) for i in range(10)]
    np.testing.assert_array_equal(ds.y, predict(nobn, ds.x).argmax(1))
    assert model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("method", ["gzsq", "zeroq", "noise"])
def test_seed_decides_the_images(method):
    model = models.create("digits_cnn")

    def run(seed):
        return zeroshot.synthesize(model, 8, method, input_shape=SHAPE, iters=2, seed=seed,
                                   progress=False).x

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))


def test_zeroq_matches_batchnorm_statistics(bn):
    """After ZeroQ, the BN inputs' batch means and stds are much closer to the running ones
    than they are for the starting noise."""
    model = bn
    noise = zeroshot.synthesize(model, 64, "noise", input_shape=SHAPE, progress=False)
    zq = zeroshot.synthesize(model, 64, "zeroq", input_shape=SHAPE, iters=150, progress=False)
    gaps = [_bn_gap(model, torch.from_numpy(ds.x)) for ds in (noise, zq)]
    assert gaps[1] < 0.25 * gaps[0], \
        f"BN statistic distance: noise {gaps[0]:.3f}, ZeroQ {gaps[1]:.3f}"


def _bn_gap(model: nn.Module, x: torch.Tensor) -> float:
    gap = []
    hooks = [m.register_forward_hook(lambda m, i, o: gap.append(
        (i[0].mean((0, 2, 3)) - m.running_mean).norm()
        + (i[0].std((0, 2, 3)) - m.running_var.sqrt()).norm()))
        for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return float(sum(gap))


def test_zeroq_refuses_a_model_without_batchnorm(nobn):
    with pytest.raises(ConfigError, match="no BatchNorm") as err:
        zeroshot.synthesize(nobn, 8, "zeroq", input_shape=SHAPE, progress=False)
    assert "gzsq" in err.value.fix


def test_gzsq_spreads_the_images_over_the_classes(nobn):
    """The class term: most GZSQ images are predicted as their assigned class (i mod 10);
    noise images are not."""
    assigned = np.arange(40) % 10
    gz = zeroshot.synthesize(nobn, 40, "gzsq", input_shape=SHAPE, progress=False)
    noise = zeroshot.synthesize(nobn, 40, "noise", input_shape=SHAPE, progress=False)
    hit, hit_noise = (gz.y == assigned).mean(), (noise.y == assigned).mean()
    assert hit >= 0.8 and hit_noise <= 0.5, \
        f"assigned class predicted: GZSQ {hit:.2f}, noise {hit_noise:.2f}"


def _band_position(model: nn.Module, x: np.ndarray) -> list[float]:
    """Mean over channels of sd / upper end, per conv layer."""
    calls = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, i[0], o))) for m in convs]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        return [float((_sd(o) / weight_band(m, i)[1]).mean()) for m, i, o in calls]


def test_band_term_moves_the_statistics(nobn):
    """With the band's lower end raised to its upper end (band term alone), every layer's sd
    moves up from where noise puts it, and the first conv's (free pixels) reaches the target."""
    cfg = GZSQConfig(floor=1.0, class_weight=0.0, tail_weight=0.0)
    pushed = _band_position(nobn, zeroshot.synthesize(nobn, 64, cfg, input_shape=SHAPE,
                                                      progress=False).x)
    noise = _band_position(nobn, zeroshot.synthesize(nobn, 64, "noise", input_shape=SHAPE,
                                                     progress=False).x)
    assert all(p > n + 0.02 for p, n in zip(pushed, noise)) and pushed[0] > 0.9, \
        f"sd / upper end per layer: band-pushed {np.round(pushed, 3)}, noise {np.round(noise, 3)}"


def test_ptq_on_gzsq_images_tracks_the_float_model(nobn, digits_data):
    """PTQ W8A8 calibrated on 128 GZSQ images: logit SQNR against fp32 on the test set."""
    test = digits_data[1]
    calib = zeroshot.synthesize(nobn, 128, "gzsq", input_shape=SHAPE, iters=100, progress=False)
    q = tq.quantize_(copy.deepcopy(nobn), tq.PTQConfig(tq.get_preset("w8a8"), calibration=calib,
                                                       progress=False))
    sqnr = _sqnr_db(predict(nobn, test.x), predict(q, test.x))
    assert sqnr > 30.0, f"W8A8 logit SQNR on GZSQ calibration {sqnr:.1f} dB"


def test_a_registered_synthesizer_plugs_in():
    @dataclasses.dataclass(frozen=True)
    class ConstConfig(SynthesisConfig):
        value: float = 0.5

    @register_synthesizer(ConstConfig)
    def _const(model, x0, cfg, bar):
        return torch.full_like(x0, cfg.value)

    ds = zeroshot.synthesize(models.create("digits_cnn"), 4, ConstConfig(value=0.25),
                             input_shape=SHAPE, progress=False)
    assert np.all(ds.x == 0.25)


# -- images -----------------------------------------------------------------------------------
def test_save_samples_writes_a_grid_and_reloadable_arrays(tmp_path):
    from tvmq import data

    ds = data.Dataset(np.random.default_rng(0).normal(size=(10, 1, 8, 8)).astype(np.float32),
                      np.arange(10), [str(i) for i in range(10)])
    png, npz = zeroshot.save_samples(ds, tmp_path / "out", "gzsq")
    img = Image.open(png)
    assert img.format == "PNG" and img.mode == "L"
    assert img.size == (4 * 32 + 5 * 2, 3 * 32 + 4 * 2)  # 4 columns, 3 rows, 8x8 enlarged 4x
    back = data.load_npz(npz)
    np.testing.assert_array_equal(back.x, ds.x)
    np.testing.assert_array_equal(back.y, ds.y)


def test_save_grid_rejects_non_images(tmp_path):
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        zeroshot.save_grid(np.zeros((3, 8)), tmp_path / "x.png")


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(method="deepinversion"), "unknown zero-shot method"),
    (dict(n=1), "n=1"),
    (dict(input_shape=None), "needs input_shape"),
    (dict(input_shape=(3, 32, 32)), "rejects inputs of shape"),
    (dict(input_shape=(1, 0, 8)), "positive ints"),
    (dict(iters=-1), "iters=-1"),
    (dict(lr=0.0), "lr=0.0"),
    (dict(batch_size=1), "batch_size=1"),
])
def test_bad_calls_name_the_problem_and_the_fix(kwargs, match):
    call = dict(n=8, method="gzsq", input_shape=SHAPE, progress=False)
    call.update(kwargs)
    with pytest.raises(ConfigError, match=match) as err:
        zeroshot.synthesize(models.create("digits_cnn"), **call)
    assert err.value.fix


def test_gzsq_config_validates():
    with pytest.raises(ConfigError, match="tail_sigmas") as err:
        GZSQConfig(tail_sigmas=0)
    assert "GZSQConfig(tail_sigmas=4.0)" in err.value.fix
    with pytest.raises(ConfigError, match="class_weight"):
        GZSQConfig(class_weight=-1.0)


# -- CLI --------------------------------------------------------------------------------------
def _parse(*argv):
    from tvmq.quant import cli

    parser = argparse.ArgumentParser(prog="tvmq")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["quantize", "digits_cnn_nobn", *argv])


def test_cli_zero_shot_flags_parse():
    from tvmq.quant.cli import _method

    args = _parse("--zero-shot", "-o", "q.onnx")
    assert args.zero_shot == "gzsq" and _method(args) == "ptq"
    args = _parse("--zero-shot", "zeroq", "--method", "ptq", "--save-samples", "s")
    assert args.zero_shot == "zeroq" and args.save_samples == "s" and _method(args) == "ptq"
    assert _parse().zero_shot is None and _method(_parse()) == "qat"


@pytest.mark.parametrize("argv, match", [
    (("--zero-shot", "--method", "qat"), "drop --method qat"),
    (("--save-samples", "dir"), "add --zero-shot"),
    (("--zero-shot", "zeroq"), "has no BatchNorm"),
])
def test_cli_refuses_contradictions_before_training(argv, match, capsys):
    from tvmq.cli import main

    assert main(["quantize", "digits_cnn_nobn", *argv]) == 2
    captured = capsys.readouterr()
    assert match in captured.err and "fp32 accuracy" not in captured.out


def test_cli_rejects_an_unknown_zero_shot_method():
    with pytest.raises(SystemExit):
        _parse("--zero-shot", "gan")


def test_cli_zero_shot_end_to_end(tmp_path, capsys):
    from tvmq.cli import main

    out = tmp_path / "q.onnx"
    rc = main(["quantize", "digits_cnn_nobn", "--zero-shot", "--fp32-epochs", "2",
               "--zs-samples", "16", "--zs-iters", "3", "--save-samples", str(tmp_path / "s"),
               "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file(), text
    assert "w8a8 zero-shot gzsq ptq accuracy" in text
    assert (tmp_path / "s" / "gzsq.png").is_file() and (tmp_path / "s" / "gzsq.npz").is_file()
