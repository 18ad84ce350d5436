"""Per-layer Hessian traces by Hutchinson's estimator.

``Tr(H) = E[v^T H v]`` for Rademacher ``v`` (entries +-1); ``H v`` is a Hessian-vector
product through autograd (the gradient of ``g . v``, ``g`` the gradient kept in the graph),
so the Hessian is never formed. One product with ``v`` spanning every tensor at once gives
each tensor's own block trace: ``(H v)_l . v_l = v_l^T H_ll v_l + sum_k v_l^T H_lk v_k``, and
the cross terms have mean zero (``v_l``, ``v_k`` independent), as in PyHessian / HAWQ.

Tensors are a layer's weight and, for activations, a zero perturbation added to the layer's
input (a forward pre-hook), whose gradient is the gradient with respect to that input.
Sampling stops once every trace's running mean has a relative standard error below ``tol``
(at least ``min_iter`` samples), or after ``max_iter`` samples.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from tvmq.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class Traces:
    """Hutchinson estimates: ``weight[name]`` and ``act[name]`` (``Tr`` of the block), their
    standard errors, and the number of samples drawn."""

    weight: dict[str, float]
    act: dict[str, float]
    weight_stderr: dict[str, float]
    act_stderr: dict[str, float]
    iterations: int


class _Running:
    """Running mean and variance (Welford) of one scalar series."""

    def __init__(self):
        self.n, self.mean, self._m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)

    @property
    def stderr(self) -> float:
        return (self._m2 / (self.n - 1) / self.n) ** 0.5 if self.n > 1 else float("inf")

    def relative_stderr(self) -> float:
        return self.stderr / max(abs(self.mean), 1e-30)


@contextlib.contextmanager
def _input_perturbations(layers: dict[str, nn.Module], store: dict[str, torch.Tensor]):
    """Adds a zero tensor that requires grad to each layer's input; ``store[name]`` is it."""
    def hook(name):
        def pre(_module, args):
            delta = torch.zeros_like(args[0], requires_grad=True)
            store[name] = delta
            return (args[0] + delta, *args[1:])
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _rademacher(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, t.shape, generator=gen, dtype=t.dtype) * 2 - 1


def _one_sample(model, loss_fn, batches, weights, layers, acts, gen, n_total):
    """``v^T H v`` per weight and per layer input, for one draw of ``v`` over all batches
    (the loss is the mean over all ``n_total`` samples)."""
    est_w = dict.fromkeys(weights, 0.0)
    est_a = dict.fromkeys(layers if acts else (), 0.0)
    v_w = {n: _rademacher(p, gen) for n, p in weights.items()}
    for x, y in batches:
        deltas: dict[str, torch.Tensor] = {}
        ctx = _input_perturbations(layers, deltas) if acts else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(model(x), y) * (len(x) / n_total)
        names = list(weights) + list(deltas)
        tensors = list(weights.values()) + [deltas[n] for n in deltas]
        grads = torch.autograd.grad(loss, tensors, create_graph=True)
        vs = [v_w[n] for n in weights] + [_rademacher(deltas[n], gen) for n in deltas]
        dot = sum((g * v).sum() for g, v in zip(grads, vs))
        hvs = torch.autograd.grad(dot, tensors, allow_unused=True)
        for i, (name, hv, v) in enumerate(zip(names, hvs, vs)):
            val = 0.0 if hv is None else float((hv * v).sum())
            if i < len(weights):
                est_w[name] += val
            else:
                est_a[name] += val
    return est_w, est_a


def hutchinson_traces(model: nn.Module, layers: dict[str, nn.Module],
                      batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                      loss_fn: LossFn | None = None, acts: bool = True, tol: float = 0.1,
                      min_iter: int = 8, max_iter: int = 50, seed: int = 0,
                      progress: bool = True) -> Traces:
    """Hutchinson estimates of each layer's weight (and input) Hessian trace.

    Parameters
    ----------
    model : nn.Module
        Evaluated as given (put it in eval mode first: BatchNorm in train mode would couple
        the samples of a batch).
    layers : dict
        Name -> module with a ``weight`` parameter (conv / linear).
    batches : sequence of (input, label)
        The loss is the mean over all of them (``loss_fn(logits, labels)``, default
        cross-entropy).
    acts : bool
        Also estimate the trace with respect to each layer's input.
    tol : float
        Stop when every running mean's relative standard error is below ``tol``.
    min_iter, max_iter : int
        Bounds on the number of Rademacher samples (``min_iter`` is lowered to
        ``max_iter``).

    Returns
    -------
    Traces
    """
    if not layers:
        raise ConfigError("no layers to estimate traces for", "pass conv/linear layers")
    if min_iter < 1 or max_iter < 1:
        raise ConfigError(f"min_iter={min_iter}, max_iter={max_iter}: both must be >= 1",
                          "use e.g. min_iter=8, max_iter=50")
    min_iter = min(min_iter, max_iter)
    loss_fn = loss_fn or nn.functional.cross_entropy
    weights = {n: m.weight for n, m in layers.items()}
    n_total = sum(len(x) for x, _ in batches)
    run_w = {n: _Running() for n in weights}
    run_a = {n: _Running() for n in layers} if acts else {}
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(max_iter), desc="hessian trace", disable=not progress, leave=False)
    for it in bar:
        est_w, est_a = _one_sample(model, loss_fn, batches, weights, layers, acts, gen, n_total)
        for n, val in est_w.items():
            run_w[n].add(val)
        for n, val in est_a.items():
            run_a[n].add(val)
        worst = max(r.relative_stderr() for r in (*run_w.values(), *run_a.values()))
        bar.set_postfix(rel_err=f"{worst:.3f}")
        if it + 1 >= min_iter and worst < tol:
            break
    bar.close()
    return Traces({n: r.mean for n, r in run_w.items()}, {n: r.mean for n, r in run_a.items()},
                  {n: r.stderr for n, r in run_w.items()}, {n: r.stderr for n, r in run_a.items()},
                  next(iter(run_w.values())).n)


def batches_of(data, samples: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``samples`` (input, label) pairs of ``data`` in batches: a
    :class:`tvmq.data.Dataset` (``.x``, ``.y`` arrays) or an iterable of (input, label)."""
    if hasattr(data, "x") and hasattr(data, "y"):
        x, y = torch.as_tensor(data.x[:samples]), torch.as_tensor(data.y[:samples])
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    out, seen = [], 0
    for xb, yb in _pairs(data):
        if seen >= samples:
            break
        xb, yb = xb[:samples - seen], yb[:samples - seen]
        out.append((torch.as_tensor(xb), torch.as_tensor(yb)))
        seen += len(xb)
    if not out:
        raise ConfigError("the sensitivity data is empty",
                          "pass a Dataset or (input, label) batches")
    return out


def _pairs(data) -> Iterator:
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ConfigError("sensitivity data must yield (input, label) pairs",
                              "pass a tvmq.data.Dataset or a DataLoader of (x, y)")
        yield batch
