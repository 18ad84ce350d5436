"""WDR against scipy's kurtosis/skewness; the GPG distillation term."""
from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from tvmq.eqnet import distill_loss, moments, wdr_loss


def test_moments_match_scipy(rng):
    w = rng.gamma(2.0, size=500).astype(np.float64)
    k, s = moments(torch.from_numpy(w))
    assert abs(float(k) - stats.kurtosis(w, fisher=False)) < 1e-9
    assert abs(float(s) - stats.skew(w)) < 1e-9


def test_wdr_value_matches_numpy_formula(rng):
    ws = [rng.standard_normal((8, 4, 3, 3)), rng.laplace(size=(10, 32)),
          rng.uniform(-1, 1, size=(16, 16))]

    def kurt_np(w):
        z = (w - w.mean()) / w.std()
        return (z ** 4).mean(), (z ** 3).mean()

    ks, ss = zip(*(kurt_np(w.ravel()) for w in ws))
    ref = 0.3 * np.mean((np.array(ks) - 1.8) ** 2) + 0.7 * np.mean(np.array(ss) ** 2)
    got = wdr_loss([torch.from_numpy(w) for w in ws], kurtosis_rate=0.3, skewness_rate=0.7)
    assert abs(float(got) - ref) < 1e-9, (float(got), ref)


def test_wdr_is_near_zero_for_uniform_and_pulls_gaussian_weights(rng):
    uni = torch.from_numpy(rng.uniform(-1, 1, 200_000))
    assert float(wdr_loss([uni])) < 1e-3
    w = torch.from_numpy(rng.laplace(size=4000)).requires_grad_()
    opt = torch.optim.Adam([w], lr=0.02)
    before = wdr_loss([w]).item()
    for _ in range(100):
        opt.zero_grad()
        wdr_loss([w]).backward()
        opt.step()
    assert wdr_loss([w]).item() < 0.5 * before


def test_distill_loss_is_kl_plus_ce():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    p, logq = t.softmax(1), s.log_softmax(1)
    kl = (p * (p.log() - logq)).sum(1).mean()
    ce = -logq[torch.arange(5), y].mean()
    assert torch.allclose(distill_loss(s, t, y, alpha=0.25), 0.25 * kl + 0.75 * ce, atol=1e-6)
    assert torch.allclose(distill_loss(t, t, y, alpha=1.0), torch.tensor(0.0), atol=1e-6)
