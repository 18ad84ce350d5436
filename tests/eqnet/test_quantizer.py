"""The elastic quantizer against a NumPy fake-quant reference at every bit width.

Rounding: ``torch.round`` rounds half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2), as ONNX
``QuantizeLinear`` and ``np.round`` do; the reference uses ``np.round``. Tolerance: float32
results of the same ops, 1e-6 relative.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tvmq.eqnet import ElasticQuantizer
from tvmq.eqnet.quantizer import N_BITS


def fake_quant_np(x, scale, zp, qmin, qmax):
    """``(clip(round_half_even(x / s) + z, qmin, qmax) - z) * s``."""
    return (np.clip(np.round(x / scale) + zp, qmin, qmax) - zp) * scale


def _weight(rng, shape=(6, 3, 3, 3)):
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_matches_numpy(rng, bits, per_channel):
    w = _weight(rng)
    q = ElasticQuantizer("weight", channels=6).eval()
    q.init_from(w)
    q.set(bits, per_channel=per_channel)
    k = bits - 2
    s = (q.scale_channel[:, k].detach().numpy().reshape(-1, 1, 1, 1) if per_channel
         else q.scale_tensor[k].item())
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    ref = fake_quant_np(w.numpy(), s, 0, lo, hi)
    np.testing.assert_allclose(q(w).detach().numpy(), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
def test_activation_matches_numpy(rng, bits, symmetric):
    x = torch.from_numpy(np.abs(rng.standard_normal((4, 8, 5, 5))).astype(np.float32) + 0.1)
    q = ElasticQuantizer("act").eval()
    q.init_from(x)
    q.set(bits, symmetric=symmetric)
    k = bits - 2
    qmax = (1 << bits) - 1  # never negative: unsigned grid either way
    if symmetric:
        s, z = q.scale_sym[k].item(), 0.0
    else:
        s = q.scale_asym[k].item()
        z = float(np.clip(np.round(-q.offset_asym[k].item() / s), qmax - 255, 255))
    ref = fake_quant_np(x.numpy(), np.float32(s), z, 0, qmax)
    np.testing.assert_allclose(q(x).detach().numpy(), ref, rtol=1e-6, atol=1e-7)


def test_signed_activations_use_the_signed_grid(rng):
    x = torch.from_numpy(rng.standard_normal((2, 64)).astype(np.float32))
    q = ElasticQuantizer("act").eval()
    q.init_from(x)
    q.set(3, symmetric=True)
    assert q.grid() == (-4, 3)
    assert len(np.unique(q(x).detach().numpy())) <= 8


def test_ties_round_half_to_even():
    q = ElasticQuantizer("act").eval()
    q.init_from(torch.tensor([-3.0, 3.0]))
    q.scale_sym.data.fill_(1.0)
    q.set(4, symmetric=True)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    assert q(x).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, -2.0]


def test_switching_bits_changes_forward(rng):
    w = _weight(rng)
    q = ElasticQuantizer("weight", channels=6).eval()
    q.init_from(w)
    outs = {}
    for b in range(2, 9):
        q.set(b)
        outs[b] = q(w).detach()
        assert len(torch.unique(outs[b][0])) <= 2 ** b
    errs = [float(((outs[b] - w) ** 2).mean()) for b in range(2, 9)]
    assert all(a > b for a, b in zip(errs, errs[1:])), f"error must fall with bits: {errs}"
    q.set(4, per_channel=False)
    assert not torch.equal(q(w), outs[4])


def test_clipping_search_beats_min_max(rng):
    """The factor 1.0 (min/max) is a candidate, so the MSE search is never worse."""
    w = _weight(rng)
    q = ElasticQuantizer("weight", channels=6).eval()
    q.init_from(w)
    for b in (2, 4):
        q.set(b, per_channel=False)
        mse = ((q(w) - w) ** 2).mean().item()
        s = float(w.abs().max()) / ((1 << (b - 1)) - 1)
        minmax = ((fake_quant_np(w.numpy(), s, 0, -(1 << (b - 1)), (1 << (b - 1)) - 1)
                   - w.numpy()) ** 2).mean()
        assert mse <= minmax + 1e-9


@pytest.mark.parametrize("role, kw", [("weight", {"per_channel": False}),
                                      ("weight", {"per_channel": True}),
                                      ("act", {"symmetric": True}),
                                      ("act", {"symmetric": False})])
def test_to_fixed_is_the_same_forward(rng, role, kw):
    x = _weight(rng) if role == "weight" else torch.from_numpy(
        rng.standard_normal((4, 6, 3, 3)).astype(np.float32))
    q = ElasticQuantizer(role, channels=6).eval()
    q.init_from(x)
    q.set(3, **kw)
    fixed = q.to_fixed().eval()
    assert fixed.bits == 3 and q.spec().bits == 3
    torch.testing.assert_close(fixed(x), q(x), rtol=0, atol=0)


def test_scales_are_learned_per_bit_width(rng):
    w = _weight(rng)
    q = ElasticQuantizer("weight", channels=6).train()
    q.init_from(w)
    q.set(3)
    (q(w) - w).pow(2).sum().backward()
    grad = q.scale_channel.grad
    assert grad.shape == (6, N_BITS)
    assert grad[:, 1].abs().sum() > 0 and grad[:, [0, 2, 3, 4, 5, 6]].abs().sum() == 0
