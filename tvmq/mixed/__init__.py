"""Mixed precision: Hessian sensitivity, knapsack bit allocation, per-layer plans.

Chen et al., "Towards Mixed-Precision Quantization of Neural Networks via Constrained
Optimization" (ICCV 2021): the loss increase of layer ``l`` at ``b`` bits is estimated to
second order from the layer's Hessian trace (Hutchinson), and the bits are allocated as a
multiple-choice knapsack under a size, BOPs or measured-latency budget. The result is a
per-layer plan (:mod:`tvmq.quant.plan`) that ``quantize_`` applies as written and that
compiles into one artifact with layers at different bit widths.

>>> import tvmq.mixed as mixed, tvmq.quant as tq
>>> sens = mixed.sensitivity(model, train_set, act_bits=(8,))
>>> plan = mixed.allocate(sens, mixed.SizeBudget(avg_bits=3))
>>> tq.save_plan(plan, "plan.json")                   # tvmq quantize MODEL --plan plan.json
>>> tq.quantize_(model, tq.QATConfig(tq.get_preset("w8a8"), overrides=plan))

Latency budgets need a table measured on the board:

>>> table = mixed.latency_table(model, train_set, "digits_cnn", board="host")
>>> plan = mixed.allocate(sens, mixed.LatencyBudget(ms=0.05, table=table))
"""
from tvmq.mixed.allocate import allocate, predict, random_plan, uniform_plan
from tvmq.mixed.budgets import Budget, BopsBudget, LatencyBudget, SizeBudget
from tvmq.mixed.hessian import Traces, hutchinson_traces
from tvmq.mixed.latency import LatencyTable, latency_table, model_key
from tvmq.mixed.pareto import pareto_front, plot_pareto
from tvmq.mixed.plans import MixedPlan, bits_of, layer_config
from tvmq.mixed.sensitivity import LayerSensitivity, Sensitivity, fold_batchnorm, sensitivity

__all__ = ["BopsBudget", "Budget", "LatencyBudget", "LatencyTable", "LayerSensitivity",
           "MixedPlan", "Sensitivity", "SizeBudget", "Traces", "allocate", "bits_of",
           "fold_batchnorm", "hutchinson_traces", "latency_table", "layer_config",
           "model_key", "pareto_front", "plot_pareto", "predict", "random_plan",
           "sensitivity", "uniform_plan"]
