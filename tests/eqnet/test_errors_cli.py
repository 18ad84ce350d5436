"""Bad inputs raise ConfigError with the corrected call; the CLI parses and runs."""
from __future__ import annotations

import random

import pytest
import torch

import tvmq.eqnet as eqnet
from tvmq.errors import ConfigError
from tvmq.mixed import SizeBudget


@pytest.mark.parametrize("kwargs, match", [
    ({"weight_bits": (1, 4)}, r"use ElasticSpace\(weight_bits=\(2, 4\)\)"),
    ({"act_bits": (4, 9)}, r"use ElasticSpace\(act_bits=\(4, 8\)\)"),
    ({"per_channel": True}, r"use ElasticSpace\(per_channel=\(True,\)\)"),
    ({"first_last_bits": 12}, r"first_last_bits=8"),
])
def test_bad_space(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        eqnet.ElasticSpace(**kwargs)


def test_bad_subnets(supernet):
    sub = supernet.uniform(4, 4)
    sub.bits["features.0"] = (4, 4)
    with pytest.raises(ConfigError, match="fixed at 8 bits"):
        supernet.set_subnet(sub)
    with pytest.raises(ConfigError, match="outside the space"):
        eqnet.ElasticSpace(weight_bits=(2, 4)).uniform(supernet.layers, 3, 4)
    with pytest.raises(ConfigError, match="missing"):
        supernet.set_subnet(eqnet.Subnet({"features.3": (4, 4)}))


def test_bad_calls(supernet, digits_data):
    with pytest.raises(ConfigError, match="Supernet"):
        eqnet.Supernet("not a model")
    with pytest.raises(ConfigError, match="num_subnets=4"):
        eqnet.GPGConfig(num_subnets=1)
    with pytest.raises(ConfigError, match="kind="):
        eqnet.fit_predictor(supernet, [supernet.largest()] * 4, [1, 2, 3, 4], kind="mlp")
    with pytest.raises(ConfigError, match="average weight bits"):
        eqnet.search(supernet, lambda s: 0.0, SizeBudget(avg_bits=2.0),
                     torch.from_numpy(digits_data[1].x[:1]), progress=False)
    with pytest.raises(ConfigError, match="not a budget"):
        eqnet.search(supernet, lambda s: 0.0, 3, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="not found"):
        eqnet.Supernet.load(supernet.model, "/nonexistent/super.pt")


def test_cli_parses_into_the_handlers():
    from tvmq.cli import build_parser
    from tvmq.eqnet import cli

    args = build_parser().parse_args(["eqnet", "train", "digits_cnn", "--weight-bits", "2,4,8",
                                      "--granularity", "per_tensor", "--act-symmetry", "sym"])
    assert args.func is cli.run_train and args.weight_bits == (2, 4, 8)
    assert args.granularity == (False,) and args.act_symmetry == (True,)
    args = build_parser().parse_args(["eqnet", "search", "s.pt", "--bops", "w4a4"])
    assert args.func is cli.run_search and args.avg_bits is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eqnet", "search", "s.pt"])  # a budget is required


def test_cli_train_search_export(tmp_path, capsys):
    import tvmq.quant as tq
    from tvmq.cli import main
    from tvmq.mixed import bits_of

    ckpt, plan, onnx = tmp_path / "s.pt", tmp_path / "plan.json", tmp_path / "m.onnx"
    assert main(["eqnet", "train", "digits_cnn", "--fp32-epochs", "1", "--epochs", "1",
                 "--weight-bits", "2,4,8", "--act-bits", "4,8", "-o", str(ckpt)]) == 0
    assert main(["eqnet", "search", str(ckpt), "--avg-bits", "3.5", "--samples", "8",
                 "--population", "6", "--generations", "2", "-o", str(plan),
                 "--plot", str(tmp_path / "s.png")]) == 0
    bits = bits_of(tq.load_plan(plan))
    assert bits["features.0"] == (8, 8) and (tmp_path / "s.png").stat().st_size > 0
    assert main(["eqnet", "export", str(ckpt), "--plan", str(plan), "-o", str(onnx)]) == 0
    assert onnx.stat().st_size > 0
    out = capsys.readouterr().out
    assert "Kendall tau" in out and "tvmq compile" in out


def test_cli_errors_are_one_line(tmp_path, capsys):
    from tvmq.cli import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eqnet", "export", str(bad), "--plan", "p.json"]) == 2
    assert "not a tvmq supernet checkpoint" in capsys.readouterr().err
