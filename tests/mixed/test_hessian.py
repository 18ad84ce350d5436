"""Hutchinson traces against exact Hessians."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from tvmq.errors import ConfigError
from tvmq.mixed.hessian import batches_of, hutchinson_traces


class _Scale(nn.Module):
    """``y = w * x`` elementwise: the Hessian of ``mean(y^2)`` in ``w`` is diagonal."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, dtype=torch.float64))

    def forward(self, x):
        return self.weight * x


def _squares(out, _y):
    return (out ** 2).sum(dim=1).mean()


def test_diagonal_hessian_is_exact_in_one_sample():
    """With a diagonal Hessian every Rademacher sample is the trace: checks the HVP and the
    loss scaling across batches (trace = 2 * mean over all samples of sum x^2)."""
    torch.manual_seed(0)
    net = nn.Sequential(_Scale(5))
    x = torch.randn(12, 5, dtype=torch.float64)
    batches = [(x[:5], None), (x[5:], None)]  # unequal batches
    tr = hutchinson_traces(net, {"0": net[0]}, batches, _squares, acts=False, min_iter=1,
                           max_iter=1, progress=False)
    assert tr.weight["0"] == pytest.approx(2 * float((x ** 2).sum(dim=1).mean()), rel=1e-12)


def _tiny():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.randn(12, 4, dtype=torch.float64)
    return net, x, torch.randint(0, 2, (12,))


def _exact_weight_trace(net, x, y, name):
    params = dict(net.named_parameters())

    def loss(w):
        return nn.functional.cross_entropy(functional_call(net, {**params, name: w}, (x,)), y)

    w0 = params[name].detach()
    return torch.autograd.functional.hessian(loss, w0).reshape(w0.numel(), -1).trace().item()


def _exact_input_trace(net, x, y):
    hid = net[1](net[0](x)).detach()
    h = torch.autograd.functional.hessian(
        lambda a: nn.functional.cross_entropy(net[2](a), y), hid)
    return h.reshape(hid.numel(), -1).trace().item()


def test_traces_match_exact_hessian_of_tiny_network():
    net, x, y = _tiny()
    layers = {"0": net[0], "2": net[2]}
    tr = hutchinson_traces(net, layers, batches_of(list(zip([x[:6], x[6:]], [y[:6], y[6:]])),
                                                   12, 6),
                           tol=0.0, min_iter=1, max_iter=1500, seed=1, progress=False)
    checks = [(tr.weight["0"], tr.weight_stderr["0"], _exact_weight_trace(net, x, y, "0.weight")),
              (tr.weight["2"], tr.weight_stderr["2"], _exact_weight_trace(net, x, y, "2.weight")),
              (tr.act["2"], tr.act_stderr["2"], _exact_input_trace(net, x, y))]
    for est, err, exact in checks:
        # unbiased: within 4 standard errors; and the estimate is informative (err small)
        assert abs(est - exact) < 4 * err and err < 0.1 * abs(exact), (est, err, exact)


def test_stops_at_tolerance_before_the_cap():
    net, x, y = _tiny()
    loose = hutchinson_traces(net, {"2": net[2]}, [(x, y)], tol=0.5, min_iter=3, max_iter=300,
                              progress=False)
    assert 3 <= loose.iterations < 300
    capped = hutchinson_traces(net, {"2": net[2]}, [(x, y)], tol=0.0, min_iter=1, max_iter=5,
                               progress=False)
    assert capped.iterations == 5


def test_bad_iteration_bounds():
    net, x, y = _tiny()
    with pytest.raises(ConfigError, match="min_iter"):
        hutchinson_traces(net, {"2": net[2]}, [(x, y)], min_iter=1, max_iter=0)
    with pytest.raises(ConfigError, match="empty"):
        batches_of([], 8, 4)
