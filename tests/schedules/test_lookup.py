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


def _lookup_func(n: int, lanes: int, size: int = 256, shift: int = 4):
    """``out[i] = table[field(w[i]) + n // 2]``: ``field`` the signed 4-bit field of a byte
    (``(w << shift) >> 4``, in [-8, 7]) clipped to ``n`` entries, as the codebook decode
    reads it; vectorized ``lanes`` wide."""
    w = te.placeholder((size,), "int8", "w")
    t = te.placeholder((n,), "int8", "codebook")
    half = n // 2

    def f(i):
        field = (w[i] << shift) >> 4
        if n < 16:  # a narrower field: the low log2(n) bits, sign-extended
            bits = n.bit_length() - 1
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
                                     (8, 8), (16, 8)])
def test_x86_lookup_is_exact_and_uses_pshufb(isa, n, lanes, rng):
    target = tvm.target.Target(X86[isa])
    if lanes == 64 and "avx512bw" not in HOST_FLAGS and isa == "run":
        pytest.skip("no AVX-512BW here")
    mod = _lookup_func(n, lanes)
    lib = _build(mod, target)
    w = rng.integers(-128, 128, 256).astype(np.int8)  # every bit pattern of the field
    table = rng.integers(-128, 128, n).astype(np.int8)
    out = tensor(np.zeros(256, np.int8))
    lib(tensor(w), tensor(table), out)
    np.testing.assert_array_equal(out.numpy(), _reference(w, table))
    asm = lib.mod.inspect_source("asm")
    assert "pshufb" in asm and "pinsrb" not in asm, "the gather should be a byte shuffle"


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


def test_native_widths_follow_the_target():
    assert L.native_lookups(tvm.target.Target(X86["avx2"])) == {
        32: "llvm.x86.avx2.pshuf.b", 16: "llvm.x86.ssse3.pshuf.b.128"}
    assert 64 in L.native_lookups(tvm.target.Target({"kind": "llvm", "mcpu": "znver4"}))
    assert set(L.native_lookups(get_board("rasp4b").tvm_target())) == {8, 16}
    assert L.native_lookups(get_board("rasp4b-armv7").tvm_target()) == {}
