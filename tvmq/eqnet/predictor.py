"""The conditional quantization-aware accuracy predictor, and measuring subnets to train it.

A subnet is encoded as its per-layer ``(weight bits, act bits)`` of the elastic layers plus
the condition (per-channel weights, symmetric activations as 0/1): EQ-Net's conditional
encoding. The regressor is gradient-boosted trees (``xgboost``, or scikit-learn's
``GradientBoostingRegressor``) instead of the reference's MLP: a few hundred measured
subnets are too few for an MLP to beat trees, and both ship with tvmq already. Ranking
quality is Kendall's tau (``scipy.stats.kendalltau``) on held-out subnets.

>>> subs = eqnet.sample_subnets(net, 200, seed=0)
>>> accs = eqnet.measure(net, subs, val_set, calibration=train_set)
>>> pred = eqnet.fit_predictor(net, subs[:150], accs[:150])
>>> pred.kendall_tau(subs[150:], accs[150:])
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from tvmq.eqnet.space import Subnet
from tvmq.errors import ConfigError

KINDS = ("xgboost", "gbr")


def encode(subs: Sequence[Subnet], layers: Sequence[str]) -> np.ndarray:
    """Feature rows: ``[w_1, a_1, ..., w_L, a_L, per_channel, act_symmetric]``."""
    rows = [[b for n in layers for b in s.bits[n]] + [float(s.per_channel),
                                                       float(s.act_symmetric)] for s in subs]
    return np.asarray(rows, dtype=np.float32).reshape(len(subs), 2 * len(layers) + 2)


@dataclasses.dataclass
class AccuracyPredictor:
    """A fitted regressor from encoded subnets to accuracy (%); ``layers``: its features."""

    layers: list[str]
    model: Any
    kind: str

    def predict(self, subs: Sequence[Subnet]) -> np.ndarray:
        return np.asarray(self.model.predict(encode(subs, self.layers)), dtype=np.float64)

    def __call__(self, sub: Subnet) -> float:
        return float(self.predict([sub])[0])

    def kendall_tau(self, subs: Sequence[Subnet], accuracies: Sequence[float]) -> float:
        """Kendall's tau between predicted and measured accuracies of ``subs``."""
        from scipy.stats import kendalltau

        tau = kendalltau(self.predict(subs), np.asarray(accuracies, dtype=np.float64))
        return float(tau.statistic)


def fit_predictor(layers_or_net, subs: Sequence[Subnet], accuracies: Sequence[float],
                  kind: str = "xgboost", seed: int = 0) -> AccuracyPredictor:
    """Fit the predictor on measured ``(subnet, accuracy)`` pairs.

    Parameters
    ----------
    layers_or_net : Supernet or sequence of str
        The elastic layers to encode (a supernet: its elastic layers).
    subs, accuracies : sequences of equal length (at least 4)
    kind : {"xgboost", "gbr"}
    """
    layers = _elastic(layers_or_net)
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is not a predictor", f"use one of {KINDS}")
    if len(subs) != len(accuracies) or len(subs) < 4:
        raise ConfigError(f"{len(subs)} subnets and {len(accuracies)} accuracies",
                          "measure at least 4 subnets, one accuracy each")
    x, y = encode(subs, layers), np.asarray(accuracies, dtype=np.float64)
    if kind == "xgboost":
        from xgboost import XGBRegressor

        model = XGBRegressor(n_estimators=400, max_depth=3, learning_rate=0.05, subsample=0.8,
                             random_state=seed, n_jobs=1)
    else:
        from sklearn.ensemble import GradientBoostingRegressor

        model = GradientBoostingRegressor(n_estimators=300, max_depth=3, learning_rate=0.05,
                                          subsample=0.8, random_state=seed)
    model.fit(x, y)
    return AccuracyPredictor(list(layers), model, kind)


def _elastic(layers_or_net) -> list[str]:
    if hasattr(layers_or_net, "space") and hasattr(layers_or_net, "layers"):
        net = layers_or_net
        return net.space.elastic_layers(net.layers) or list(net.layers)
    return list(layers_or_net)


def sample_subnets(net, n: int, seed: int = 0, **cond) -> list[Subnet]:
    """``n`` distinct random subnets of ``net``'s space (the condition drawn unless given)."""
    rng, out, seen = random.Random(seed), [], set()
    for _ in range(100 * n):
        sub = net.sample(rng, **cond)
        if sub.key() not in seen:
            seen.add(sub.key())
            out.append(sub)
        if len(out) == n:
            break
    return out


def measure(net, subs: Sequence[Subnet], data, calibration=None, bn_batches: int = 4,
            max_samples: int | None = None, progress: bool = True) -> list[float]:
    """Top-1 accuracy (%) of each subnet on ``data`` (a Dataset), BN recalibrated on
    ``calibration`` per subnet (PyTorch fake-quant; the supernet is left as it was)."""
    from tvmq.train import accuracy, predict

    x, y = data.x[:max_samples], data.y[:max_samples]
    out = []
    for sub in tqdm(subs, desc="measure subnets", disable=not progress, leave=False):
        with net.activated(sub, calibration, bn_batches):
            out.append(float(accuracy(predict(net, x), y)))
    return out
