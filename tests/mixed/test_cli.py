"""``tvmq search-bits``: parsing, a tiny end-to-end run, one-line errors."""
from __future__ import annotations

import pytest

import tvmq.quant as tq
from tvmq.cli import build_parser, main
from tvmq.mixed import bits_of


def test_parses_into_the_handler():
    from tvmq.mixed import cli

    args = build_parser().parse_args(["search-bits", "digits_cnn", "--bops", "w4a4",
                                      "--weight-bits", "2,4,8", "--tie", "a,b", "-o", "p.json"])
    assert args.func is cli.run and args.bops == "w4a4" and args.weight_bits == (2, 4, 8)
    assert args.tie == ["a,b"] and args.avg_bits is None
    with pytest.raises(SystemExit):  # exactly one budget
        build_parser().parse_args(["search-bits", "digits_cnn", "--avg-bits", "3",
                                   "--bops", "w4a4"])


def test_search_bits_writes_a_plan_within_budget(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = main(["search-bits", "digits_cnn", "--avg-bits", "3", "--fp32-epochs", "2",
                 "--samples", "64", "--max-iter", "2", "-o", str(out)])
    assert code == 0
    bits = bits_of(tq.load_plan(out))
    assert sorted(bits) == ["classifier", "features.0", "features.3", "features.6"]
    sizes = {"features.0": 144, "features.3": 4608, "features.6": 9216, "classifier": 320}
    mean = sum(sizes[n] * w for n, (w, _) in bits.items()) / sum(sizes.values())
    assert mean <= 3 and {a for _, a in bits.values()} == {8}
    assert "predicted:" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--avg-bits", "1.5"], "feasible: 2..8 average weight bits"),
    (["--bops", "lots"], "--bops 'lots' is neither"),
])
def test_bad_budget_is_one_line(tmp_path, capsys, argv, match):
    code = main(["search-bits", "digits_cnn", "--fp32-epochs", "1", "--samples", "16",
                 "--max-iter", "1", *argv, "-o", str(tmp_path / "p.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "p.json").exists()
