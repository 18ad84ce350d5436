"""Per-layer plans: applied exactly as written, saved and loaded as JSON."""
import json

import pytest

import tvmq.quant as tq
from tvmq import models
from tvmq.errors import ConfigError
from tvmq.quant import (LSQConfig, MSEObserver, PercentileObserver, PerChannel, QATConfig,
                        QuantSpec, get_preset, load_plan, save_plan)


def _weight_bits(model, name):
    return model.get_submodule(name).weight_quant.bits


def test_plan_is_applied_as_written_first_layer_2_bits():
    """A solver's 2-bit first layer stays 2-bit (first_last_bits used to raise it to 8);
    the last layer, not in the plan, still gets first_last_bits."""
    model = models.create("digits_cnn")
    names = tq.quantizable_layers(model)
    plan = {names[0]: get_preset("w2a2")}
    tq.quantize_(model, QATConfig(get_preset("w4a4"), overrides=plan))
    assert _weight_bits(model, names[0]) == 2
    assert _weight_bits(model, names[-1]) == 8
    if len(names) > 2:
        assert _weight_bits(model, names[1]) == 4


def test_plan_round_trips_through_json(tmp_path):
    cfg = LSQConfig(weight=QuantSpec(3, PerChannel()), activation=QuantSpec(6),
                    first_last_bits=None, skip=("x",), weight_observer=PercentileObserver(99.9),
                    act_observer=MSEObserver())
    plan = {"features.0": cfg, "classifier": None, "features.3": get_preset("w4a4_lsqplus")}
    path = save_plan(plan, tmp_path / "plan.json")
    assert load_plan(path) == plan
    raw = json.loads(path.read_text())
    assert raw["classifier"] is None and raw["features.0"]["method"] == "LSQConfig"
    (tmp_path / "hand.json").write_text(json.dumps({"a": "w8a8", "b": {"method": "LSQConfig",
                                                                     "weight": {"bits": 5}}}))
    hand = load_plan(tmp_path / "hand.json")
    assert hand["a"] == get_preset("w8a8") and hand["b"].weight.bits == 5


@pytest.mark.parametrize("content, match", [
    ("[1, 2]", "not an object"), ("{", "not JSON"),
    ('{"a": {"method": "os.system"}}', "names no method config"),
    ('{"a": {"method": "LSQConfig", "bogus": 1}}', "unknown fields"),
    ('{"a": {"method": "LSQConfig", "weight": {"bits": 12}}}', "outside 2..8"),
    ('{"a": "w9a9"}', "unknown preset"),
])
def test_bad_plan_files_say_what_to_fix(tmp_path, content, match):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_plan(path)
    with pytest.raises(ConfigError, match="not found"):
        load_plan(tmp_path / "missing.json")


def test_plan_with_unknown_layer_lists_valid_names():
    model = models.create("digits_cnn")
    with pytest.raises(ConfigError, match="unknown layers"):
        tq.quantize_(model, QATConfig(get_preset("w8a8"), overrides={"nope": None}))
