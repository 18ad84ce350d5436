"""armv7 (32-bit Arm, NEON) int8 dot-product tensor intrinsics (``desc``/``impl`` pairs).

Both compute the aarch64 intrinsics' ``C[4] += sum_k s8(A[k]) * s8(B[i, k])`` over ``k < 4``
(the same blocked layouts, and the same shift of uint8 activations by -128 with its
correction). armv7 has no dot-product instruction; per call:

* the activations as two int16 pairs broadcast over a d register: ``a01 = (A0, A1) x 4``,
  ``a23 = (A2, A3) x 4`` (``vdup.16``);
* the 16 weight bytes ``[oc][k]`` de-interleaved as int16 lanes (``vuzp.16``): the low d
  register holds ``(oc, k in {0, 1})`` for the 4 channels, the high one ``(oc, k in {2, 3})``,
  lined up with ``a01`` / ``a23``.

``tvmq_armv7_neon_4x4`` (fast, weights in [-127, 127]): ``vmull.s8 p, a01, b_lo``,
``vmlal.s8 p, a23, b_hi``, ``vpadal.s16 C, p``. Each int16 lane sums two products
``|a * b| <= 128 * 127``: at most 32512, exact, which symmetric int8 quantization guarantees.

``tvmq_armv7_neon_4x4_full`` (any int8 weights: ``-128 * -128`` twice overflows int16):
``vmull.s8`` and ``vpadal.s16`` twice, each product pair widened before it is added. Used
for kernels whose weights reach -128 (:meth:`tvmq.schedules.strategy.Strategy.kernel_intrin`).

Temporaries are ``name: T.let = expr`` (see :mod:`tvmq.schedules.arm.intrin`).
"""
from __future__ import annotations

from tvmq._tvm import T, s_tir
# the same semantics as aarch64's 4x4 intrinsics: one description for both
from tvmq.schedules.arm.intrin import dot_4x4_s8s8s32_desc

NEON_4x4 = "tvmq_armv7_neon_4x4"
NEON_4x4_FULL = "tvmq_armv7_neon_4x4_full"


@T.prim_func(s_tir=True)
def dot_4x4_s8s8s32_vmlal(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a01: T.let = T.broadcast(T.reinterpret(A.vload([0], "int8x2"), dtype="int16"), 4)
        a23: T.let = T.broadcast(T.reinterpret(A.vload([2], "int8x2"), dtype="int16"), 4)
        b: T.let = T.reinterpret(B.vload([0, 0], "int8x16"), dtype="int16x8")
        p: T.let = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.arm.neon.vmulls.v8i16"),
            T.reinterpret(a01, dtype="int8x8"),
            T.reinterpret(T.Shuffle([b], [0, 2, 4, 6]), dtype="int8x8"), dtype="int16x8") \
            + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.arm.neon.vmulls.v8i16"),
                T.reinterpret(a23, dtype="int8x8"),
                T.reinterpret(T.Shuffle([b], [1, 3, 5, 7]), dtype="int8x8"), dtype="int16x8")
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.arm.neon.vpadals.v4i32.v8i16"),
            C.vload([0], dtype="int32x4"), p, dtype="int32x4")


@T.prim_func(s_tir=True)
def dot_4x4_s8s8s32_vmull2(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a01: T.let = T.broadcast(T.reinterpret(A.vload([0], "int8x2"), dtype="int16"), 4)
        a23: T.let = T.broadcast(T.reinterpret(A.vload([2], "int8x2"), dtype="int16"), 4)
        b: T.let = T.reinterpret(B.vload([0, 0], "int8x16"), dtype="int16x8")
        lo: T.let = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.arm.neon.vmulls.v8i16"),
            T.reinterpret(a01, dtype="int8x8"),
            T.reinterpret(T.Shuffle([b], [0, 2, 4, 6]), dtype="int8x8"), dtype="int16x8")
        hi: T.let = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.arm.neon.vmulls.v8i16"),
            T.reinterpret(a23, dtype="int8x8"),
            T.reinterpret(T.Shuffle([b], [1, 3, 5, 7]), dtype="int8x8"), dtype="int16x8")
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.arm.neon.vpadals.v4i32.v8i16"),
            T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.arm.neon.vpadals.v4i32.v8i16"),
                C.vload([0], dtype="int32x4"), lo, dtype="int32x4"),
            hi, dtype="int32x4")


def _register() -> None:
    TensorIntrin = s_tir().TensorIntrin
    for name, impl in ((NEON_4x4, dot_4x4_s8s8s32_vmlal), (NEON_4x4_FULL, dot_4x4_s8s8s32_vmull2)):
        try:
            TensorIntrin.get(name, allow_missing=False)
        except Exception:  # noqa: BLE001 - not registered yet in this process
            TensorIntrin.register(name, dot_4x4_s8s8s32_desc, impl)


_register()
