"""Register-tile choice of the default conv schedule, and the runtime's thread count."""
import os
import subprocess
import sys

import pytest

from tvmq.schedules.tiling import MIN_ACC, W_TILE_BYTES, register_tile


@pytest.mark.parametrize("n_x,n_o,c,taps", [
    (112, 6, 16, 1), (56, 4, 64, 9), (56, 9, 24, 1), (28, 8, 128, 9), (14, 16, 256, 9),
    (7, 32, 512, 9), (7, 10, 960, 1), (112, 4, 4, 49), (7, 1, 32, 1), (13, 5, 48, 9)])
def test_tile_divides_and_fits_registers(n_x, n_o, c, taps):
    ow, ob = register_tile(n_x, n_o, 24, 16, 1, c * taps * 16)
    assert n_x % ow == 0 and n_o % ob == 0 and ow <= 16 and ow * ob <= 24


def test_shallow_pointwise_conv_shares_each_broadcast_across_blocks():
    # 1x1 16->96 at 112x112 (MobileNetV2): 6 blocks of 256 weight bytes fit L1 easily
    assert register_tile(112, 6, 24, 16, 1, 16 * 16) == (4, 6)


def test_deep_conv_keeps_one_block_of_weights_in_l1():
    # 3x3 256->256 at 14x14: one block is 36 KiB of weights, more would spill L1
    block = 256 * 9 * 16
    assert block * 2 > W_TILE_BYTES
    assert register_tile(14, 16, 24, 16, 1, block) == (14, 1)


def test_too_few_accumulators_take_more_blocks():
    # 7-pixel rows: one block would leave 7 dot-product chains, fewer than MIN_ACC
    ow, ob = register_tile(7, 32, 24, 16, 1, 512 * 9 * 16)
    assert (ow, ob) == (7, 2) and ow * ob >= MIN_ACC


def test_nchw_output_prefers_wide_rows():
    assert register_tile(112, 4, 24, 16, 1, 4 * 49 * 16) == (4, 4)
    assert register_tile(112, 4, 24, 16, 1, 4 * 49 * 16, wide_rows=True) == (16, 1)


def test_arm_minimum_channel_blocks_respected():
    ow, ob = register_tile(56, 16, 24, 6, 4, 64 * 9 * 4)
    assert ob >= 4 and ow <= 6 and ow * ob <= 24


def test_runtime_uses_every_physical_core():
    """TVM halves the logical CPU count on x86 (it assumes SMT); tvmq sets the pool size."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    code = ("import tvmq; from tvmq._tvm import tvm, physical_cores; "
            "print(tvm.get_global_func('runtime.NumThreads')(), physical_cores())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[0]) == int(out[1]) >= 1
    env["TVM_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[0]) == 1  # the user's setting wins
