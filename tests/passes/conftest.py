"""Helpers shared by the pass tests: build-and-run, and a well-formedness check."""
from __future__ import annotations

import numpy as np
import pytest

from tvmq._tvm import relax, tvm


def run_relax(mod, *inputs):
    """Compile ``mod`` for the host CPU and run ``main`` on NumPy inputs."""
    ex = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x)) for x in inputs])
    return out.numpy()


def apply(pass_, mod):
    """Run a pass and check the result is well formed."""
    out = pass_(mod)
    relax.analysis.well_formed(out)  # raises when ill formed (0.27 returns None)
    return out


@pytest.fixture
def rng():
    return np.random.RandomState(0)


def function(params, build):
    """A one-function module: ``build(bb, *vars)`` returns the output expression."""
    bb = relax.BlockBuilder()
    vars_ = [relax.Var(name, relax.TensorType(shape, dtype)) for name, shape, dtype in params]
    with bb.function("main", vars_):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *vars_))
        bb.emit_func_output(out)
    return bb.get()
