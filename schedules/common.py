"""Schedule helpers shared by the per-architecture kernels (target-independent).

Kernels are PrimFuncs made of tvmq's named blocks (:mod:`tvmq.schedules.blocked`) plus whatever
elementwise epilogue ``FuseOps``/``FuseTIR`` merged after them (requantization, bias, ReLU,
clip, cast). :func:`inline_epilogue` collapses that epilogue into the single block that
writes the function's output, so it can run on each register tile while it is in cache.
"""
from __future__ import annotations

from tvmq.schedules.blocked import BLOCK_DECODE_W, BLOCK_PACK, BLOCK_PAD

PACK_BLOCKS = (BLOCK_PACK, BLOCK_PAD)
#: blocks the kernel schedules place themselves (never inlined into the kernel)
KEEP_BLOCKS = (*PACK_BLOCKS, BLOCK_DECODE_W)


def block_names(sch) -> list[str]:
    return [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))] \
        if _has_root(sch) else []


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001 - PrimFuncs without a root block
        return False


def child_blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_spatial_block(sch, blk) -> bool:
    return all(int(iv.iter_type) == 0 for iv in sch.get(blk).iter_vars)


def _writes_8bit(sch, blk) -> bool:
    try:
        return str(sch.get(blk).writes[0].source.dtype) in ("int8", "uint8")
    except Exception:  # noqa: BLE001 - unusual write region: treat as wide
        return False


def inline_epilogue(sch, anchor_names: tuple[str, ...]) -> list:
    """Inline the elementwise blocks but the anchors and ``KEEP_BLOCKS``; return the rest.

    Only spatial blocks with consumers are tried (a failing primitive renders the whole IR
    into its error message, which is slow on big fused functions). Blocks are inlined
    producer-first, so a chain ``unpack -> mul -> shift -> clip -> cast`` ends as one block
    reading the anchor's accumulators. An 8-bit intermediate (a requantized tensor that a
    fused residual add reads) stays a block of its own: inlining it would copy its whole
    requantization into every use in the next chain (expression size, and LLVM's compile
    time, grow geometrically). Returned: the remaining non-anchor blocks, producers first.
    """
    keep = set(anchor_names) | set(KEEP_BLOCKS)
    for blk in child_blocks(sch):
        name = sch.get(blk).name_hint
        if name in keep or not sch.get_consumers(blk) or not _is_spatial_block(sch, blk) \
                or _writes_8bit(sch, blk):
            continue
        try:
            sch.compute_inline(blk)
        except Exception:  # noqa: BLE001 - e.g. a block reading its own output: stays
            continue
    return [b for b in child_blocks(sch) if sch.get(b).name_hint not in keep]


#: elements below which a spatial block runs on one thread: waking the thread pool costs
#: a few microseconds (a 64-byte activation pack under a parallel loop made a 64x10 dense
#: layer take 4.6 us instead of ~0.5, Zen 4)
MIN_PARALLEL_WORK = 16384


def schedule_injective(sch, blk, vec: int = 16, parallel_extent: int = 64) -> None:
    """Parallelize the outer loops (when the block has :data:`MIN_PARALLEL_WORK` elements)
    and vectorize the innermost one of a spatial block."""
    loops = sch.get_loops(blk)
    if not loops:
        return
    work = 1
    for lp in loops:
        work *= _extent(sch, lp) or MIN_PARALLEL_WORK
    if len(loops) >= 2 and (_extent(sch, loops[-1]) or vec) < vec:
        # blocked layouts end in a short channel loop: vectorize (pixel, channel) together
        loops = [*loops[:-2], sch.fuse(loops[-2], loops[-1])]
    last = _extent(sch, loops[-1]) or 0
    lanes = 0
    if last > vec and last % vec == 0:
        lanes = vec
    elif last > 64:  # too long to vectorize whole, not a multiple of vec (a padded row of
        lanes = last & -last  # 226 pixels x 4 channels): its widest power-of-two divisor
        lanes = min(lanes, vec)
    if lanes >= 4:
        outer_last, inner = sch.split(loops[-1], [None, lanes])
        loops = [*sch.get_loops(blk)[:-2], outer_last]
    else:
        inner, loops = loops[-1], loops[:-1]
    if 1 < (_extent(sch, inner) or 0) <= 64:
        sch.vectorize(inner)
    outer, total = [], 1
    for lp in loops:
        outer.append(lp)
        total *= _extent(sch, lp) or 1
        if total >= parallel_extent:
            break
    if outer and total > 1 and work >= MIN_PARALLEL_WORK:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _extent(sch, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if hasattr(ext, "value") or isinstance(ext, int) else None


def divisor_at_most(n: int, cap: int) -> int:
    """Largest divisor of ``n`` not above ``cap``."""
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


#: most epilogue blocks that do not read the anchor which get inlined into its tile (an
#: inline copies the block's expression into every use: a chain grows geometrically)
MAX_INDEPENDENT_INLINE = 2


def split_epilogue(sch, anchor: str, outs: list) -> tuple[list, list]:
    """``(dependent, independent)``: the epilogue blocks ``outs`` that read the ``anchor``
    block's output, directly or through other epilogue blocks, and those that do not (e.g.
    a residual input requantized to another scale, fused after the kernel by ``FuseOps``).
    Both in producer-first order."""
    reached = {anchor}
    dep, indep = [], []
    for blk in outs:
        producers = {sch.get(p).name_hint for p in sch.get_producers(blk)}
        if producers & reached:
            dep.append(blk)
            reached.add(sch.get(blk).name_hint)
        else:
            indep.append(blk)
    return dep, indep


def place_epilogue(sch, anchor: str, outs: list, at_loop,
                   preserve_unit_loops: bool = True) -> list:
    """Compute the epilogue ``outs`` per tile under ``at_loop``; return the blocks placed
    there (the caller vectorizes them), ``[]`` when the epilogue stays at the root.

    ``reverse_compute_at`` sizes a block's loops under ``at_loop`` from what its producers
    compute there. A block that does not read the anchor has no such bound: under the tile
    it would cover the whole tensor, and so would every block reading it, each tile then
    reading the other tiles' outputs before they exist (wrong results from the race
    between the parallel tiles). Such blocks are inlined into their consumers, so that
    they are computed per tile too; where that does not apply, the whole epilogue runs at
    the root after the kernel, parallel and vectorized on its own (slower, never wrong).
    """
    dep, indep = split_epilogue(sch, anchor, outs)
    feeding = [b for b in indep if sch.get_consumers(b)]
    if len(feeding) > MAX_INDEPENDENT_INLINE or not _inline_all(sch, feeding):
        names = {sch.get(b).name_hint for b in outs}
        for blk in child_blocks(sch):  # root order is topological
            if sch.get(blk).name_hint in names:
                schedule_injective(sch, blk)
        return []
    for blk in indep:
        if not any(b.same_as(blk) for b in feeding):  # an output independent of the
            schedule_injective(sch, blk)  # kernel: stays at the root
    for blk in dep:
        sch.reverse_compute_at(blk, at_loop, preserve_unit_loops=preserve_unit_loops)
    return dep


def _inline_all(sch, blocks: list) -> bool:
    for blk in blocks:
        try:
            sch.compute_inline(blk)
        except Exception:  # noqa: BLE001 - e.g. a block that is not elementwise
            return False
    return True


def parallel_overlaps(func) -> list[str]:
    """Spatial blocks of a scheduled ``func`` that several iterations of a parallel loop
    compute alike: their bindings do not depend on any parallel loop (every iteration
    computes the same instances: a consumer placed under a tile loop but sized to the whole
    tensor), or, unpredicated, they run more often than the elements they write. Threads
    then compute the same outputs, at least one from a region its tile did not produce.
    ``[]`` when none.

    The packing, padding and weight-decoding blocks (``KEEP_BLOCKS``) are exempt: a tile may
    recompute its own input window or weights (identical values, into a buffer that lowering
    allocates per parallel iteration, since every access is inside that loop).
    """
    from tvmq._tvm import s_tir, tir, tvm

    sch = s_tir().Schedule(func)
    if not _has_root(sch):
        return []
    realize_of = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")
    bad = []
    for blk in child_blocks(sch):
        block = sch.get(blk)
        if block.name_hint in KEEP_BLOCKS or not _is_spatial_block(sch, blk) \
                or len(block.writes) != 1:
            continue
        loops = [sch.get(lp) for lp in sch.get_loops(blk)]
        par = [lp.loop_var for lp in loops if int(lp.kind) == int(tir.ForKind.PARALLEL)
               and _const(lp.extent) != 1]
        if not par:
            continue
        realize = realize_of(sch, blk)
        used = [v for e in realize.iter_values for v in tir.analysis.undefined_vars(e)]
        if not any(v.same_as(p) for v in used for p in par):
            bad.append(block.name_hint)
            continue
        runs, size = 1, 1
        for lp in loops:
            runs *= _const(lp.extent) or 1
        for dim in block.writes[0].source.shape:
            size *= int(dim)
        if runs > size and _const(realize.predicate) == 1:
            bad.append(block.name_hint)
    return bad


def _const(expr) -> int | None:
    return int(expr.value) if hasattr(expr, "value") else None
