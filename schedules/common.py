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


def schedule_injective(sch, blk, vec: int = 16, parallel_extent: int = 64) -> None:
    """Parallelize the outer loops and vectorize the innermost one of a spatial block."""
    loops = sch.get_loops(blk)
    if not loops:
        return
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
    if outer and total > 1:
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
