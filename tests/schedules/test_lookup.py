"""Small-table byte lookups as byte shuffles (tvmq.schedules.lookup): exact, and only where
the index is proved to stay inside a 16-entry table."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import HOST_FLAGS, run_target
from tvmq._tvm import s_tir, te, tensor, tvm
from tvmq.boards import get_board
from tvmq.schedules import lookup as L

pytestmark = pytest.mark.build

#: x86 targets this host runs: the tests' own (AVX-512 when the CPU has VNNI+VBMI, else the
#: host's) and plain AVX2 (32-lane vpshufb), so both widths are checked on either CPU
X86 = {"run": run_target(), "avx2": {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}}


def _lookup_func(n: int, lanes: int, size: int = 256):
    """``out[i] = table[field(w[i]) + n // 2]``: ``field`` the low ``log2(n)`` bits of a
    byte, sign-extended (``(w << (8 - bits)) >> (8 - bits)``, in ``[-n/2, n/2)``), as a
    signed codebook field; vectorized ``lanes`` wide."""
    w = te.placeholder((size,), "int8", "w")
    t = te.placeholder((n,), "int8", "codebook")
    half, bits = n // 2, n.bit_length() - 1

    def f(i):
        field = (w[i] << (8 - bits)) >> (8 - bits)
        return t[(field.astype("int32") + half).astype("int64")]

    out = te.compute((size,), f, name="out")
    sch = s_tir().Schedule(te.create_prim_func([w, t, out]))
    (i,) = sch.get_loops(sch.get_sblock("out"))
    _, inner = sch.split(i, [None, lanes])
    sch.vectorize(inner)
    return tvm.IRModule({"main": sch.mod["main"]})


def _reference(w: np.ndarray, table: np.ndarray) -> np.ndarray:
    n = len(table)
    bits = n.bit_length() - 1
    field = (w.astype(np.int32) << (8 - bits) & 0xFF)
    field = np.where(field >= 128, field - 256, field) >> (8 - bits)
    return table[field + n // 2]


def _build(mod, target):
    with tvm.target.Target(target):
        return tvm.compile(mod, target=tvm.target.Target(target),
                           tir_pipeline=L.register_pipeline())


@pytest.mark.parametrize("isa", sorted(X86))
@pytest.mark.parametrize("n,lanes", [(16, 32), (16, 64), (16, 16), (4, 32), (2, 16), (16, 128),
                                     (8, 8), (16, 8), (32, 32), (64, 64), (64, 16)])
def test_x86_lookup_is_exact_and_uses_a_byte_shuffle(isa, n, lanes, rng):
    target = tvm.target.Target(X86[isa])
    if lanes == 64 and "avx512bw" not in HOST_FLAGS and isa == "run":
        pytest.skip("no AVX-512BW here")
    vbmi = bool(L._choose(L.native_lookups(target), 64, 64))
    if n > 16 and not vbmi:
        pytest.skip("tables over 16 entries need vpermb (AVX-512 VBMI)")
    mod = _lookup_func(n, lanes)
    lib = _build(mod, target)
    w = rng.integers(-128, 128, 256).astype(np.int8)  # every bit pattern of the field
    table = rng.integers(-128, 128, n).astype(np.int8)
    out = tensor(np.zeros(256, np.int8))
    lib(tensor(w), tensor(table), out)
    np.testing.assert_array_equal(out.numpy(), _reference(w, table))
    asm = lib.mod.inspect_source("asm")
    shuffle = "pshufb" if n <= 16 else "vpermb"
    assert shuffle in asm and "pinsrb" not in asm, f"the gather should be {shuffle}"


def test_unbounded_index_is_left_alone(rng):
    """An index the bound analysis cannot keep inside 16 entries (a byte into a 256-entry
    table) stays a gather, and stays exact."""
    w = te.placeholder((64,), "uint8", "w")
    t = te.placeholder((256,), "int8", "table")
    out = te.compute((64,), lambda i: t[w[i].astype("int64")], name="out")
    sch = s_tir().Schedule(te.create_prim_func([w, t, out]))
    (i,) = sch.get_loops(sch.get_sblock("out"))
    sch.vectorize(sch.split(i, [None, 32])[1])
    lib = _build(tvm.IRModule({"main": sch.mod["main"]}), tvm.target.Target(X86["avx2"]))
    assert "pshufb" not in lib.mod.inspect_source("asm")
    wv = rng.integers(0, 256, 64).astype(np.uint8)
    table = rng.integers(-128, 128, 256).astype(np.int8)
    got = tensor(np.zeros(64, np.int8))
    lib(tensor(wv), tensor(table), got)
    np.testing.assert_array_equal(got.numpy(), table[wv])


@pytest.mark.parametrize("lanes", [4, 8, 16, 32])
def test_aarch64_lookup_uses_tbl(lanes):
    """aarch64 builds look up with ``tbl`` (correctness under qemu: the codebook artifact
    board test, tests/device/test_emulated_board.py)."""
    target = get_board("rasp4b").tvm_target()
    lib = _build(_lookup_func(16, lanes), target)
    asm = lib.mod.inspect_source("asm")
    assert "tbl\t" in asm or "tbl " in asm, "no tbl in the aarch64 lookup"


def test_instructions_follow_the_target():
    def ops(target):
        return [(op.intrinsic.split(".", 2)[-1], op.lanes, op.entries)
                for op in L.native_lookups(tvm.target.Target(target))]

    assert ops(X86["avx2"]) == [("avx2.pshuf.b", 32, 16), ("ssse3.pshuf.b.128", 16, 16)]
    zen4 = L.native_lookups(tvm.target.Target({"kind": "llvm", "mcpu": "znver4"}))
    # 16 entries: vpshufb (listed first) even where vpermb of the same width exists
    assert "pshuf" in L._choose(zen4, 16, 32).intrinsic
    assert L._choose(zen4, 32, 32).intrinsic.endswith("permvar.qi.256")
    assert L._choose(zen4, 64, 32).lanes == 64  # only a zmm holds 64 entries: padded
    assert L._choose(zen4, 65, 64) is None  # over 64 entries: a gather
    assert L._choose(zen4, 16, 48).lanes == 16  # chunks of the widest width dividing 48
    assert {op.lanes for op in L.native_lookups(get_board("rasp4b").tvm_target())} == {8, 16}
    assert L.native_lookups(get_board("rasp4b-armv7").tvm_target()) == []


def test_tuning_builds_use_the_lookup_pipeline(rng):
    """MetaSchedule's builder in tvmq (``tune.build``) times candidates as tvmq.compile
    builds them: the same byte shuffle, not the gather TVM's default pipeline leaves."""
    from tvmq.schedules import tune

    target = tvm.target.Target(X86["avx2"])
    mod = _lookup_func(16, 32)
    lib = tune.build(mod, target)
    asm = lib.inspect_source("asm")
    assert "pshufb" in asm and "pinsrb" not in asm
    plain = tvm.driver.build(mod, target=target).inspect_source("asm")
    assert "pshufb" not in plain  # the default pipeline gathers (the test can fail)
    w = rng.integers(-128, 128, 256).astype(np.int8)
    table = rng.integers(-128, 128, 16).astype(np.int8)
    out = tensor(np.zeros(256, np.int8))
    lib(tensor(w), tensor(table), out)
    np.testing.assert_array_equal(out.numpy(), _reference(w, table))
