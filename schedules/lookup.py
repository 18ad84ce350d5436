"""Small-table byte lookups in registers: ``vpshufb`` / ``vpermb`` (x86), ``tbl`` (aarch64).

A codebook-encoded weight (:mod:`tvmq.schedules.blocked_codebook`) is decoded in the kernels
as ``table[index]``, vectorized over a row of weight bytes. LLVM lowers a vector load at
data-dependent indices as one scalar load and one insert per lane (a 32-lane decode of
4-bit indices: 32 loads + 32 inserts), which made the DGMS K=16 ResNet-18 1.4x slower than
its int4 build (Zen 4). A table of up to 16 bytes fits one 128-bit register, of up to 64
one zmm register, and one byte shuffle looks up a whole vector of indices:

* x86: ``pshufb`` (SSSE3, 16 lanes), ``vpshufb`` ymm (AVX2, 32), zmm (AVX-512BW, 64): lane
  ``i`` gets byte ``idx[i] & 15`` of its own 128-bit lane of the table operand (so the table
  is repeated in every 128-bit lane), or 0 when bit 7 of ``idx[i]`` is set; ``vpermb``
  (AVX-512 VBMI, 16/32/64 lanes): byte ``idx[i] & (lanes - 1)`` of a whole-register table,
  for tables of 17..64 entries;
* aarch64: ``tbl`` with one table register (8 or 16 lanes): byte ``idx[i]`` of the table, 0
  when ``idx[i] >= 16``.

:func:`LowerByteLookups` rewrites, after TVM's TIR lowering (vectorized, flattened), every
``int8``/``uint8`` vector load whose index is not a ramp, whose buffer is a 1-D array, and
whose index is *proved* by TVM's integer bound analysis to lie in ``[0, n)``, ``n`` no more
than the buffer's length and the instruction's table (the codebook decode:
``((bits >> s) + K/2) & (K - 1)``): the table operand is a vector load of the ``n`` entries
the gather could read (never past them), placed as the instruction reads it; the index is
truncated to bytes (exact: it is below 64). Lane counts that are a multiple of an
instruction's width are done in chunks, fewer lanes than the narrowest one in one padded
shuffle; anything else (tables over 64 entries, armv7) is left as it was. The rewrite is
exact by construction (the tests compare the codebook kernels bit for bit against the
dense-int8 build); it is part of tvmq's TIR pipeline (``tir_pipeline="tvmq"``, registered
here, used by :func:`tvmq.compile`).
"""
from __future__ import annotations

import dataclasses

from tvmq._tvm import TensorLoad, target_has_features, tir, tvm

PIPELINE = "tvmq"


@dataclasses.dataclass(frozen=True)
class ByteShuffle:
    """One table-lookup instruction: ``lanes`` indices into a table of up to ``entries``
    bytes. ``table_lanes``: width of its table operand; ``per_lane``: the table is indexed
    within each 16-byte lane (``pshufb``), so it is repeated in every one."""

    intrinsic: str
    lanes: int
    entries: int
    table_lanes: int
    per_lane: bool = False


def native_lookups(target) -> list[ByteShuffle]:
    """The byte shuffles ``target`` has that look up a table (empty: none)."""
    mtriple = str(target.attrs.get("mtriple", ""))
    if str(target.kind.name) != "llvm":
        return []
    if mtriple.startswith("aarch64"):
        return [ByteShuffle("llvm.aarch64.neon.tbl1.v16i8", 16, 16, 16),
                ByteShuffle("llvm.aarch64.neon.tbl1.v8i8", 8, 16, 16)]
    if mtriple and not mtriple.startswith("x86_64"):
        return []
    out = []
    if target_has_features(target, "avx512bw"):
        out.append(ByteShuffle("llvm.x86.avx512.pshuf.b.512", 64, 16, 64, True))
    if target_has_features(target, "avx2"):
        out.append(ByteShuffle("llvm.x86.avx2.pshuf.b", 32, 16, 32, True))
    if target_has_features(target, "ssse3"):
        out.append(ByteShuffle("llvm.x86.ssse3.pshuf.b.128", 16, 16, 16, True))
    if target_has_features(target, "avx512vbmi", "avx512vl"):
        # vpermb: byte idx & (lanes - 1) of a whole-register table (up to 64 entries)
        out += [ByteShuffle(f"llvm.x86.avx512.permvar.qi.{w * 8}", w, w, w) for w in (64, 32, 16)]
    return out


def _choose(natives: list[ByteShuffle], n: int, lanes: int) -> ByteShuffle | None:
    """The instruction for ``lanes`` lookups into ``n`` entries: the widest that divides
    ``lanes`` (done in chunks), else the narrowest if ``lanes`` is below it (padded);
    ``pshufb``/``tbl`` before ``vpermb`` (listed first)."""
    fits = [op for op in natives if op.entries >= n]
    whole = [op for op in fits if lanes % op.lanes == 0]
    if whole:
        return max(whole, key=lambda op: op.lanes)  # stable: the first of the widest
    narrow = [op for op in fits if op.lanes > lanes]
    return min(narrow, key=lambda op: op.lanes) if narrow else None


def _lanes(ty) -> int:
    """Lanes of a load's type (``PrimType`` in TVM 0.27: ``ty.dtype.lanes``)."""
    dtype = getattr(ty, "dtype", ty)
    return int(getattr(dtype, "lanes", 1))


def _shuffle(vectors, indices):
    return tir.Shuffle(list(vectors), [tir.IntImm("int32", int(i)) for i in indices])


def _table(buf, dtype: str, n: int, op: ByteShuffle):
    """The ``n`` table entries as ``op``'s table operand: entry ``i`` in lane ``i`` (of
    every 16-byte lane when ``op.per_lane``); lanes past ``n`` read entry 0, never
    selected."""
    width = op.table_lanes
    if n == 1:
        return tir.Broadcast(tir.BufferLoad(buf, [tir.IntImm("int32", 0)]), width)
    vec = buf.vload([0], f"{dtype}x{n}")
    copies = -(-width // n)  # a shuffle has at most as many lanes as its inputs together
    pos = [i % 16 if op.per_lane else i for i in range(width)]
    return _shuffle([vec] * copies, [p if p < n else 0 for p in pos])


def _rewrite(load, natives: list[ByteShuffle], analyzer):
    buf = load.source
    dtype = str(buf.dtype)
    lanes = _lanes(load.ty)
    if lanes < 2 or dtype not in ("int8", "uint8") or len(load.indices) != 1 \
            or len(buf.shape) != 1 or not isinstance(buf.shape[0], tir.IntImm):
        return None
    idx = load.indices[0]
    if isinstance(idx, (tir.Ramp, tir.Broadcast)):
        return None
    bound = analyzer.const_int_bound(idx)
    n = int(bound.max_value) + 1
    if bound.min_value < 0 or n > int(buf.shape[0]):
        return None
    op = _choose(natives, n, lanes)
    if op is None:
        return None
    width = op.lanes
    idx8 = tir.Cast(f"{dtype}x{lanes}", idx)
    table = _table(buf, dtype, n, op)
    if lanes < width:  # e.g. 8 lanes on x86: one 16-lane shuffle, half of it used
        wide = _shuffle([idx8] * -(-width // lanes), [i if i < lanes else 0 for i in range(width)])
        out = tir.call_llvm_pure_intrin(f"{dtype}x{width}", op.intrinsic, table, wide)
        return _shuffle([out], range(lanes))
    chunks = []
    for c in range(lanes // width):
        part = idx8 if width == lanes else _shuffle([idx8], range(c * width, (c + 1) * width))
        chunks.append(tir.call_llvm_pure_intrin(f"{dtype}x{width}", op.intrinsic, table, part))
    return chunks[0] if len(chunks) == 1 else _shuffle(chunks, range(lanes))


def lower_byte_lookups(func, target, natives: list[ByteShuffle] | None = None):
    """``func`` (a lowered, vectorized ``PrimFunc``) with its small-table byte gathers as
    byte shuffles of ``target`` (``natives``: its :func:`native_lookups`, if known), and how
    many it rewrote."""
    import tvm_ffi

    natives = native_lookups(target) if natives is None else natives
    if not natives:
        return func, 0
    analyzer = tvm.sym.Analyzer()
    count = [0]

    def visit(load):
        new = _rewrite(load, natives, analyzer)
        if new is None:
            return load
        count[0] += 1
        return new

    body = tvm_ffi.structural_map(func.body, [(TensorLoad, visit)])
    return (func if count[0] == 0 else func.with_body(body)), count[0]


def LowerByteLookups() -> tvm.transform.Pass:  # noqa: N802 - TVM pass naming
    """Module pass: :func:`lower_byte_lookups` on every PrimFunc (its ``target`` attribute,
    else the current target)."""

    @tvm.transform.module_pass(opt_level=0, name="tvmq.LowerByteLookups")
    def _pass(mod, _ctx):
        current = tvm.target.Target.current(allow_none=True)
        natives = {}  # per target: asking LLVM for its features takes ~0.5 ms
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tir.PrimFunc):
                continue
            target = (func.attrs or {}).get("target", None) or current
            if target is None:
                continue
            key = str(target)
            if key not in natives:
                natives[key] = native_lookups(target)
            new, count = lower_byte_lookups(func, target, natives[key])
            if count:
                mod[gv] = new
        return mod

    return _pass


def _pipeline():
    from tvm.tirx import compilation_pipeline as cp

    main, host, device = cp.get_tir_pipeline("default")
    return tvm.transform.Sequential([main, LowerByteLookups()], name="tvmq.tir"), host, device


def register_pipeline() -> str:
    """Register (once) and return the name of tvmq's TIR pipeline: TVM's default, then
    :func:`LowerByteLookups`."""
    from tvm.tirx import compilation_pipeline as cp

    cp.register_tir_pipeline(PIPELINE, _pipeline)
    return PIPELINE
