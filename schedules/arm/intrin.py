"""aarch64 int8 dot-product tensor intrinsics (``desc``/``impl`` pairs, tvmq names).

Both compute ``C[4] += sum_k s8(A[k]) * s8(B[i, k])`` over ``k < 4``: signed activations, so
callers shift uint8 activations by -128 and add ``128 * sum(W)``
(:mod:`tvmq.schedules.blocked`).

* ``tvmq_arm_sdot_4x4``: one ``sdot`` (Armv8.2 dot product; Cortex-A55/A76, ``+dotprod``).
* ``tvmq_arm_sdot_{4,2}x4x4``: ``G`` = 4 or 2 output pixels at once, ``C[p, 4] += sum_k
  A[p, k] * B[., k]``: one ``ldr q`` (``ldr d``) of the pixels' ``G x 4`` contiguous input
  bytes (a unit-stride conv in the blocked layout) and ``G`` by-element ``sdot``s, instead
  of ``G`` broadcast loads each needing its own address: the register tile's non-dot
  instructions fall from about 8 to 5 per 16 ``sdot`` (:func:`tvmq.schedules.tiling.schedule_conv`
  uses them when the tile's pixels are a multiple of ``G``).
* ``tvmq_arm_neon_4x4``: Armv8.0 (Cortex-A53/A72), three multiply/add instructions for 16
  MACs: ``smull`` + ``smlal2`` sum two products in int16, ``sadalp`` adds lane pairs into
  the int32 accumulators. Exact when the weights stay in [-127, 127] (two products are at
  most ``2 * 128 * 127 = 32512``), which symmetric quantization guarantees; kernels whose
  weights reach -128 use the next one (:attr:`Strategy.intrin_full`).
* ``tvmq_arm_neon_4x4_full``: exact for every int8 weight: two ``smull`` to int16 (one
  product each, ``|a * b| <= 2**14``), pairwise widening adds ``saddlp`` and ``addp``.

The int16 pairs of ``tvmq_arm_neon_4x4`` must hold one output channel each: the weights'
16 bytes ``[oc][k]`` are permuted (one ``tbl``, shared by every pixel of a register tile)
so that the low half holds ``(oc, k in {0, 1})`` and the high half ``(oc, k in {2, 3})``,
and the activations ``a0..a3`` (one ``ld1r`` + ``tbl``, shared by the tile's output
channels) become ``[a0 a1] x 4 | [a2 a3] x 4``. Measured by ``llvm-mca`` 14 on the hottest
loop of a 3x3 64->64 conv over 56x56 (steady state; :mod:`tvmq.roofline`): Cortex-A72
4.73 -> 7.09 MACs/cycle (the model's ceiling is 8: one 8-lane multiply a cycle),
Cortex-A53 1.92 -> 2.4-2.9.

They mirror TVM's ``s_tir/tensor_intrin/arm_cpu.py``, registered here so that the 33 s import
of ``tvm.s_tir.tensor_intrin`` is not needed.

Temporaries in the implementations are ``name: T.let = expr``: TVM 0.27 parses a plain
``name = expr`` as a one-element local buffer, which inside a parallel loop costs a
workspace allocation and free per register tile (ResNet-18 18% slower end to end).
"""
from __future__ import annotations

from tvmq._tvm import T, s_tir

SDOT_4x4 = "tvmq_arm_sdot_4x4"
SDOT_4x4x4 = "tvmq_arm_sdot_4x4x4"
SDOT_2x4x4 = "tvmq_arm_sdot_2x4x4"
NEON_4x4 = "tvmq_arm_neon_4x4"
NEON_4x4_FULL = "tvmq_arm_neon_4x4_full"

_SDOT = "llvm.aarch64.neon.sdot.v4i32.v16i8"
_SMULL = "llvm.aarch64.neon.smull.v8i16"
_SADDLP = "llvm.aarch64.neon.saddlp.v4i32.v8i16"


@T.prim_func(s_tir=True)
def dot_4x4_s8s8s32_desc(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        for i in T.serial(0, 4):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def dot_4x4_s8s8s32_sdot(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a_i32: T.let = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
        a_i8x16: T.let = T.reinterpret(T.broadcast(a_i32, 4), dtype="int8x16")
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
            C.vload([0], dtype="int32x4"),
            a_i8x16,
            B.vload([0, 0], dtype="int8x16"),
            dtype="int32x4",
        )


@T.prim_func(s_tir=True)
def dot_4x4_s8s8s32_neon(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        # [a0 a1] x 4 | [a2 a3] x 4, from one broadcast of a0..a3
        a: T.let = T.reinterpret(
            T.Shuffle([T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"),
                                                               dtype="int32"), 4),
                                     dtype="int16x8")], [0, 0, 0, 0, 1, 1, 1, 1]),
            dtype="int8x16")
        # [oc][k] -> low half (oc, k0 k1), high half (oc, k2 k3)
        b: T.let = T.reinterpret(
            T.Shuffle([T.reinterpret(B.vload([0, 0], dtype="int8x16"), dtype="int16x8")],
                      [0, 2, 4, 6, 1, 3, 5, 7]), dtype="int8x16")
        p: T.let = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(_SMULL), T.vectorlow(a, dtype="int8x8"),
            T.vectorlow(b, dtype="int8x8"), dtype="int16x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(_SMULL), T.vectorhigh(a, dtype="int8x8"),
            T.vectorhigh(b, dtype="int8x8"), dtype="int16x8")  # smull + smlal2
        C[T.ramp(T.int32(0), 1, 4)] += T.call_llvm_pure_intrin(  # sadalp
            T.llvm_lookup_intrinsic_id(_SADDLP), p, dtype="int32x4")


@T.prim_func(s_tir=True)
def dot_4x4_s8s8s32_neon_full(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a_i32: T.let = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
        a_i8x8: T.let = T.reinterpret(T.broadcast(a_i32, 2), dtype="int8x8")
        b: T.let = B.vload([0, 0], dtype="int8x16")
        lo: T.let = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
            T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                    a_i8x8, T.vectorlow(b, dtype="int8x8"), dtype="int16x8"),
            dtype="int32x4")
        hi: T.let = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
            T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                    a_i8x8, T.vectorhigh(b, dtype="int8x8"), dtype="int16x8"),
            dtype="int32x4")
        C[T.ramp(T.int32(0), 1, 4)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v4i32"), lo, hi, dtype="int32x4")


def _sdot_pixels(g: int):
    """(desc, impl) of ``C[p, i] += sum_k A[p, k] * B[i, k]`` over ``g`` pixels ``p``."""

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((g, 4), "int8", offset_factor=1),
             B: T.Buffer((4, 4), "int8", offset_factor=1),
             C: T.Buffer((g, 4), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:g, 0:4], A[0:g, 0:4], B[0:4, 0:4])
            T.writes(C[0:g, 0:4])
            for p, i, k in T.grid(g, 4, 4):
                with T.sblock("update"):
                    vp, vi, vk = T.axis.remap("SSR", [p, i, k])
                    C[vp, vi] = C[vp, vi] + T.cast(A[vp, vk], "int32") * T.cast(B[vi, vk],
                                                                                "int32")

    def lane(c, b, a, p):  # sdot vC.4s, vB.16b, vA.4b[p]
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(_SDOT), c, b,
            T.reinterpret(T.Shuffle([a] * (4 // g), [p, p, p, p]), dtype="int8x16"),
            dtype="int32x4")

    if g == 4:
        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((4, 4), "int8", offset_factor=1),
                 B: T.Buffer((4, 4), "int8", offset_factor=1),
                 C: T.Buffer((4, 4), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(C[0:4, 0:4], A[0:4, 0:4], B[0:4, 0:4])
                T.writes(C[0:4, 0:4])
                a: T.let = T.reinterpret(A.vload([0, 0], "int8x16"), dtype="int32x4")
                b: T.let = B.vload([0, 0], dtype="int8x16")
                C[0, T.ramp(T.int32(0), 1, 4)] = lane(C.vload([0, 0], dtype="int32x4"), b, a, 0)
                C[1, T.ramp(T.int32(0), 1, 4)] = lane(C.vload([1, 0], dtype="int32x4"), b, a, 1)
                C[2, T.ramp(T.int32(0), 1, 4)] = lane(C.vload([2, 0], dtype="int32x4"), b, a, 2)
                C[3, T.ramp(T.int32(0), 1, 4)] = lane(C.vload([3, 0], dtype="int32x4"), b, a, 3)
    else:
        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((2, 4), "int8", offset_factor=1),
                 B: T.Buffer((4, 4), "int8", offset_factor=1),
                 C: T.Buffer((2, 4), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(C[0:2, 0:4], A[0:2, 0:4], B[0:4, 0:4])
                T.writes(C[0:2, 0:4])
                a: T.let = T.reinterpret(A.vload([0, 0], "int8x8"), dtype="int32x2")
                b: T.let = B.vload([0, 0], dtype="int8x16")
                C[0, T.ramp(T.int32(0), 1, 4)] = lane(C.vload([0, 0], dtype="int32x4"), b, a, 0)
                C[1, T.ramp(T.int32(0), 1, 4)] = lane(C.vload([1, 0], dtype="int32x4"), b, a, 1)

    return desc, impl


def _register() -> None:
    TensorIntrin = s_tir().TensorIntrin
    for name, impl in ((SDOT_4x4, dot_4x4_s8s8s32_sdot), (NEON_4x4, dot_4x4_s8s8s32_neon),
                       (NEON_4x4_FULL, dot_4x4_s8s8s32_neon_full)):
        try:
            TensorIntrin.get(name, allow_missing=False)
        except Exception:  # noqa: BLE001 - not registered yet in this process
            TensorIntrin.register(name, dot_4x4_s8s8s32_desc, impl)
    for name, g in ((SDOT_4x4x4, 4), (SDOT_2x4x4, 2)):
        try:
            TensorIntrin.get(name, allow_missing=False)
        except Exception:  # noqa: BLE001 - not registered yet in this process
            TensorIntrin.register(name, *_sdot_pixels(g))


_register()
