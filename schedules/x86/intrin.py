"""x86 int8 dot-product tensor intrinsics (``desc``/``impl`` pairs, registered under tvmq names).

The dense intrinsics (VNNI, AVX2) share one description:
``C[16] += sum_k u8(A[k]) * s8(B[i, k])`` over ``k < 4`` (16 int32 lanes, 4-deep reduction). The activation operand is *unsigned*: x86's
instructions multiply u8 by s8, so callers shift signed activations by +128 and subtract
``128 * sum(W)`` (see :mod:`tvmq.schedules.blocked`).

* ``tvmq_x86_vnni_16x4``: one ``vpdpbusd`` (AVX-512 VNNI). TVM's shipped ``dot_16x4_vnni``
  passes ``<16 x i32>`` operands, which LLVM 22 rejects; this one passes ``<64 x i8>``.
* ``tvmq_x86_dw_vnni_16x4`` (depthwise): ``C[i] += sum_k u8(A[k, i]) * s8(B[i, k])``, a
  per-lane 4-tap dot product; ``A`` is 4 pixels x 16 channels as stored (64 contiguous
  bytes), transposed into lanes by one ``vpermb`` (AVX-512 VBMI), then one ``vpdpbusd``.
* ``tvmq_x86_avx2_16x4``: AVX2, exact for every int8 weight: ``vpmaddwd`` (4 per call) on
  int16 pairs, each on the activation pair ``(a0, a1)`` or ``(a2, a3)`` in every dword and
  eight channels' weights for that pair, so lane ``i`` is channel ``i`` and the sums add
  straight into the accumulators. Both operands are widened by in-lane ``vpshufb`` (and
  ``vpsraw`` for the weights' sign), not ``vpmovzxbw``/``vpmovsxbw``, which cross lanes.
* ``tvmq_x86_avx2_pairs_16x4``: AVX2, ``vpmaddubsw`` (u8 x s8, two products summed in
  int16, *saturating*) then ``vpmaddwd`` by ones: half the multiplies of the exact kernel,
  exact only when no pair sum leaves int16. Used for kernels whose weights guarantee that
  with any u8 activation (:func:`tvmq.schedules.blocked.pairs_fit_int16`: 7-bit weights,
  int4, opposite-sign pairs), chosen per kernel by
  :meth:`tvmq.schedules.strategy.Strategy.kernel_intrin`.

Temporaries in the implementations are ``name: T.let = expr``: TVM 0.27 parses a plain
``name = expr`` as a one-element local buffer, which inside a parallel loop costs a
workspace allocation and free per register tile (ResNet-18 18% slower end to end).
"""
from __future__ import annotations

from tvmq._tvm import T, s_tir, target_has_features

VNNI_16x4 = "tvmq_x86_vnni_16x4"
AVX2_16x4 = "tvmq_x86_avx2_16x4"
AVX2_PAIRS_16x4 = "tvmq_x86_avx2_pairs_16x4"
DW_VNNI_16x4 = "tvmq_x86_dw_vnni_16x4"
LANES, DEPTH = 16, 4
#: byte j of the transposed operand: tap ``j % 4`` of channel ``j // 4``
#: (``A[k, i]`` is byte ``16k + i`` of the 4 pixels x 16 channels loaded)
_DW_TRANSPOSE = [(j % 4) * 16 + j // 4 for j in range(64)]


@T.prim_func(s_tir=True)
def dot_16x4_u8s8s32_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def dot_16x4_u8s8s32_vnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a_i32: T.let = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_u8x64: T.let = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"),
            a_u8x64,
            B.vload([0, 0], dtype="int8x64"),
            dtype="int32x16",
        )


_Z = 0x80  # vpshufb: a mask byte with the top bit set writes 0


def _bytes32(lane: list[int]):
    """A 32-byte vector constant, ``lane`` (16 bytes) in both 128-bit lanes."""
    q = [int.from_bytes(bytes(b & 0xFF for b in lane[i:i + 8]), "little", signed=True)
         for i in (0, 8)]
    return T.reinterpret(T.Shuffle([T.broadcast(T.int64(q[0]), 2), T.broadcast(T.int64(q[1]), 2)],
                                   [0, 2, 0, 2]), dtype="int8x32")


#: vpshufb masks. Activations (the 4 u8 in every dword) -> the int16 pair (a0, a1) or
#: (a2, a3) in every dword (zero-extended). Weights (a 128-bit lane: 4 channels x 4 taps)
#: -> dword c = channel c's taps (k0, k0+1), each in the *high* byte of an int16 (an
#: arithmetic shift right by 8 sign-extends them).
_ACT = {k0: [k0, _Z, k0 + 1, _Z] * 4 for k0 in (0, 2)}
_WGT = {k0: [b for c in range(4) for b in (_Z, 4 * c + k0, _Z, 4 * c + k0 + 1)]
        for k0 in (0, 2)}


def _pshufb(x, lane: list[int]):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pshuf.b"), x,
                                   _bytes32(lane), dtype="int8x32")


def _pmaddwd(a, b):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a,
                                   b, dtype="int32x8")


def _act4(A):
    """The 4 activation bytes of ``A`` in every dword of a 32-byte vector (one broadcast load)."""
    return T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8),
                         dtype="int8x32")


def _w16(b, k0: int):
    """int16 weights of taps ``(k0, k0+1)``, dword c = channel c (``b``: 8 channels x 4)."""
    return T.shift_right(T.reinterpret(_pshufb(b, _WGT[k0]), dtype="int16x16"),
                         T.broadcast(T.int16(8), 16))


@T.prim_func(s_tir=True)
def dot_16x4_u8s8s32_avx2(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        # the 4 activation bytes in every dword, zero-extended to the int16 pairs by one
        # in-lane vpshufb each (vpmovzxbw crosses lanes: on Zen 3 it takes one pipe 3
        # cycles, and was the hot loop's bottleneck)
        a4: T.let = _act4(A)
        a01: T.let = T.reinterpret(_pshufb(a4, _ACT[0]), dtype="int16x16")
        a23: T.let = T.reinterpret(_pshufb(a4, _ACT[2]), dtype="int16x16")
        # weights of channels 0-7 and 8-15 as int16 pairs, lane i of vpmaddwd = output
        # channel i, so the products add straight into the accumulators; they depend on B
        # only, so a register tile's pixels share them
        b_lo: T.let = B.vload([0, 0], "int8x32")
        b_hi: T.let = B.vload([8, 0], "int8x32")
        lo: T.let = _pmaddwd(a01, _w16(b_lo, 0)) + _pmaddwd(a23, _w16(b_lo, 2))
        hi: T.let = _pmaddwd(a01, _w16(b_hi, 0)) + _pmaddwd(a23, _w16(b_hi, 2))
        C[T.ramp(T.int32(0), 1, 16)] = C.vload([0], dtype="int32x16") + T.Shuffle(
            [lo, hi], list(range(16)))


def _pmaddubsw(a, b):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a,
                                   b, dtype="int16x16")


@T.prim_func(s_tir=True)
def dot_16x4_u8s8s32_avx2_pairs(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        # vpmaddubsw: int16 lane 2c = a0 w[c,0] + a1 w[c,1], lane 2c+1 = a2 w[c,2] + a3 w[c,3]
        # (saturating: exact only for weights whose pairs fit, see the module docstring);
        # vpmaddwd by ones adds the two into int32 lane c
        a4: T.let = _act4(A)
        ones: T.let = T.broadcast(T.int16(1), 16)
        lo: T.let = _pmaddwd(_pmaddubsw(a4, B.vload([0, 0], "int8x32")), ones)
        hi: T.let = _pmaddwd(_pmaddubsw(a4, B.vload([8, 0], "int8x32")), ones)
        C[T.ramp(T.int32(0), 1, 16)] = C.vload([0], dtype="int32x16") + T.Shuffle(
            [lo, hi], list(range(16)))


@T.prim_func(s_tir=True)
def dw_16x4_u8s8s32_desc(
    A: T.Buffer((4, 16), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4, 0:16], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk, vi], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def dw_16x4_u8s8s32_vnni(
    A: T.Buffer((4, 16), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4, 0:16], B[0:16, 0:4])
        T.writes(C[0:16])
        a: T.let = A.vload([0, 0], "uint8x64")
        a_t: T.let = T.Shuffle([a], _DW_TRANSPOSE)  # one vpermb (AVX-512 VBMI)
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"),
            a_t,
            B.vload([0, 0], dtype="int8x64"),
            dtype="int32x16",
        )


def _register() -> None:
    TensorIntrin = s_tir().TensorIntrin
    for name, desc, impl in ((VNNI_16x4, dot_16x4_u8s8s32_desc, dot_16x4_u8s8s32_vnni),
                             (AVX2_16x4, dot_16x4_u8s8s32_desc, dot_16x4_u8s8s32_avx2),
                             (AVX2_PAIRS_16x4, dot_16x4_u8s8s32_desc,
                              dot_16x4_u8s8s32_avx2_pairs),
                             (DW_VNNI_16x4, dw_16x4_u8s8s32_desc, dw_16x4_u8s8s32_vnni)):
        try:
            TensorIntrin.get(name, allow_missing=False)
        except Exception:  # noqa: BLE001 - not registered yet in this process
            TensorIntrin.register(name, desc, impl)


_register()


def select_intrin(target) -> str | None:
    """The best exact 16x4 u8*s8 intrinsic for ``target`` (a ``tvm.target.Target``), or None."""
    if target_has_features(target, "avx512vnni"):
        return VNNI_16x4
    if target_has_features(target, "avx2"):
        return AVX2_16x4
    return None


def select_dw_intrin(target) -> str | None:
    """The per-lane 4-tap depthwise intrinsic when ``target`` has it (AVX-512 VNNI for
    ``vpdpbusd`` and VBMI for the one-instruction byte transpose), else None."""
    if target_has_features(target, "avx512vnni", "avx512vbmi"):
        return DW_VNNI_16x4
    return None
