"""A QAT training loop: calibrate activation ranges, train, freeze BN on schedule."""
from __future__ import annotations

from torch import nn

from tvmq.data import Dataset
from tvmq.quant.api import calibrate, freeze_bn, quantizers
from tvmq.train import sgd_loop


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Quantizer scales and offsets get no weight decay (it would shrink the ranges)."""
    qparams = {id(p) for q in quantizers(model) for p in q.parameters()}
    rest = [p for p in model.parameters() if id(p) not in qparams and p.requires_grad]
    mine = [p for p in model.parameters() if id(p) in qparams and p.requires_grad]
    return [{"params": rest, "weight_decay": weight_decay}, {"params": mine, "weight_decay": 0.0}]


def fit(model: nn.Module, data: Dataset, epochs: int = 10, lr: float = 5e-3,
        batch_size: int = 64, seed: int = 0, freeze_bn_after: int | None = None,
        calibration_batches: int = 4, weight_decay: float = 1e-4,
        progress: bool = True, loss_fn=None, before_step=None) -> nn.Module:
    """Fine-tune a model prepared with ``QATConfig(..., step="prepare")``.

    Activation quantizers are first initialized from ``calibration_batches`` batches; then
    SGD (momentum 0.9, cosine schedule) trains weights and quantizer parameters. BN
    statistics freeze after ``freeze_bn_after`` epochs (default: the prepare config's
    ``freeze_bn_after``; ``None`` never freezes). ``loss_fn`` and ``before_step``: the
    training hooks of :func:`tvmq.train.sgd_loop` (distillation, unlabelled data, a
    sub-configuration per step). Returns the model in eval mode.

    Under ``torchrun`` every rank calibrates on the same first batches (so the ranges agree)
    and trains on its shard (:func:`tvmq.train.sgd_loop`, :mod:`tvmq.distributed`): learned
    scales and offsets stay equal through the averaged gradients, observer state and BN
    statistics are made equal at every epoch end.
    """
    if freeze_bn_after is None:
        cfg = getattr(model, "tvmq_qat_config", None)
        freeze_bn_after = getattr(cfg, "freeze_bn_after", None)
    calibrate(model, data, max_batches=calibration_batches, progress=False)

    def _freeze(epoch: int) -> None:
        if freeze_bn_after is not None and epoch >= freeze_bn_after:
            freeze_bn(model)

    return sgd_loop(model, data, _param_groups(model, weight_decay), epochs, lr, batch_size,
                    seed, progress, desc="qat", before_epoch=_freeze, loss_fn=loss_fn,
                    before_step=before_step)
