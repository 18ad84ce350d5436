"""Quantizer numerics against a NumPy reference, LSQ gradients, LSQ+ offset learning."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tvmq.quant import (FakeQuantizer, LSQPlusConfig, MinMaxObserver, PerChannel, PerTensor,
                        QuantSpec, fake_quant, grad_scale)
from tvmq.quant.quantizer import grid, qparams


def quantize_np(x, scale, zp, qmin, qmax):
    """Reference: ONNX QuantizeLinear (round half to even, then saturate)."""
    return np.clip(np.rint(x / scale) + zp, qmin, qmax)


def dequantize_np(q, scale, zp):
    return (q - zp) * scale


def test_ties_round_half_to_even():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    out = fake_quant(x, torch.tensor(1.0), torch.tensor(0.0), -128, 127)
    assert out.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, -2.0]


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (4, False), (8, True), (8, False)])
def test_saturation_at_bit_range(bits, signed):
    qmin, qmax = grid(bits, signed)
    x = torch.tensor([-1e4, 1e4])
    out = fake_quant(x, torch.tensor(0.1), torch.tensor(0.0), qmin, qmax)
    assert torch.allclose(out, torch.tensor([qmin * 0.1, qmax * 0.1]))


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), signed=st.booleans(),
       scale=st.floats(1e-3, 10.0), zp_frac=st.floats(0.0, 1.0),
       values=st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=64))
def test_fake_quant_matches_numpy(bits, signed, scale, zp_frac, values):
    qmin, qmax = grid(bits, signed)
    zp = 0.0 if signed else float(round(qmin + zp_frac * (qmax - qmin)))
    x = np.asarray(values, np.float32)
    s = np.float32(scale)
    ref = dequantize_np(quantize_np(x, s, zp, qmin, qmax), s, np.float32(zp))
    out = fake_quant(torch.from_numpy(x), torch.tensor(s), torch.tensor(zp), qmin, qmax)
    np.testing.assert_array_equal(out.numpy(), ref.astype(np.float32))
    # idempotent: quantized values lie on the grid
    again = fake_quant(out, torch.tensor(s), torch.tensor(zp), qmin, qmax)
    np.testing.assert_allclose(again.numpy(), out.numpy(), atol=1e-6 * scale)


def test_lsq_scale_gradient_matches_hand_computation():
    x = torch.tensor([0.26, -0.74, 0.9, 5.0, -5.0, 0.05])
    s = torch.tensor(0.25, requires_grad=True)
    qmin, qmax = -8, 7
    g = 1.0 / math.sqrt(x.numel() * qmax)
    fake_quant(x, grad_scale(s, g), torch.tensor(0.0), qmin, qmax).sum().backward()
    v = x / 0.25
    inside = (v >= qmin) & (v <= qmax)
    expected = torch.where(inside, torch.round(v) - v, v.clamp(qmin, qmax)).sum() * g
    assert s.grad.item() == pytest.approx(expected.item(), rel=1e-5)
    assert s.grad.item() == pytest.approx(g * ((1 - 1.04) + (-3 + 2.96) + (4 - 3.6) + 7 - 8
                                               + (0 - 0.2)), rel=1e-5)


def test_lsq_quantizer_applies_gradient_scale():
    q = FakeQuantizer(QuantSpec(4), "weight", MinMaxObserver(), learn_scale=True)
    w = torch.randn(8, 4)
    q.init_from(w)
    q.train()
    q(w).sum().backward()
    expected_g = 1.0 / math.sqrt(w.numel() * 7)
    s = q.scale.detach().clone().requires_grad_(True)
    fake_quant(w, s * 1.0, torch.tensor(0.0), -8, 7).sum().backward()
    assert q.scale.grad.item() == pytest.approx(s.grad.item() * expected_g, rel=1e-4)


def test_per_channel_weight_scales():
    q = FakeQuantizer(QuantSpec(8, PerChannel()), "weight", MinMaxObserver())
    w = torch.randn(4, 3, 3, 3) * torch.tensor([1.0, 2.0, 4.0, 8.0]).reshape(-1, 1, 1, 1)
    q.init_from(w)
    expected = w.abs().amax(dim=(1, 2, 3)) / 127
    torch.testing.assert_close(q.scale.detach(), expected)
    assert (q(w) - w).abs().max() <= expected.max() / 2 + 1e-6


def test_asymmetric_qparams_contain_zero():
    s, z = qparams(torch.tensor([0.5]), torch.tensor([2.0]), 0, 15, symmetric=False)
    assert z.item() == 0 and s.item() == pytest.approx(2.0 / 15)
    s, z = qparams(torch.tensor([-1.0]), torch.tensor([2.0]), 0, 15, symmetric=False)
    assert z.item() == round(1.0 / (3.0 / 15))


def test_lsqplus_offset_learns_biased_distribution():
    """Data in [-0.3, 3]: the offset must move from a poor start towards the minimum."""
    torch.manual_seed(0)
    spec = LSQPlusConfig().activation.with_bits(3)
    q = FakeQuantizer(spec, "act", MinMaxObserver(), learn_scale=True, learn_offset=True)
    data = torch.rand(256, 64) * 3.3 - 0.3
    q.init_from(torch.tensor([[0.5, 3.0]]))  # wrong start: offset 0.5 clips the negatives
    start_beta = -q.effective_qparams()[1].item() * q.effective_qparams()[0].item()
    opt = torch.optim.Adam(q.parameters(), lr=0.01)
    q.train()
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = ((q(data) - data) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    s, z = (t.detach() for t in q.effective_qparams())
    beta = -(z * s).item()
    assert beta < start_beta - 0.3, f"offset did not move: {start_beta:.3f} -> {beta:.3f}"
    assert losses[-1] < 0.5 * losses[0], f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    assert float(z) == round(float(z)), "zero point must stay an integer"


@pytest.mark.parametrize("per_channel", [True, False])
def test_bn_factor_goes_after_per_channel_weights(per_channel):
    """Per-channel weights quantize the conv's own weight and BN's factor scales the result
    (it joins the exported per-channel scale); per-tensor weights quantize the folded weight
    (the export stays per tensor)."""
    from tvmq.quant import LSQConfig, QATConfig, QuantConvBn2d, quantize_

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 2))
    bn = model[1]
    bn.running_var.copy_(torch.tensor([0.01, 1.0, 4.0, 100.0]))  # factors 10x apart
    bn.weight.data.copy_(torch.tensor([1.0, -0.5, 2.0, 0.3]))
    gran = PerChannel() if per_channel else PerTensor()
    cfg = LSQConfig(weight=QuantSpec(4, gran), activation=QuantSpec(8), first_last_bits=None)
    quantize_(model.eval(), QATConfig(cfg))
    layer = next(m for m in model.modules() if isinstance(m, QuantConvBn2d))
    wq = layer.weight_quant
    assert wq.bn_after_quant == per_channel
    seen = layer.quantizer_input()
    assert torch.equal(seen, layer.conv.weight if per_channel else layer.folded()[0])
    model(torch.randn(2, 3, 6, 6))
    factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    before = layer.quantized()[0].detach()
    quantize_(model, QATConfig(cfg, step="convert"))
    conv = model[0]
    d = conv.weight_quant.describe(conv.weight)
    after = conv.weight_quant(conv.weight).detach()
    torch.testing.assert_close(after, before, rtol=1e-6, atol=0)  # same forward
    shape = (-1, 1, 1, 1) if per_channel else ()
    exported = (d.q.astype(np.float32) - d.zero_point.reshape(shape)) * d.scale.reshape(shape)
    np.testing.assert_array_equal(after.numpy(), exported)  # PyTorch == the DQ, bit for bit
    if per_channel:
        s = wq.effective_qparams()[0].detach().reshape(-1)
        np.testing.assert_array_equal(d.scale, (s * factor).numpy())
    else:
        assert d.scale.ndim == 0
