"""ScheduleFloatKernels: default (untuned) schedules of tvmq's blocked float32 kernels.

For every PrimFunc not yet scheduled that holds a float kernel block
(:mod:`tvmq.schedules.blocked_float`, emitted by :class:`BlockFloatOps` and fused with its
epilogue by ``FuseOps``/``FuseTIR``):

* conv: a register tile of ``ow x ob_tile`` output vectors (pixels x channel blocks of one
  register each) accumulates in registers over the whole reduction (input-channel blocks,
  kernel taps, channels): per input channel, ``ob_tile`` weight vectors and ``ow``
  broadcast inputs feed ``ow * ob_tile`` FMAs (x86 ``vfmadd231ps``, Arm ``fmla``); tiles in
  parallel over (channel block group, output row); the fused epilogue (bias, BatchNorm,
  activation, residual add, unpack) runs on each tile while it is in registers;
* depthwise: a tile of ``ow`` pixels x one channel block, taps unrolled;
* dense: ``m x n_tile`` output vectors over the reduction.

No tensor intrinsic: the channel block is vectorized and the tile unrolled, LLVM emits the
FMAs. Position: schedule phase, before :class:`ScheduleIntegerKernels` (which leaves
functions marked ``tirx.is_scheduled`` alone). A schedule that fails leaves the function
unscheduled, with a warning.
"""
from __future__ import annotations

import warnings

from tvmq._tvm import s_tir, tir, tvm
from tvmq.schedules.blocked import BLOCK_DECODE_W
from tvmq.schedules.blocked_float import (BLOCK_FCONV, BLOCK_FDENSE, BLOCK_FDWCONV,
                                          TILE_ATTR, padded)
from tvmq.schedules.common import (PACK_BLOCKS, child_blocks, divisor_at_most,
                                   inline_epilogue, place_epilogue, schedule_injective)
from tvmq.schedules.strategy import FloatStrategy

FLOAT_KERNEL_BLOCKS = (BLOCK_FCONV, BLOCK_FDWCONV, BLOCK_FDENSE)
#: widest register tile row (pixels)
MAX_OW = 28
#: independent accumulators that hide the FMA latency (4 cycles, 2 FMAs a cycle)
LATENCY_CHAINS = 8
#: fewest multiply-adds a kernel needs to run on several threads (about 6 us on one core);
#: below, waking the pool costs more than it saves (the digits CNN's 8x8 convs)
PARALLEL_MIN_MACS = 1 << 18
#: output rows of a depthwise band (its input rows padded together, see schedule_depthwise)
DW_ROWS = 8


def conv_tile(n_x: int, n_o: int, fs: FloatStrategy,
              divisors_only: bool = False) -> tuple[int, int]:
    """``(ow, ob_tile)``: output pixels x channel blocks of one conv register tile.

    ``ob_tile`` divides the block count ``n_o``; ``ow`` need not divide the row width
    ``n_x`` (rows are computed in whole tiles, :func:`tvmq.schedules.blocked_float.conv2d`)
    unless ``divisors_only`` (an input read in place, without a padded copy). The
    accumulators (``ow * ob_tile * rpb``, ``rpb`` registers a channel block) fit
    ``fs.max_acc`` and, with the tile's weight vectors and one broadcast, ``fs.regs``.
    Score: the useful share of the padded row times the accumulators up to
    ``LATENCY_CHAINS``; ties to fewer loads per FMA, then to fewer channel blocks (more
    parallel tasks). Measured (Zen 3, AVX2, one core, thread CPU time): 4x2, 5x2, 6x2 and
    2x4 all run ResNet-18's 3x3 convs at 38-41 GMAC/s (peak about 40); 7x2 (14
    accumulators) spills and runs at 19-20.
    """
    rpb = max(1, fs.block // fs.lanes)
    obs = [d for d in range(1, n_o + 1) if n_o % d == 0]
    cands = [(ow, ob) for ow in _widths(n_x, divisors_only) for ob in obs
             if ow * ob * rpb <= fs.max_acc and (ow + 1) * ob * rpb + 1 <= fs.regs]

    def score(c):
        acc = c[0] * c[1] * rpb
        return (n_x / padded(n_x, c[0]) * min(acc, LATENCY_CHAINS),
                -(c[0] + c[1] * rpb) / acc, -c[1])

    return max(cands, key=score)


def _widths(n_x: int, divisors_only: bool) -> list[int]:
    return [w for w in range(1, min(n_x, MAX_OW) + 1) if not divisors_only or n_x % w == 0]


def depthwise_tile(n_x: int, fs: FloatStrategy, divisors_only: bool = False) -> tuple[int]:
    """``(ow,)``: output pixels of one depthwise register tile (one channel block)."""
    rpb = max(1, fs.block // fs.lanes)
    cands = [w for w in _widths(n_x, divisors_only) if w * rpb <= fs.max_acc]
    return (max(cands, key=lambda ow: (n_x / padded(n_x, ow) * min(ow * rpb, LATENCY_CHAINS),
                                       ow)),)


def _tile(sch, block) -> tuple[int, ...] | None:
    """The register tile the kernel's padded width was computed for (``TILE_ATTR``)."""
    tile = sch.get(block).annotations.get(TILE_ATTR)
    return tuple(int(t) for t in tile) if tile is not None else None


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _loops_after(sch, blk, at_loop):
    loops = sch.get_loops(blk)
    idx = [i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(at_loop))]
    return loops[idx[0] + 1:] if idx else loops


def _schedule_packs(sch, parallel: bool = True) -> None:
    for blk in child_blocks(sch):
        if sch.get(blk).name_hint not in PACK_BLOCKS:
            continue
        if parallel:
            schedule_injective(sch, blk)
            continue
        loops = sch.get_loops(blk)
        if 1 < _extent(sch, loops[-1]) <= 64:
            sch.vectorize(loops[-1])


def _schedule_weight_packs(sch, parallel: bool) -> None:
    """Run-time weights (block ``BLOCK_DECODE_W``): packed once a call, at the root."""
    for blk in child_blocks(sch):
        if sch.get(blk).name_hint != BLOCK_DECODE_W:
            continue
        if parallel:
            schedule_injective(sch, blk)
        else:
            sch.vectorize(sch.get_loops(blk)[-1])


def _work(sch, block) -> int:
    """Multiply-adds of a kernel block (the product of its loop extents)."""
    n = 1
    for iv in sch.get(block).iter_vars:
        n *= int(iv.dom.extent)
    return n


def _parallel(sch, loop, work: int) -> None:
    """Run ``loop`` on the thread pool unless the kernel is too small to pay for waking it
    (:data:`PARALLEL_MIN_MACS`)."""
    if work >= PARALLEL_MIN_MACS:
        sch.parallel(loop)


def _accumulate_locally(sch, kernel) -> None:
    """Accumulate in a ``local`` buffer that the epilogue reads directly: placed under the
    tile loop with the epilogue, it is one register tile (LLVM keeps it in registers)."""
    wb = sch.cache_write(kernel, 0, "local")
    try:
        sch.compute_inline(wb)
    except Exception:  # noqa: BLE001 - the kernel writes the function output: keep the copy
        sch.reverse_compute_inline(wb)


def _finish(sch, anchor: str, outs, at_loop) -> None:
    """Epilogue per tile under ``at_loop``, its innermost loop vectorized."""
    for out in place_epilogue(sch, anchor, outs, at_loop):
        inner = _loops_after(sch, out, at_loop)
        if inner and _extent(sch, inner[-1]) <= 64:
            sch.vectorize(inner[-1])


def _vectorize_reduction(sch, block, vec_loop, red) -> None:
    """Vectorize ``vec_loop`` of the reduction ``block``, then split off its init (in this
    order: after ``decompose_reduction`` the update is no longer a complete block)."""
    sch.vectorize(vec_loop)
    if red:
        init = sch.decompose_reduction(block, red[0])
        sch.vectorize(sch.get_loops(init)[-1])


def _divisors(n: int, cap: int) -> list[int]:
    return [d for d in range(1, min(n, cap) + 1) if n % d == 0]


def _choose(sch, cands: list[int], default: int, sample: bool):
    """``default``, or for MetaSchedule (``sample``) a ``sample_categorical`` over ``cands``
    with half the probability on it, so the search starts around the default tile."""
    cands = sorted(set(cands) | {default})
    if not sample or len(cands) == 1:
        return default
    probs = [0.5 if c == default else 0.5 / (len(cands) - 1) for c in cands]
    return sch.sample_categorical(candidates=cands, probs=probs)


def schedule_conv(sch, fs: FloatStrategy, ow_tile: int | None = None,
                  ob_tile: int | None = None, sample: bool = False):
    """Register-tiled ``BLOCK_FCONV`` (see the module docstring). ``sample``: draw the
    tile's pixels (divisors of the padded row) and channel blocks around the default, for
    MetaSchedule (:func:`tvmq.schedules.tune.kernel_space`)."""
    conv = sch.get_sblock(BLOCK_FCONV)
    work = _work(sch, conv)
    _schedule_packs(sch, work >= PARALLEL_MIN_MACS)
    _schedule_weight_packs(sch, work >= PARALLEL_MIN_MACS)
    outs = inline_epilogue(sch, (BLOCK_FCONV,))
    b, o, y, x, oi, *red = sch.get_loops(conv)
    n_x, n_o, rpb = _extent(sch, x), _extent(sch, o), max(1, _extent(sch, oi) // fs.lanes)
    best_ow, best_ob = _tile(sch, conv) or conv_tile(n_x, n_o, fs)
    ow = ow_tile or _choose(sch, _divisors(n_x, fs.max_acc // rpb), best_ow, sample)
    ob = ob_tile or _choose(sch, _divisors(n_o, fs.max_acc // rpb), best_ob, sample)
    o_o, o_i = sch.split(o, [None, ob])
    x_o, x_i = sch.split(x, [None, ow])
    # pixel-major inside the tile: one broadcast input feeds ob_tile FMAs, then dies (the
    # other order keeps ow broadcasts live: 6x2 on AVX2 spilled and ran 4x slower)
    sch.reorder(b, o_o, y, x_o, *red, x_i, o_i, oi)
    tile = sch.fuse(b, o_o, y)
    _parallel(sch, tile, work)
    _accumulate_locally(sch, conv)
    _finish(sch, BLOCK_FCONV, outs, x_o)
    _vectorize_reduction(sch, conv, oi, red)
    sch.unroll(x_i)
    sch.unroll(o_i)
    return sch


def schedule_depthwise(sch, fs: FloatStrategy, ow_tile: int | None = None,
                       sample: bool = False):
    """``BLOCK_FDWCONV``: ``ow`` pixels x one channel block a tile, taps unrolled.

    Parallel over bands of ``DW_ROWS`` output rows of a channel block; the input's pad (or
    pack) runs per band, on the input rows it reads: a depthwise conv does only 9
    multiply-adds an input element, so a separate pass over a whole padded copy costs as
    much as the conv. Measured (Zen 3, one core), MobileNetV2's stride-2 112x112
    depthwise: pad at the root 7.5 GMAC/s, per output row 12.6 (stride-1 ones lost up to
    20% there: each input row padded 3 times).
    """
    dw = sch.get_sblock(BLOCK_FDWCONV)
    work = _work(sch, dw)
    pads = [b for b in child_blocks(sch) if sch.get(b).name_hint in PACK_BLOCKS]
    _schedule_weight_packs(sch, work >= PARALLEL_MIN_MACS)
    outs = inline_epilogue(sch, (BLOCK_FDWCONV,))
    b, c, y, x, ci, *red = sch.get_loops(dw)
    n_x, rpb = _extent(sch, x), max(1, _extent(sch, ci) // fs.lanes)
    best = (_tile(sch, dw) or depthwise_tile(n_x, fs))[0]
    ow = ow_tile or _choose(sch, _divisors(n_x, fs.max_acc // rpb), best, sample)
    x_o, x_i = sch.split(x, [None, ow])
    y_o, y_i = sch.split(y, [None, divisor_at_most(_extent(sch, y), DW_ROWS)])
    sch.reorder(b, c, y_o, y_i, x_o, *red, x_i, ci)
    tile = sch.fuse(b, c, y_o)
    _parallel(sch, tile, work)
    for pad in pads:  # each band of rows pads its own input rows (in L2), see the docstring
        sch.compute_at(pad, tile, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(pad)[-1])  # one pixel's channel block
    _accumulate_locally(sch, dw)
    _finish(sch, BLOCK_FDWCONV, outs, x_o)
    _vectorize_reduction(sch, dw, ci, red)
    sch.unroll(x_i)
    for lp in red:
        sch.unroll(lp)
    return sch


def schedule_dense(sch, fs: FloatStrategy, m_tile: int | None = None, sample: bool = False):
    """``BLOCK_FDENSE`` (``[M, N/ob, ob]``): ``m x n_tile`` vectors a tile."""
    dense = sch.get_sblock(BLOCK_FDENSE)
    _schedule_weight_packs(sch, _work(sch, dense) >= PARALLEL_MIN_MACS)
    outs = inline_epilogue(sch, (BLOCK_FDENSE,))
    i, j, jj, *red = sch.get_loops(dense)
    rpb = max(1, _extent(sch, jj) // fs.lanes)
    m_tile = m_tile or divisor_at_most(_extent(sch, i), 4)
    cap = max(1, fs.max_acc // (m_tile * rpb))
    j_tile = _choose(sch, _divisors(_extent(sch, j), cap),
                     divisor_at_most(_extent(sch, j), cap), sample)
    i_o, i_i = sch.split(i, [None, m_tile])
    j_o, j_i = sch.split(j, [None, j_tile])
    sch.reorder(i_o, j_o, *red, i_i, j_i, jj)
    tile = sch.fuse(i_o, j_o)
    _parallel(sch, tile, _work(sch, dense))
    _accumulate_locally(sch, dense)
    _finish(sch, BLOCK_FDENSE, outs, tile)
    _vectorize_reduction(sch, dense, jj, red)
    sch.unroll(i_i)
    sch.unroll(j_i)
    return sch


def _block_names(func) -> set[str]:
    try:
        sch = s_tir().Schedule(func)
        return {sch.get(b).name_hint for b in child_blocks(sch)}
    except Exception:  # noqa: BLE001 - no root block: not a TE/TIR-script PrimFunc
        return set()


def schedule_sch(sch, fs: FloatStrategy, sample: bool = False) -> bool:
    """Schedule the float kernel in ``sch`` in place; False when it holds none."""
    names = {sch.get(b).name_hint for b in child_blocks(sch)}
    if BLOCK_FCONV in names:
        schedule_conv(sch, fs, sample=sample)
    elif BLOCK_FDWCONV in names:
        schedule_depthwise(sch, fs, sample=sample)
    elif BLOCK_FDENSE in names:
        schedule_dense(sch, fs, sample=sample)
    else:
        return False
    return True


def schedule(func, fs: FloatStrategy):
    """The scheduled float kernel ``func`` (one of ``FLOAT_KERNEL_BLOCKS``), or None."""
    sch = s_tir().Schedule(func)
    return sch.mod["main"] if schedule_sch(sch, fs) else None


def ScheduleFloatKernels(strategy: FloatStrategy | None) -> tvm.transform.Pass:  # noqa: N802
    """The schedule pass for ``strategy`` (identity when None)."""
    from tvmq.schedules.schedule_integer_kernels import check_parallel_writes

    @tvm.transform.module_pass(opt_level=0, name="tvmq.ScheduleFloatKernels")
    def _pass(mod, _ctx):
        if strategy is None:
            return mod
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tir.PrimFunc) or func.attrs is not None and \
                    func.attrs.get("tirx.is_scheduled", False):
                continue
            if not _block_names(func) & set(FLOAT_KERNEL_BLOCKS):
                continue
            try:
                new = schedule(func, strategy)
                check_parallel_writes(new)
            except Exception as err:  # noqa: BLE001 - fall back to the unscheduled loop nest
                warnings.warn(f"tvmq: default schedule of {gv.name_hint} failed "
                              f"({err!s:.300}); it runs unscheduled", stacklevel=1)
                continue
            updates[gv] = new.with_attr("tirx.is_scheduled", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass
