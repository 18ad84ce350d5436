"""tvmq.schedules.tune_space: MetaSchedule explores around the default kernel, stays exact."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import HOST_FLAGS, ZNVER4, run_target, to_blocked
from tvmq import qref
from tvmq._tvm import meta_schedule, tensor, tvm
from tvmq.schedules import kernels, strategy_for, tune

TARGET = ZNVER4


def test_tune_space_builds_for_x86_and_arm():
    from tvmq.boards import get_board
    from tvmq.schedules.x86 import tune_space

    assert tune_space(tvm.target.Target(TARGET)) is not None
    assert tune.tune_space(get_board("rpi5").tvm_target()) is not None
    assert tune.tune_space(tvm.target.Target({"kind": "llvm", "mcpu": "core2"})) is None


@pytest.mark.tuning
def test_tuned_conv_is_exact(rng, tmp_path):
    ms = meta_schedule()
    target = tvm.target.Target(run_target())  # runs here
    st = strategy_for(target)
    x = rng.integers(0, 256, (1, 16, 14, 14)).astype("uint8")
    w = rng.integers(-128, 128, (32, 16, 3, 3)).astype("int8")
    func, wp, _ = kernels.conv_func(x.shape, w, "uint8", st, padding=(1,) * 4)
    db = ms.tune_tir(tvm.IRModule({"main": func}), target, str(tmp_path), max_trials_global=4,
                     num_trials_per_iter=4, space=tune.tune_space(target),
                     builder=ms.builder.LocalBuilder(initializer=tune.build_worker_initializer,
                                                     timeout_sec=120))
    sch = ms.tir_integration.compile_tir(db, tvm.IRModule({"main": func}), target)
    assert sch is not None
    lib = tvm.compile(sch.mod, target=target)
    out = tensor(np.zeros((1, 32, 14, 14), "int32"))
    lib(tensor(x), tensor(wp), out)
    assert np.array_equal(out.numpy(), qref.conv2d_int(x, w, padding=(1,) * 4))


def _depthwise(rng, stride):
    st = strategy_for(tvm.target.Target(TARGET))
    x = rng.integers(0, 256, (1, 32, 12, 12)).astype("uint8")
    w = rng.integers(-128, 128, (32, 1, 3, 3)).astype("int8")
    conv = dict(strides=(stride, stride), padding=(1,) * 4)
    func, wt, corr = kernels.depthwise_func(x.shape, w, "uint8", st, layout="blocked", **conv)
    ref = qref.conv2d_int(x, w, groups=32, **conv)
    args = [to_blocked(x, 16), wt] + ([corr] if corr is not None else [])
    return st, func, args, to_blocked(ref, 16)


def _run_exact(mod, args, ref):
    lib = tvm.compile(mod, target=tvm.target.Target(TARGET))
    out = tensor(np.zeros(ref.shape, "int32"))
    lib(*[tensor(a) for a in args], out)
    np.testing.assert_array_equal(out.numpy(), ref)


needs_vbmi = pytest.mark.skipif("avx512vbmi" not in HOST_FLAGS,
                                reason="znver4 depthwise builds use vpermb (AVX-512 VBMI)")


@needs_vbmi
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pad_at", ["root", "tile"])
def test_depthwise_dot_pad_placements_exact(rng, stride, pad_at):
    from tvmq._tvm import s_tir
    from tvmq.schedules import tiling

    st, func, args, ref = _depthwise(rng, stride)
    sch = s_tir().Schedule(func)
    tiling.schedule_depthwise_dot(sch, st.dw_intrin, pad_at=pad_at)
    _run_exact(sch.mod, args, ref)


@needs_vbmi
def test_sampled_depthwise_space_replays_exact(rng):
    """Each sampled depthwise schedule (pixels, pad placement) replays from its trace."""
    from tvmq._tvm import s_tir

    st, func, args, ref = _depthwise(rng, 2)
    decisions = set()
    for seed in range(1, 7):
        sch = s_tir().Schedule(func, seed=seed)
        tune._kernel_space_fn(st)(sch)
        decisions.add(tuple(int(v) for v in sch.trace.decisions.values()))
        replay = s_tir().Schedule(func)
        sch.trace.apply_to_schedule(replay, remove_postproc=False)
        _run_exact(replay.mod, args, ref)
    assert len(decisions) > 1  # the space is sampled, not one fixed schedule
