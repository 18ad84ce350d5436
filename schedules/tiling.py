"""Default (untuned) CPU schedules for tvmq's blocked int8 kernels, parameterized per target.

Each function takes a ``tvm.s_tir.Schedule`` of a PrimFunc built from
:mod:`tvmq.schedules.blocked` computes (possibly with a fused elementwise epilogue) and
schedules it in place:

* conv / dense: register tile of ``ow_tile x ob_tile`` accumulator vectors (output pixels or
  matrix rows, times channel blocks) fed by the target's dot-product intrinsic, outer tiles
  in parallel, the epilogue computed per tile; ``max_acc`` bounds the accumulator registers
  (x86: 24 of 32 zmm; aarch64: 24 of 32 q registers);
* depthwise: no dot-product instruction fits (one input channel per output), so the output
  row is vectorized 16 wide with int32 widening multiply-adds.

The per-architecture modules (``tvmq.schedules.x86.conv2d_int8``, ``...arm.conv2d_int8``)
only choose the parameters.
"""
from __future__ import annotations

from tvmq.schedules.blocked import BLOCK_CONV, BLOCK_DECODE_W, BLOCK_DENSE, BLOCK_DWCONV
from tvmq.schedules.blocked_planar import LAYOUT as PLANAR
from tvmq.schedules.blocked_planar import LAYOUT_KEY as PLANAR_KEY
from tvmq.schedules.common import (PACK_BLOCKS, child_blocks, divisor_at_most,
                                   inline_epilogue, place_epilogue, schedule_injective)

EPILOGUE_CHANNEL_INNER = False
DECODE_HOISTED = True
#: decoded weight bytes one output-channel block group may occupy (in L2, 1-2 MiB a core)
DECODE_BLOCK_BYTES = 256 * 1024
#: fewest parallel tasks for decoding per output-channel block group (balanced on 2 or 4 cores)
DECODE_MIN_TASKS = 4
MAX_ACC_REGS = 24  # of 32 zmm: the rest hold weights and broadcasts


def _schedule_packs(sch) -> None:
    for blk in child_blocks(sch):
        if sch.get(blk).name_hint in PACK_BLOCKS:
            schedule_injective(sch, blk)


def _finish_epilogue(sch, anchor: str, outs, at_loop, channel_inner: bool = False) -> None:
    """Attach the epilogue under ``at_loop`` (:func:`place_epilogue`); vectorize it along
    the channel block when ``channel_inner`` (contiguous accumulators and per-channel
    parameters), else along W."""
    for out in place_epilogue(sch, anchor, outs, at_loop):  # unit loops: replayable traces
        inner = _loops_after(sch, out, at_loop)
        if channel_inner and len(inner) >= 2:
            sch.reorder(*inner[1:], inner[0])
            inner = _loops_after(sch, out, at_loop)
        if inner and _const_extent(sch, inner[-1]) <= 64:
            sch.vectorize(inner[-1])


def schedule_decode(sch, at_loop, hoisted: bool = False) -> None:
    """Decode sub-byte weights (block ``BLOCK_DECODE_W``, if any) under ``at_loop``.

    Placed inside the reduction loop, it decodes just the weight blocks the register tile
    needs next (a few hundred bytes, in L1) instead of a dense int8 copy: the inner
    ``g * ib`` bytes of a block are one vector load, shifted ``per`` times (``per`` unrolled);
    3/5/6/7-bit byte planes (:mod:`tvmq.schedules.blocked_planar`): ``G``-byte vectors of
    one or two planes, shifted 8 times (unrolled).
    ``hoisted``: ``at_loop`` holds many register tiles (a row, or an output-channel block
    group, see :func:`_decode_level`); their weights are decoded once into a buffer of at
    most ``DECODE_BLOCK_BYTES`` that every tile under ``at_loop`` reads.
    """
    if not _has_decode(sch):
        return
    dec = sch.get_sblock(BLOCK_DECODE_W)
    sch.compute_at(dec, at_loop, preserve_unit_loops=True)  # replayable traces
    loops = _loops_after(sch, dec, at_loop)
    oi, ci = loops[-2], loops[-1]
    # the stored weights (a codebook decode also reads its 1-D table)
    stored = next(r.source.shape for r in sch.get(dec).reads if len(r.source.shape) > 1)
    if sch.get(dec).annotations.get(PLANAR_KEY) == PLANAR:
        # byte planes [.., bits, G]: value h * G + j of the block, G bytes a plane
        h, j = sch.split(sch.fuse(oi, ci), [None, int(stored[-1])])
        sch.vectorize(j)
    else:
        g = int(stored[-2])  # bytes per ``ib`` column: ob / per
        h, j = sch.split(oi, [None, g])
        sch.reorder(h, j, ci)
        sch.vectorize(sch.fuse(j, ci))
    for lp in ([] if hoisted else loops[:-2]) + [h]:
        sch.unroll(lp)


def _decode_level(sch, o_o, x_o) -> str:
    """Where sub-byte weights are decoded: ``"block"`` (once per output-channel block group,
    when its decoded weights fit ``DECODE_BLOCK_BYTES`` and there are ``DECODE_MIN_TASKS``
    groups to share among the cores), ``"row"`` (once per output row of several register
    tiles) or ``"tile"`` (per register tile, inside the reduction loop).

    Measured on ResNet-18 int4 (Zen 5, 2 cores): per tile, the 3x3 convs ran 10-20% slower
    than int8 (the decode's 3 GFNI ops per weight vector feed only one tile's 14 dot
    products).
    """
    dec = sch.get(sch.get_sblock(BLOCK_DECODE_W))
    per_block = 1
    for d in dec.writes[0].source.shape[1:]:
        per_block *= int(d)
    if (_const_extent(sch, o_o) >= DECODE_MIN_TASKS
            and per_block * (int(dec.writes[0].source.shape[0]) // _const_extent(sch, o_o))
            <= DECODE_BLOCK_BYTES):
        return "block"
    return "row" if _const_extent(sch, x_o) > 1 else "tile"


def _has_decode(sch) -> bool:
    return any(sch.get(b).name_hint == BLOCK_DECODE_W for b in child_blocks(sch))


def _loops_after(sch, blk, at_loop):
    loops = sch.get_loops(blk)
    idx = [i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(at_loop))]
    return loops[idx[0] + 1:] if idx else loops


def _const_extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _tile_factor(sch, extent: int, cap: int, fixed: int | None, sample: bool,
                 default: int | None = None, multiple: int = 1):
    """A split factor: ``fixed``; else ``default`` (or the largest divisor of ``extent``
    up to ``cap``); or, for MetaSchedule, a divisor sampled with half the probability on
    that default, so the search starts around the default tile. ``multiple``: sampled
    factors are multiples of it (a tensor intrinsic over that many pixels)."""
    if fixed:
        return fixed
    best = default or divisor_at_most(extent, cap)
    if not sample:
        return best
    cands = [d for d in range(1, min(extent, max(cap, best)) + 1)
             if extent % d == 0 and d % multiple == 0]
    probs = [0.5 if d == best else 0.5 / max(1, len(cands) - 1) for d in cands]
    if len(cands) == 1:
        return cands[0]
    return sch.sample_categorical(candidates=cands, probs=probs)


#: weight bytes one register tile may stream per output row (about half of a 32-48 KiB L1d)
W_TILE_BYTES = 16 * 1024
#: fewest accumulators that hide the dot-product latency (about 5 cycles, 2 per cycle)
MIN_ACC = 12


def register_tile(n_x: int, n_o: int, max_acc: int, max_ow: int, min_ob: int = 1,
                  block_bytes: int = 0, max_ob: int = 8,
                  wide_rows: bool = False, ow_multiple: int = 1) -> tuple[int, int]:
    """``(ow, ob)``: output pixels x channel blocks of one register tile.

    ``block_bytes``: weight bytes of one output-channel block (``C * KH * KW * ob_lanes``).
    A tile takes as many channel blocks as keep its weights under ``W_TILE_BYTES`` (they
    are re-read for every row of pixels), then the most accumulators
    (``ow * ob <= max_acc``) among divisors of the row width and the block count; ties go
    to fewer loads per dot product (``ow + ob``). Measured (2 cores, Zen 5): a 3x3
    256->256 conv at 14x14 runs 0.15 ms with 14x1 and 0.20-0.24 ms with 2x8 (295 KB of
    weights per tile: out of L1); ``max_acc`` per target (x86: 14, see
    :mod:`tvmq.schedules.x86.conv2d_int8`).
    ``wide_rows``: the epilogue writes NCHW, one row segment per channel, so the widest
    ``ow`` comes first (ResNet-18's stem: 0.52 ms with 16x1, 0.61 ms with 4x4).
    ``ow_multiple``: ``ow`` a multiple of it (``n_x`` must be one).
    """
    fit = max(1, W_TILE_BYTES // block_bytes) if block_bytes else max_ob
    obs = [d for d in range(1, min(n_o, max_ob) + 1) if n_o % d == 0]
    ows = [d for d in range(1, min(n_x, max_ow) + 1) if n_x % d == 0 and d % ow_multiple == 0]
    cands = [(ow, ob) for ow in ows for ob in obs if ow * ob <= max_acc]
    cands = [c for c in cands if c[1] >= min(min_ob, obs[-1])] or cands
    fitting = [c for c in cands if c[1] <= max(fit, min_ob)] or cands
    if wide_rows:  # NCHW output: each channel's row is stored from the tile
        fitting = [c for c in fitting if c[0] == max(f[0] for f in fitting)]
    best = max(fitting, key=lambda c: (c[0] * c[1], -(c[0] + c[1]), c[1]))
    if best[0] * best[1] < MIN_ACC:  # too few independent dot-product chains: more blocks
        more = [c for c in cands if c[0] * c[1] >= MIN_ACC]
        best = min(more, key=lambda c: (c[1], -c[0] * c[1])) if more else best
    return best


def _unit_w_stride(block) -> bool:
    """Whether the conv ``block`` reads its input's W axis at ``x + kw * dw`` (unit stride:
    neighbouring output pixels read neighbouring, contiguous ``ib``-channel groups)."""
    from tvmq._tvm import tvm

    x = block.iter_vars[3].var
    for r in block.reads:
        if len(r.source.shape) == 5:  # the blocked input [N, C/xb, Hp, Wp, xb]
            coef = tvm.sym.detect_linear_equation(r.region[3].min, [x])
            return len(coef) == 2 and isinstance(coef[0], tvm.tirx.IntImm) \
                and int(coef[0]) == 1 and int(r.region[3].extent) == 1
    return False


def _pixel_group(sch, conv, n_x: int, group_intrins: dict | None, ow_tile) -> int:
    """Pixels ``G`` of the largest intrinsic in ``group_intrins`` (``{G: name}``) usable for
    this conv (unit W stride, ``G`` divides the row, and ``ow_tile`` when fixed); 1: none."""
    if not group_intrins or not _unit_w_stride(sch.get(conv)):
        return 1
    for g in sorted(group_intrins, reverse=True):
        if n_x % g == 0 and (not ow_tile or ow_tile % g == 0):
            return g
    return 1


def schedule_conv(sch, intrin: str, ob_tile: int | None = None, ow_tile: int | None = None,
                  max_acc: int = MAX_ACC_REGS, max_ow: int = 16, min_ob: int = 1,
                  sample: bool = False, group_intrins: dict | None = None):
    """Tensorize ``BLOCK_CONV`` with ``intrin`` and fuse the epilogue per tile.

    ``sample=True`` draws the register tile with ``sample_categorical`` (a MetaSchedule
    design space around this default; see :func:`tvmq.schedules.tune_space`).
    ``group_intrins``: ``{G: intrinsic}`` over ``G`` output pixels at once (one load of
    their contiguous inputs; e.g. ``sdot`` by element on Arm), used for unit-stride convs
    with the tile's pixels a multiple of ``G`` (the largest such ``G``).
    """
    conv = sch.get_sblock(BLOCK_CONV)
    _schedule_packs(sch)
    outs = inline_epilogue(sch, (BLOCK_CONV,))
    b, o, y, x, oi, *red_loops, ci = sch.get_loops(conv)  # red: cb[, kh, kw][, cs]
    n_o, n_x = _const_extent(sch, o), _const_extent(sch, x)
    group = _pixel_group(sch, conv, n_x, group_intrins, ow_tile)
    block_bytes = _const_extent(sch, oi) * _const_extent(sch, ci)
    for lp in red_loops:
        block_bytes *= _const_extent(sch, lp)
    nchw_out = any(len(sch.get(out).writes[0].source.shape) == 4 for out in outs)
    best_ow, best_ob = register_tile(n_x, n_o, max_acc, max(max_ow, group), min_ob,
                                     block_bytes, wide_rows=nchw_out, ow_multiple=group)
    ow_tile = _tile_factor(sch, n_x, max(max_ow, group), ow_tile, sample, best_ow,
                           multiple=group)
    ob_tile = _tile_factor(sch, n_o, max(best_ob, 4), ob_tile, sample, best_ob)
    o_o, o_i = sch.split(o, [None, ob_tile])
    x_o, x_i = sch.split(x, [None, ow_tile])
    if len(red_loops) in (2, 4) and len(sch.get(conv).iter_vars) in (8, 10):
        # blocked input (cb, [kh, kw,] cs): one loop over all ib-channel sub-blocks, taps
        # inside, like the NCHW-packed kernel (a short cs loop gets unrolled by LLVM around
        # the whole register tile: 4x the code, 10x the compile time)
        cb, *taps, cs = red_loops
        sch.reorder(cb, cs, *taps)
        red_loops = [sch.fuse(cb, cs), *taps]
    sch.reorder(b, o_o, y, x_o, *red_loops, o_i, x_i, oi, ci)
    level = _decode_level(sch, o_o, x_o) if DECODE_HOISTED and _has_decode(sch) else "tile"
    if level == "tile":
        schedule_decode(sch, red_loops[-1])
        tile = sch.fuse(b, o_o, y, x_o)
        sch.parallel(tile)
        _finish_epilogue(sch, BLOCK_CONV, outs, tile, channel_inner=EPILOGUE_CHANNEL_INNER)
    else:
        # sub-byte weights: decode an output-channel block's (or a row's) weights once into
        # a small buffer that every register tile under it reads, not once per tile
        outer = sch.fuse(b, o_o) if level == "block" else sch.fuse(b, o_o, y)
        sch.parallel(outer)
        schedule_decode(sch, outer, hoisted=True)
        _finish_epilogue(sch, BLOCK_CONV, outs, x_o, channel_inner=EPILOGUE_CHANNEL_INNER)
    init = sch.decompose_reduction(conv, red_loops[0])
    sch.vectorize(sch.get_loops(init)[-1])
    if group > 1:
        x_i, x_g = sch.split(x_i, [None, group])
        sch.tensorize(x_g, group_intrins[group])
    else:
        sch.tensorize(oi, intrin)
    sch.unroll(x_i)
    sch.unroll(o_i)
    return sch


def schedule_dense(sch, intrin: str, m_tile: int | None = None, max_acc: int = MAX_ACC_REGS):
    """Tensorize ``BLOCK_DENSE`` (``[M, NB, 16]`` accumulators) with ``intrin``."""
    dense = sch.get_sblock(BLOCK_DENSE)
    _schedule_packs(sch)
    outs = inline_epilogue(sch, (BLOCK_DENSE,))
    i, j, jj, kb, ki = sch.get_loops(dense)
    n_i, n_j = _const_extent(sch, i), _const_extent(sch, j)
    m_tile = m_tile or divisor_at_most(n_i, 8)
    j_tile = divisor_at_most(n_j, max(1, max_acc // m_tile // 2))
    i_o, i_i = sch.split(i, [None, m_tile])
    j_o, j_i = sch.split(j, [None, j_tile])
    sch.reorder(i_o, j_o, kb, j_i, i_i, jj, ki)
    schedule_decode(sch, kb)
    tile = sch.fuse(i_o, j_o)
    ext = sch.get(tile).extent
    if not hasattr(ext, "value") or int(ext.value) > 1:  # one tile: no pool to wake (a few us)
        sch.parallel(tile)
    _finish_epilogue(sch, BLOCK_DENSE, outs, tile)
    init = sch.decompose_reduction(dense, kb)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(jj, intrin)
    sch.unroll(i_i)
    sch.unroll(j_i)
    return sch


def schedule_depthwise(sch, vec: int = 16, dot_intrin: str | None = None, sample: bool = False):
    """Vectorize ``BLOCK_DWCONV`` along the output row; epilogue per row tile.

    A blocked-layout depthwise conv (:func:`tvmq.schedules.blocked.depthwise_nchwc`) is
    vectorized over ``(pixel, channel)`` instead (:func:`schedule_depthwise_blocked`); its
    4-tap dot-product form (8 loops, :func:`tvmq.schedules.blocked.depthwise_nchwc_dot`) is
    tensorized with ``dot_intrin`` (:func:`schedule_depthwise_dot`, ``sample`` for tuning).
    """
    dw = sch.get_sblock(BLOCK_DWCONV)
    if len(sch.get_loops(dw)) == 8:
        if dot_intrin is None:
            raise ValueError("a 4-tap dot-product depthwise kernel needs its tensor intrinsic")
        return schedule_depthwise_dot(sch, dot_intrin, sample=sample)
    if len(sch.get_loops(dw)) == 7:
        return schedule_depthwise_blocked(sch)
    _schedule_packs(sch)
    outs = inline_epilogue(sch, (BLOCK_DWCONV,))
    b, c, y, x, kh, kw = sch.get_loops(dw)
    x_o, x_i = sch.split(x, [None, divisor_at_most(_const_extent(sch, x), vec)])
    sch.reorder(b, c, y, x_o, kh, kw, x_i)
    tile = sch.fuse(b, c, y)
    sch.parallel(tile)
    sch.vectorize(x_i)  # before decompose_reduction: after it the update is not "complete"
    sch.unroll(kw)
    _finish_epilogue(sch, BLOCK_DWCONV, outs, tile)
    init = sch.decompose_reduction(dw, kh)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch


def schedule_depthwise_blocked(sch):
    """``[N, C/ib, OH, OW, ib]`` depthwise: one vector of ``pixels x ib`` int32 lanes per row
    chunk (``pixels`` from the repeated weights' shape), taps unrolled, epilogue per row."""
    dw = sch.get_sblock(BLOCK_DWCONV)
    for blk in child_blocks(sch):
        if sch.get(blk).name_hint not in PACK_BLOCKS:
            continue
        loops = sch.get_loops(blk)
        if len(loops) == 6:  # W de-interleaved: copy whole ib-channel pixels (no gathers)
            sch.parallel(sch.fuse(*loops[:3]))
            sch.vectorize(loops[-1])
        else:
            schedule_injective(sch, blk)
    outs = inline_epilogue(sch, (BLOCK_DWCONV,))
    b, c, y, x, ci, kh, kw = sch.get_loops(dw)
    w_rep = [r for r in sch.get(dw).reads if len(r.source.shape) == 4][0].source
    pixels = int(w_rep.shape[-1]) // _const_extent(sch, ci)
    x_o, x_i = sch.split(x, [None, pixels])
    sch.reorder(b, c, y, x_o, kh, kw, x_i, ci)
    tile = sch.fuse(b, c, y)
    sch.parallel(tile)
    sch.vectorize(sch.fuse(x_i, ci))
    sch.unroll(kw)
    # one vector of the channel block per pixel (contiguous parameters)
    for out in place_epilogue(sch, BLOCK_DWCONV, outs, tile, preserve_unit_loops=False):
        inner = _loops_after(sch, out, tile)
        if inner:
            sch.vectorize(inner[-1])
    init = sch.decompose_reduction(dw, kh)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch


def _sample_choice(sch, cands: list, default, sample: bool):
    """``default``, or (for MetaSchedule) one of ``cands`` drawn with half the probability on
    it, as a concrete value: structural choices branch on it (the decision is recorded in
    the trace and replays; llvm's mutators never change a plain categorical)."""
    if not sample or len(cands) == 1:
        return default
    probs = [0.5 if c == default else 0.5 / (len(cands) - 1) for c in cands]
    idx = sch.sample_categorical(candidates=list(range(len(cands))), probs=probs)
    return cands[int(sch.get(idx))]


def schedule_depthwise_dot(sch, intrin: str, pixels: int | None = None, pad_at: str | None = None,
                           sample: bool = False):
    """:func:`tvmq.schedules.blocked.depthwise_nchwc_dot`: ``pixels`` output pixels (of 16
    channels) per register tile, their accumulators live across all taps; every tap group
    is one tensorized 16x4 per-lane dot product; epilogue per tile (in registers).

    ``pad_at``: where the in-kernel pad block runs: ``"root"`` (default: once, before the
    conv) or ``"tile"`` (each register tile pads its own input window, in L1). Measured
    (Zen 5, 2 cores, MobileNetV2's shapes): alone, ``"tile"`` ran strided kernels at
    0.63-0.84x of ``"root"`` and the others at 1.0-1.35x; inside the model the strided ones
    gained nothing measurable, so ``"root"`` everywhere, and tuning may pick ``"tile"``.
    ``sample=True`` draws the placement and the pixels a tile (default 8) for MetaSchedule.
    """
    dw = sch.get_sblock(BLOCK_DWCONV)
    pads = [blk for blk in child_blocks(sch) if sch.get(blk).name_hint in PACK_BLOCKS]
    b, c, y, x, ci, kh, g, k = sch.get_loops(dw)
    n_x = _const_extent(sch, x)
    pad_at = pad_at or _sample_choice(sch, ["root", "tile"], "root", sample and bool(pads))
    pixels = _tile_factor(sch, n_x, 16, pixels, sample, divisor_at_most(n_x, 8))
    if pad_at == "root":
        _schedule_packs(sch)
    outs = inline_epilogue(sch, (BLOCK_DWCONV,))
    x_o, x_i = sch.split(x, [None, pixels])
    sch.reorder(b, c, y, x_o, kh, g, x_i, ci, k)
    tile = sch.fuse(b, c, y)
    sch.parallel(tile)
    if pad_at == "tile":
        for pad in pads:
            sch.compute_at(pad, x_o, preserve_unit_loops=True)
            sch.vectorize(sch.get_loops(pad)[-1])
    for out in place_epilogue(sch, BLOCK_DWCONV, outs, x_o):
        inner = _loops_after(sch, out, x_o)
        if inner:
            sch.vectorize(inner[-1])
    init = sch.decompose_reduction(dw, kh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ci, intrin)
    sch.unroll(x_i)
    sch.unroll(g)
    sch.unroll(kh)
    return sch
