"""The per-(layer, bits) latency table: key checks, cache, prediction; one real measurement."""
from __future__ import annotations

import json

import pytest

from tvmq._tvm import TVM_VERSION
from tvmq.errors import ConfigError
from tvmq.mixed import LatencyTable, latency_table, model_key
from tvmq.mixed.latency import board_cpu


def _table(**changes) -> LatencyTable:
    fields = dict(board="host", cpu=board_cpu("host"), model="digits_cnn:abc",
                  tvm_version=TVM_VERSION, device="local", entries={
                      "a": {"w2a8": 0.1, "w8a8": 0.3}, "b": {"w2a8": 0.2, "w8a8": 0.5}},
                  totals={"w2a8": {"total_ms": 0.5, "layers_ms": 0.3},
                          "w8a8": {"total_ms": 1.2, "layers_ms": 0.8},
                          "w4a8": {"total_ms": 9.0, "layers_ms": 0.4}})
    fields.update(changes)
    return LatencyTable(**fields)


def test_predict_is_layers_plus_median_overhead():
    t = _table()
    assert t.overhead_ms == pytest.approx(0.4)  # median of 0.2, 0.4, 8.6: robust to a stall
    assert t.predict({"a": (2, 8), "b": (8, 8)}) == pytest.approx(0.1 + 0.5 + 0.4)
    with pytest.raises(ConfigError, match="no 'a' at W3A8"):
        t.ms("a", 3, 8)


@pytest.mark.parametrize("field, value", [("board", "rasp4b"), ("model", "resnet20:xyz"),
                                          ("tvm_version", "0.25.0"), ("cpu", "other")])
def test_tables_from_elsewhere_are_refused(field, value):
    t = _table(**{field: value})
    with pytest.raises(ConfigError, match=f"measured for {field} '{value}'"):
        t.check("host", "digits_cnn:abc")
    _table().check("host", "digits_cnn:abc")  # the right one passes


def test_save_load_and_bad_files(tmp_path):
    t = _table()
    back = LatencyTable.load(t.save(tmp_path / "t.json"))
    assert back == t
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        LatencyTable.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ConfigError, match="not a tvmq latency table"):
        LatencyTable.load(tmp_path / "other.json")
    with pytest.raises(ConfigError, match="not found"):
        LatencyTable.load(tmp_path / "missing.json")


def test_model_key_depends_on_layers():
    from tvmq import models

    a = model_key(models.create("digits_cnn"), "m")
    assert a == model_key(models.create("digits_cnn", seed=3), "m")  # weights do not matter
    assert a != model_key(models.create("resnet20_digits"), "m")


def test_rounds_alternate_and_keep_the_fastest(monkeypatch):
    import tvmq.mixed.latency as lat

    calls, slow = [], {("w2a8", 1): 50.0, ("w2a8", 2): 5.0}  # load during two rounds

    def fake(art, device, cross, number, repeat):
        rnd = sum(1 for c in calls if c == art)
        calls.append(art)
        f = slow.get((art, rnd), 1.0)
        return {"a": f * (1.0 if art == "w2a8" else 2.0)}, f * 3.0, "m", "here"

    monkeypatch.setattr(lat, "_measure", fake)
    out = lat._timed_rounds({"w2a8": "w2a8", "w8a8": "w8a8"}, "local", False, 1, 1, 3, False)
    assert calls == ["w2a8", "w8a8"] * 3
    assert out["w2a8"][0] == {"a": 1.0} and out["w2a8"][1] == 3.0
    assert out["w8a8"][0] == {"a": 2.0}


@pytest.mark.build
def test_measured_on_this_host_and_cached(tmp_path, trained_digits_cnn, digits_data,
                                          monkeypatch):
    cache = tmp_path / "lat.json"
    table = latency_table(trained_digits_cnn, digits_data[0], "digits_cnn",
                          weight_bits=(2, 8), cache=cache, number=3, repeat=3, rounds=1,
                          progress=False)
    layers = ["features.0", "features.3", "features.6", "classifier"]
    assert sorted(table.entries) == sorted(layers)  # names from meta.json 'layers'
    assert all(table.ms(n, w, 8) > 0 for n in layers for w in (2, 8))
    assert set(table.totals) == {"w2a8", "w8a8"} and cache.is_file()

    import tvmq.mixed.latency as lat

    def _no_compile(*a, **k):
        raise AssertionError("cached choices must not be measured again")

    monkeypatch.setattr(lat, "_uniform_artifact", _no_compile)
    again = latency_table(trained_digits_cnn, digits_data[0], "digits_cnn", weight_bits=(8, 2),
                          cache=cache, progress=False)
    assert again.entries == table.entries
    from tvmq import models

    with pytest.raises(ConfigError, match="measured for model"):
        latency_table(models.create("resnet20_digits"), digits_data[0], "digits_cnn",
                      weight_bits=(2,), cache=cache, progress=False)
