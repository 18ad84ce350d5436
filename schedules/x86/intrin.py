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
* ``tvmq_x86_avx2_16x4``: AVX2 fallback, zero/sign-extends to int16 and uses ``vpmaddwd``
  (4 per call), each on the activation pair ``(a0, a1)`` or ``(a2, a3)`` broadcast and
  eight channels' weights for that pair, so lane ``i`` is channel ``i`` and the sums add
  straight into the accumulators. ``vpmaddubsw`` would be one instruction shorter but
  saturates pairs at ``2 * 255 * 128 > 32767``, so it is not exact; this one is.

Temporaries in the implementations are ``name: T.let = expr``: TVM 0.27 parses a plain
``name = expr`` as a one-element local buffer, which inside a parallel loop costs a
workspace allocation and free per register tile (ResNet-18 18% slower end to end).
"""
from __future__ import annotations

from tvmq._tvm import T, s_tir, target_has_features

VNNI_16x4 = "tvmq_x86_vnni_16x4"
AVX2_16x4 = "tvmq_x86_avx2_16x4"
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


def _pairs(c0: int, k0: int) -> list[int]:
    """Byte indices of ``B[c, k0:k0+2]`` for channels ``c0..c0+7`` in a ``[16][4]`` block."""
    return [4 * c + k0 + j for c in range(c0, c0 + 8) for j in range(2)]


@T.prim_func(s_tir=True)
def dot_16x4_u8s8s32_avx2(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a_i32: T.let = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a16: T.let = T.Cast("int16x16", T.reinterpret(T.broadcast(a_i32, 4), dtype="uint8x16"))
        a01: T.let = T.Shuffle([a16], [0, 1] * 8)  # (a0, a1) in every int32 lane
        a23: T.let = T.Shuffle([a16], [2, 3] * 8)
        b: T.let = B.vload([0, 0], "int8x64")
        # weights regrouped so that vpmaddwd's lane i is output channel i (depth pairs
        # (0,1) and (2,3) in separate vectors): depends on B only, so a register tile's
        # pixels share it, and no per-call shuffle of the products is left
        w01_lo: T.let = T.Cast("int16x16", T.Shuffle([b], _pairs(0, 0)))
        w23_lo: T.let = T.Cast("int16x16", T.Shuffle([b], _pairs(0, 2)))
        w01_hi: T.let = T.Cast("int16x16", T.Shuffle([b], _pairs(8, 0)))
        w23_hi: T.let = T.Cast("int16x16", T.Shuffle([b], _pairs(8, 2)))
        lo: T.let = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a01, w01_lo, dtype="int32x8"
        ) + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a23, w23_lo, dtype="int32x8")
        hi: T.let = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a01, w01_hi, dtype="int32x8"
        ) + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a23, w23_hi, dtype="int32x8")
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
