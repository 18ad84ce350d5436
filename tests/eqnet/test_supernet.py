"""Supernet: switching, GPG training, BN recalibration, checkpoints, plans."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

import tvmq.eqnet as eqnet
import tvmq.quant as tq
from tvmq.errors import ConfigError
from tvmq.mixed import bits_of


def _x(digits_data, n=64):
    return torch.from_numpy(digits_data[1].x[:n])


def test_layers_and_fixed_first_last(supernet):
    assert supernet.layers == ["features.0", "features.3", "features.6", "classifier"]
    sub = supernet.sample(random.Random(0))
    assert sub.bits["features.0"] == (8, 8) and sub.bits["classifier"] == (8, 8)
    wide = eqnet.ElasticSpace(first_last_bits=None)
    assert wide.elastic_layers(supernet.layers) == supernet.layers


def test_subnets_give_different_outputs(supernet, digits_data):
    x = _x(digits_data)
    outs = []
    for b in (8, 2):
        supernet.set_subnet(supernet.uniform(b, b))
        with torch.no_grad():
            outs.append(supernet.eval()(x))
    assert not torch.allclose(*outs)
    q = supernet.layer("features.3")
    assert (q.weight_quant.bits, q.input_quant.bits) == (2, 2)


def test_gpg_step_decreases_loss_on_a_tiny_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 36, 4))
    x, y = torch.randn(32, 1, 6, 6), torch.randint(0, 4, (32,))
    sup = eqnet.Supernet(net, eqnet.ElasticSpace(weight_bits=(2, 4, 8), act_bits=(2, 4, 8)))
    sup.initialize([x])
    opt = torch.optim.SGD(sup.parameters(), lr=0.05, momentum=0.9)
    rng = random.Random(0)
    cfg = eqnet.GPGConfig(num_subnets=3)
    first = last = None
    for _ in range(30):
        opt.zero_grad()
        losses = eqnet.gpg_step(sup.train(), x, y, rng, cfg)
        opt.step()
        first = first or losses
        last = losses
    assert set(last) == {"wdr", "largest", "random1", "smallest"}
    assert last["largest"] < 0.5 * first["largest"], (first, last)
    assert last["smallest"] < first["smallest"], (first, last)


def test_bn_recalibration_changes_running_stats_and_activated_restores(supernet, digits_data):
    bn = supernet.layer("features.3").bn
    before = bn.running_mean.clone()
    with supernet.activated(supernet.uniform(2, 2), calibration=digits_data[0], bn_batches=2):
        during = bn.running_mean.clone()
    assert not torch.allclose(before, during)
    torch.testing.assert_close(bn.running_mean, before)
    supernet.set_subnet(supernet.uniform(2, 2)).label()
    supernet.recalibrate_bn(digits_data[0], batches=2)
    assert not torch.allclose(bn.running_mean, before)


def test_checkpoint_round_trip(tmp_path, supernet, fp32_cnn, digits_data):
    supernet.layer("features.3").weight_quant.scale_channel.data.mul_(1.1)
    path = supernet.save(tmp_path / "super.pt")
    loaded = eqnet.Supernet.load(fp32_cnn, path)
    sub = supernet.uniform(3, 4)
    x = _x(digits_data)
    supernet.set_subnet(sub)
    loaded.set_subnet(sub)
    with torch.no_grad():
        a, b = supernet.eval()(x), loaded.eval()(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_plan_is_a_tvmq_plan(tmp_path, supernet):
    sub = supernet.uniform(3, 4, per_channel=False, act_symmetric=False)
    plan = supernet.plan(sub)
    assert bits_of(plan) == sub.bits
    cfg = plan["features.3"]
    assert isinstance(cfg, tq.LSQPlusConfig) and isinstance(cfg.weight.granularity, tq.PerTensor)
    loaded = tq.load_plan(tq.save_plan(plan, tmp_path / "plan.json"))
    assert bits_of(loaded) == sub.bits
    tq.QATConfig(tq.get_preset("w8a8"), overrides=loaded)  # validates


def test_to_quantized_equals_the_supernet_subnet(supernet, digits_data):
    sub = supernet.uniform(3, 4, per_channel=False, act_symmetric=False)
    q = supernet.to_quantized(sub, calibration=digits_data[0], bn_batches=2)
    x = _x(digits_data)
    with supernet.activated(sub, digits_data[0], bn_batches=2), torch.no_grad():
        ref = supernet(x)
    with torch.no_grad():
        got = q(x)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, eqnet.ElasticQuantizer) for m in q.modules())
    assert supernet.subnet is not sub  # the supernet is switched back


@pytest.mark.slow
def test_train_improves_the_largest_and_smallest_subnets(fp32_cnn, digits_data):
    """The fixture's float model is under-trained (~80%): two supernet epochs must lift
    W8A8 above it and W2A2 well above chance."""
    from tvmq.train import accuracy, predict

    train_set, test_set = digits_data
    fp32 = accuracy(predict(fp32_cnn, test_set.x), test_set.y)
    net = eqnet.train(eqnet.Supernet(fp32_cnn), train_set, epochs=2, lr=2e-2, progress=False)
    accs = {}
    for b in (8, 2):
        with net.activated(net.uniform(b, b), train_set):
            accs[b] = accuracy(predict(net, test_set.x), test_set.y)
    assert accs[8] > fp32 and accs[2] > 50, f"fp32 {fp32:.1f}%, subnets {accs}"


def test_subnet_from_plan_round_trips(tmp_path, supernet):
    sub = supernet.uniform(4, 6, per_channel=False, act_symmetric=False)
    sub.bits["features.6"] = (2, 3)
    back = eqnet.subnet_from_plan(tq.load_plan(tq.save_plan(supernet.plan(sub),
                                                            tmp_path / "p.json")))
    assert back == sub


def test_teacher_logits_guide_the_largest_subnet(supernet, digits_data):
    x = _x(digits_data, 16)
    y = torch.from_numpy(digits_data[1].y[:16])
    cfg = eqnet.GPGConfig(num_subnets=2, kurtosis_rate=0, skewness_rate=0)
    plain = eqnet.gpg_step(supernet.train(), x, y, random.Random(0), cfg)
    supernet.zero_grad()
    taught = eqnet.gpg_step(supernet.train(), x, y, random.Random(0), cfg,
                            teacher_logits=torch.zeros(16, 10))
    assert "wdr" not in plain and plain["largest"] != taught["largest"]


def test_join_scales_follow_the_chosen_subnets(digits_data):
    """learn_joins='largest': the chain below the largest leaves the join scales' gradient
    untouched; 'none' gives them no gradient at all."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    cfg = eqnet.GPGConfig(num_subnets=3, kurtosis_rate=0, skewness_rate=0)
    grads = {}
    for mode in ("all", "largest", "none"):
        sup = eqnet.Supernet(net, eqnet.ElasticSpace(act_symmetric=(True,), first_last_bits=None),
                             learn_joins=mode)
        sup.initialize([x])
        assert sup.joins()
        eqnet.gpg_step(sup.train(), x, y, random.Random(0), cfg)
        grads[mode] = [q.scale_sym.grad for q in sup.joins()]
    assert all(g is None for g in grads["none"])
    assert any(not torch.equal(a, b) for a, b in zip(grads["all"], grads["largest"]))
    with pytest.raises(ConfigError, match="learn_joins='all'"):
        eqnet.Supernet(net, learn_joins="some")
