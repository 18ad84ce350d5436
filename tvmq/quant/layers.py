"""Thin quantized layers: an input (activation) quantizer and a weight quantizer around a float op.

``QuantConvBn2d`` folds the BatchNorm that follows a conv into it during QAT (Krishnamoorthi
2018, as in ``torch.ao``): a per-tensor weight quantizer sees ``w * gamma / sigma_running``, so the
quantized weights trained are the ones deployed. Until BN is frozen, batch statistics still
normalize the output during training; once frozen (or in eval), the forward is exactly
``conv(x, q(w_folded)) + b_folded``, the exported graph. A weight quantizer with
``bn_after_quant`` (per-channel uniform grids, DGMS codebooks) quantizes the conv's own weight
instead and BN scales its output channels: ``q(w) * gamma / sigma_running``; the factor then
joins the exported per-channel scale (a codebook's table stays one per layer).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tvmq.quant.quantizer import Quantizer


def _maybe(quant: Quantizer | None, x: torch.Tensor) -> torch.Tensor:
    return x if quant is None else quant(x)


class QuantConv2d(nn.Conv2d):
    """``conv2d(input_quant(x), weight_quant(w)) + b``; the bias stays float."""

    weight_quant: Quantizer | None
    input_quant: Quantizer | None

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quant, input_quant) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        q.load_state_dict(conv.state_dict())
        q.weight_quant, q.input_quant = weight_quant, input_quant
        return q.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(_maybe(self.input_quant, x),
                                  _maybe(self.weight_quant, self.weight), self.bias)


class QuantLinear(nn.Linear):
    """``linear(input_quant(x), weight_quant(w)) + b``; the bias stays float."""

    weight_quant: Quantizer | None
    input_quant: Quantizer | None

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quant, input_quant) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None)
        q.load_state_dict(linear.state_dict())
        q.weight_quant, q.input_quant = weight_quant, input_quant
        return q.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_maybe(self.input_quant, x), _maybe(self.weight_quant, self.weight),
                        self.bias)


class QuantConvBn2d(nn.Module):
    """Conv2d followed by BatchNorm2d, trained with BN folded into the quantized weights.

    Parameters
    ----------
    conv, bn : nn.Conv2d, nn.BatchNorm2d
    weight_quant, input_quant : Quantizer or None
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, weight_quant, input_quant):
        super().__init__()
        self.conv, self.bn = conv, bn
        self.weight_quant, self.input_quant = weight_quant, input_quant
        self.bn_frozen = False

    def freeze_bn(self) -> None:
        """Stop updating BN statistics; from now on training uses the folded form too."""
        self.bn_frozen = True
        self.bn.eval()

    def _factor(self) -> torch.Tensor:
        """``gamma / sqrt(running_var + eps)`` per output channel."""
        return self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)

    def _bn_after_quant(self) -> bool:
        return bool(getattr(self.weight_quant, "bn_after_quant", False))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """BN folded into the conv with running statistics: ``(w * g / sigma, b')``."""
        bn, conv, factor = self.bn, self.conv, self._factor()
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        w = conv.weight * factor.reshape(-1, 1, 1, 1)
        return w, bn.bias + (bias - bn.running_mean) * factor

    def quantizer_input(self) -> torch.Tensor:
        """The weight the weight quantizer sees: the folded one, or the conv's own for a
        quantizer with ``bn_after_quant`` (BN then scales its output channels)."""
        return self.conv.weight if self._bn_after_quant() else self.folded()[0]

    def quantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(quantized BN-folded weight, folded bias)``: ``q(w * f)``, or ``q(w) * f`` for a
        quantizer with ``bn_after_quant`` (``f = gamma / sigma`` per output channel)."""
        w, b = self.folded()
        if self._bn_after_quant():
            return self.weight_quant(self.conv.weight) * self._factor().reshape(-1, 1, 1, 1), b
        return _maybe(self.weight_quant, w), b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _maybe(self.input_quant, x)
        wq, b = self.quantized()
        if self.bn_frozen or not self.training:
            return self.conv._conv_forward(x, wq, b)
        # Undo the running-stat scaling, then let BN normalize with batch statistics.
        factor = self._factor().reshape(1, -1, 1, 1)
        y = self.conv._conv_forward(x, wq, None) / factor
        if self.conv.bias is not None:
            y = y + self.conv.bias.reshape(1, -1, 1, 1)
        return self.bn(y)

    def to_conv(self) -> QuantConv2d:
        """A :class:`QuantConv2d` holding the folded weights (what export and convert use).

        With a ``bn_after_quant`` quantizer it holds the conv's own weights and the quantizer
        the BN factor (:meth:`~tvmq.quant.Quantizer.set_channel_scale`): the same forward."""
        w, b = self.folded()
        if self._bn_after_quant():
            self.weight_quant.set_channel_scale(self._factor().detach().clone())
            w = self.conv.weight
        conv = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size,
                         self.conv.stride, self.conv.padding, self.conv.dilation,
                         self.conv.groups, True, self.conv.padding_mode)
        conv.weight.data, conv.bias.data = w.detach().clone(), b.detach().clone()
        return QuantConv2d.from_float(conv, self.weight_quant, self.input_quant).train(self.training)


QUANT_LAYERS = (QuantConv2d, QuantLinear, QuantConvBn2d)
