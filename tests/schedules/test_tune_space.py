"""tvmq.schedules.tune_space: MetaSchedule explores around the default kernel, stays exact."""
from __future__ import annotations

import numpy as np
import pytest

from tvmq import qref
from tvmq._tvm import meta_schedule, tensor, tvm
from tvmq.schedules import kernels, strategy_for, tune

TARGET = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}


def test_tune_space_builds_for_x86_and_arm():
    from tvmq.boards import get_board
    from tvmq.schedules.x86 import tune_space

    assert tune_space(tvm.target.Target(TARGET)) is not None
    assert tune.tune_space(get_board("rpi5").tvm_target()) is not None
    assert tune.tune_space(tvm.target.Target({"kind": "llvm", "mcpu": "core2"})) is None


@pytest.mark.tuning
def test_tuned_conv_is_exact(rng, tmp_path):
    ms = meta_schedule()
    target = tvm.target.Target(TARGET)
    st = strategy_for(target)
    x = rng.integers(0, 256, (1, 16, 14, 14)).astype("uint8")
    w = rng.integers(-128, 128, (32, 16, 3, 3)).astype("int8")
    func, wp, _ = kernels.conv_func(x.shape, w, "uint8", st, padding=(1,) * 4)
    db = ms.tune_tir(tvm.IRModule({"main": func}), target, str(tmp_path), max_trials_global=4,
                     num_trials_per_iter=4, space=tune.tune_space(target),
                     builder=ms.builder.LocalBuilder(initializer=tune.builder_initializer,
                                                     timeout_sec=120))
    sch = ms.tir_integration.compile_tir(db, tvm.IRModule({"main": func}), target)
    assert sch is not None
    lib = tvm.compile(sch.mod, target=target)
    out = tensor(np.zeros((1, 32, 14, 14), "int32"))
    lib(tensor(x), tensor(wp), out)
    assert np.array_equal(out.numpy(), qref.conv2d_int(x, w, padding=(1,) * 4))
