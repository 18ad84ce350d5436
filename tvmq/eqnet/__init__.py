"""EQ-Net (Xu et al., ICCV 2023): an elastic quantization supernet, searched and deployed.

One set of shared weights is trained once for a whole space of quantization forms (weight
and activation bits 2..8 per layer, per-channel or per-tensor weights, symmetric or
asymmetric activations) with Group Progressive Guidance and Weight Distribution
Regularization; a conditional accuracy predictor and a genetic search then pick a
mixed-precision subnet for a budget without retraining, and the chosen subnet becomes an
ordinary converted quantized model for :func:`tvmq.quant.export` and :func:`tvmq.compile`.

>>> import tvmq.eqnet as eqnet, tvmq.mixed as mixed, tvmq.quant as tq
>>> net = eqnet.Supernet(fp32_model, eqnet.ElasticSpace())
>>> eqnet.train(net, train_set, epochs=10)
>>> subs = eqnet.sample_subnets(net, 120)
>>> pred = eqnet.fit_predictor(net, subs, eqnet.measure(net, subs, val_set, train_set))
>>> plan = eqnet.search(net, pred, mixed.SizeBudget(avg_bits=3), example)
>>> tq.save_plan(plan, "plan.json")
>>> q = net.to_quantized(plan.subnet, calibration=train_set)
>>> tq.export(q, example, "eqnet.onnx")
"""
from tvmq.eqnet.config import ElasticConfig
from tvmq.eqnet.losses import distill_loss, moments, wdr_loss
from tvmq.eqnet.predictor import (AccuracyPredictor, encode, fit_predictor, measure,
                                  sample_subnets)
from tvmq.eqnet.quantizer import ElasticQuantizer
from tvmq.eqnet.search import (LayerCosts, SearchResult, evolution, layer_costs,
                               random_search, search)
from tvmq.eqnet.space import ElasticSpace, Subnet
from tvmq.eqnet.supernet import Supernet, subnet_from_plan
from tvmq.eqnet.train import GPGConfig, gpg_step, train

__all__ = ["AccuracyPredictor", "ElasticConfig", "ElasticQuantizer", "ElasticSpace",
           "GPGConfig", "LayerCosts", "SearchResult", "Subnet", "Supernet", "distill_loss",
           "encode", "evolution", "fit_predictor", "gpg_step", "layer_costs", "measure",
           "moments", "random_search", "sample_subnets", "search", "subnet_from_plan", "train",
           "wdr_loss"]
