"""PTQ observers and the calibration loop."""
import pytest
import torch

from tvmq.quant import (FakeQuantizer, MinMaxObserver, MSEObserver, PercentileObserver,
                        PTQConfig, QuantSpec, get_preset, quantize_, quantizers)
from tvmq.train import accuracy, predict


def _observe(observer, x, bits=8, symmetric=False):
    q = FakeQuantizer(QuantSpec(bits, symmetric=symmetric), "act", observer)
    q.observing = True
    for chunk in x.split(1000):
        q(chunk)
    q.observing = False
    q.set_from_stats()
    return q


def _sqnr_db(x, q):
    with torch.no_grad():
        err = q.eval()(x) - x
    return float(10 * torch.log10(x.pow(2).mean() / err.pow(2).mean()))


def test_minmax_covers_range():
    x = torch.linspace(-1.0, 3.0, 4001)
    q = _observe(MinMaxObserver(), x)
    assert q.scale.item() == pytest.approx(4.0 / 255, rel=1e-5)
    assert q.zero_point.item() == round(1.0 / (4.0 / 255))


def test_percentile_and_mse_clip_outliers():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20000), torch.tensor([60.0, -60.0])])
    s_minmax = _observe(MinMaxObserver(), x, 4).scale.item()
    s_pct = _observe(PercentileObserver(99.9), x, 4).scale.item()
    q_mse = _observe(MSEObserver(), x, 4)
    assert s_pct < s_minmax / 5 and q_mse.scale.item() < s_minmax / 5
    sqnr = {n: _sqnr_db(x, _observe(o, x, 4)) for n, o in
            (("minmax", MinMaxObserver()), ("mse", MSEObserver()))}
    assert sqnr["mse"] > sqnr["minmax"] + 3, f"SQNR dB: {sqnr}"


def test_symmetric_activation_picks_unsigned_grid_for_relu_data():
    q = _observe(MinMaxObserver(), torch.rand(1000), 4, symmetric=True)
    assert (q.qmin, q.qmax) == (0, 15)


def test_ptq_w8a8_close_to_fp32(trained, digits):
    train_set, test_set = digits
    model = trained("digits_cnn")
    fp32 = accuracy(predict(model, test_set.x), test_set.y)
    quantize_(model, PTQConfig(get_preset("w8a8"), calibration=train_set, progress=False,
                               max_batches=4))
    assert all(bool(q.initialized) for q in quantizers(model))
    acc = accuracy(predict(model, test_set.x), test_set.y)
    assert acc >= fp32 - 1.0, f"PTQ W8A8 {acc:.2f}% vs fp32 {fp32:.2f}%"
