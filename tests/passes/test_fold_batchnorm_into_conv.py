"""FoldBatchNormIntoConv: structural Before/Expected and a build-and-run check against PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from tests.conftest import assert_well_formed
from tvmq.passes import FoldBatchNormIntoConv

EPS = 1e-5


def _params(rng, cout=4, cin=3):
    return {
        "w": rng.standard_normal((cout, cin, 3, 3)).astype("float32"),
        "b": rng.standard_normal((1, cout, 1, 1)).astype("float32"),
        "gamma": rng.uniform(0.5, 1.5, cout).astype("float32"),
        "beta": rng.standard_normal(cout).astype("float32"),
        "mean": rng.standard_normal(cout).astype("float32"),
        "var": rng.uniform(0.5, 2.0, cout).astype("float32"),
    }


def _before(p, with_bias=True):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(p["w"]), padding=[1, 1, 1, 1]))
            if with_bias:
                y = bb.emit(relax.op.add(y, relax.const(p["b"])))
            bn = bb.emit(relax.op.nn.batch_norm(
                y, *(relax.const(p[k]) for k in ("gamma", "beta", "mean", "var")),
                axis=1, epsilon=EPS))
            out = bb.emit_output(relax.TupleGetItem(bn, 0))
        bb.emit_func_output(out)
    return bb.get()


def _expected(p, with_bias=True):
    k = p["gamma"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + EPS)
    bias = p["b"].reshape(-1).astype(np.float64) if with_bias else 0.0
    w = (p["w"].astype(np.float64) * k.reshape(-1, 1, 1, 1)).astype("float32")
    b = ((bias - p["mean"]) * k + p["beta"]).astype("float32").reshape(1, -1, 1, 1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=[1, 1, 1, 1]))
            out = bb.emit_output(relax.op.add(y, relax.const(b)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("with_bias", [True, False])
def test_structure(rng, with_bias):
    p = _params(rng)
    before = _before(p, with_bias)
    assert_well_formed(before)
    after = relax.transform.DeadCodeElimination()(FoldBatchNormIntoConv()(before))
    assert_well_formed(after)
    tvm.ir.assert_structural_equal(after, _expected(p, with_bias))


def test_leaves_bn_without_conv_alone(rng):
    p = _params(rng)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            bn = bb.emit(relax.op.nn.batch_norm(
                x, *(relax.const(p[k]) for k in ("gamma", "beta", "mean", "var")), axis=1))
            out = bb.emit_output(relax.TupleGetItem(bn, 0))
        bb.emit_func_output(out)
    before = bb.get()
    tvm.ir.assert_structural_equal(FoldBatchNormIntoConv()(before), before)


@pytest.mark.build
def test_numerics_against_pytorch(rng):
    """Folded conv+BN built with TVM equals PyTorch's conv+BN (float32, max abs 1e-5)."""
    p = _params(rng)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    bn = torch.nn.BatchNorm2d(4, eps=EPS).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(p["w"]))
        conv.bias.copy_(torch.from_numpy(p["b"].reshape(-1)))
        bn.weight.copy_(torch.from_numpy(p["gamma"]))
        bn.bias.copy_(torch.from_numpy(p["beta"]))
        bn.running_mean.copy_(torch.from_numpy(p["mean"]))
        bn.running_var.copy_(torch.from_numpy(p["var"]))
    x = rng.standard_normal((1, 3, 8, 8)).astype("float32")
    with torch.no_grad():
        ref = bn(conv(torch.from_numpy(x))).numpy()
    mod = FoldBatchNormIntoConv()(_before(p))
    ex = tvm.compile(mod, "llvm")
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    err = float(np.abs(out - ref).max())
    assert err < 1e-5, f"max abs error {err:.3g}"
