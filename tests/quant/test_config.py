"""Config validation (errors show the corrected call), presets, handler dispatch."""
import pytest
from torch import nn

from tvmq.errors import ConfigError
from tvmq.quant import (FakeQuantConfig, LSQConfig, LSQPlusConfig, PerChannel, PerTensor,
                        PercentileObserver, PTQConfig, QATConfig, QuantSpec, get_preset,
                        list_presets, quantize_)


@pytest.mark.parametrize("bits", [1, 9, 16])
def test_bits_out_of_range(bits):
    with pytest.raises(ConfigError, match=r"fix: use QuantSpec\(bits=[28]"):
        QuantSpec(bits)


def test_granularity_must_be_an_object():
    with pytest.raises(ConfigError, match="granularity=PerChannel"):
        QuantSpec(4, granularity="per_channel")
    with pytest.raises(ConfigError, match=r"PerChannel\(axis=0\)"):
        PerChannel(axis=1)
    assert PerTensor() == PerTensor() and hash(PerChannel()) == hash(PerChannel(0))


def test_activation_per_channel_rejected():
    with pytest.raises(ConfigError, match=r"activation=QuantSpec\(bits=8, granularity=PerTensor"):
        FakeQuantConfig(activation=QuantSpec(8, PerChannel()))


def test_lsq_rejects_asymmetric_activation_and_points_to_lsqplus():
    with pytest.raises(ConfigError, match="LSQPlusConfig"):
        LSQConfig(activation=QuantSpec(4, symmetric=False))


def test_lsqplus_rejects_symmetric_activation():
    with pytest.raises(ConfigError, match=r"symmetric=False"):
        LSQPlusConfig(activation=QuantSpec(4, symmetric=True))


def test_layer_types_and_first_last_validated():
    with pytest.raises(ConfigError, match="layer_types="):
        LSQConfig(layer_types=("Conv1d",))
    with pytest.raises(ConfigError, match="first_last_bits=8"):
        LSQConfig(first_last_bits=12)


def test_step_configs_validate():
    with pytest.raises(ConfigError, match="step='prepare'"):
        QATConfig(LSQConfig(), step="train")
    with pytest.raises(ConfigError, match="calibration=train_set"):
        PTQConfig(LSQConfig())
    with pytest.raises(ConfigError, match="not a method config"):
        QATConfig("w4a4")
    with pytest.raises(ConfigError, match="overrides="):
        QATConfig(LSQConfig(), overrides={"features.0": 4})
    with pytest.raises(ConfigError, match="percentile=99.99"):
        PercentileObserver(30)


def test_bare_method_config_is_not_a_step():
    with pytest.raises(ConfigError, match=r"QATConfig\(LSQConfig"):
        quantize_(nn.Linear(2, 2), LSQConfig())


def test_presets():
    names = list_presets()
    for name in ("w8a8", "w4a8", "w4a4", "w3a3", "w2a2", "w4a4_lsqplus", "w2a2_lsqplus"):
        assert name in names
    assert type(get_preset("w4a4")) is LSQConfig
    assert type(get_preset("w3a3_lsqplus")) is LSQPlusConfig
    assert get_preset("w4a8").weight.bits == 4 and get_preset("w4a8").activation.bits == 8
    # reduce_range-style: 7-bit weights in every layer (first and last not raised to 8)
    for name in ("w7a8", "w7a8_lsqplus"):
        assert get_preset(name).weight.bits == 7 and get_preset(name).first_last_bits is None
    assert get_preset("w8a8").first_last_bits == 8
    with pytest.raises(ConfigError, match="use one of"):
        get_preset("w5a5")
