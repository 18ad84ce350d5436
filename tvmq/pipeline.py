"""The compile pipeline: Relax passes in numbered phases, per board.

Phases (each a list of passes, a function of the board and the options):

0. ``canonicalize``: fold constants and BatchNorm, decompose inference-only ops.
1. ``quantize``: rewrite quantize/dequantize patterns into integer ops (tvmq.passes).
2. ``legalize``: lower Relax ops to TIR and fuse them.
3. ``tuned``: apply the tuned MetaSchedule database (``options.database``, else the one
   shipped for the board in ``tvmq.schedules/<board>/``), if it fits TVM version and target.
4. ``schedule``: default schedules for the board, for everything the database did not cover.
5. ``lower``: VM lowering (memory planning, builtins) before codegen.

``dump_dir`` writes the IR after each phase to ``NN-<phase>.py`` for debugging.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable

from tvmq._tvm import relax, tvm
from tvmq.boards import Board

PhaseFn = Callable[[Board, "PipelineOptions"], list]


@dataclasses.dataclass
class PipelineOptions:
    """Knobs of :func:`build_pipeline`.

    Parameters
    ----------
    integer : bool
        Run the integer-lowering phase (a no-op on float graphs).
    match_onnxruntime : bool
        Reproduce onnxruntime bit for bit: requantize with its float32 product rounding
        (conv/dense; slower, the longer chain does not fuse into the kernels) and residual
        adds as its QLinearAdd float32 FMA chain (a 256x256 lookup table per add, built at
        compile time); default rounds the exact rational half to even (``tvmq.qref``).
    keep_subbyte_packed : bool
        Keep conv/dense weights that fit 2..7 bits packed at their width in the artifact
        (:mod:`tvmq.ir.codecs`) and decode them inside the kernels, per register tile
        (default). False decodes them to int8 at compile time (artifact as large as int8;
        for comparison).
    integer_lut : bool
        Elementwise float functions between 8-bit quantized tensors (Hardswish, SiLU, GELU,
        LeakyReLU, Sigmoid, ...) become 256-entry lookup tables
        (:class:`tvmq.passes.LowerIntegerLUT`; default). False keeps them float
        (dequantize -> function -> quantize; for comparison).
    blocked_layout : bool
        Integer layers exchange activations in the kernels' blocked layout ``NCHW{ob}c``
        (layout transforms only at the graph's edges; default; not with
        ``match_onnxruntime``). False: every conv packs its NCHW input and unpacks its
        output (for comparison).
    float_kernels : bool
        float32 conv2d (groups 1, depthwise) and dense/matmul with constant weights run
        tvmq's blocked FMA kernels (:class:`tvmq.schedules.BlockFloatOps`; default). False
        leaves them to TVM's unscheduled legalization (for comparison).
    gemv_form : {"auto", "direct", "lut"}
        Kernel of batch-1 dense layers with a codebook weight: ``"auto"`` (default) takes
        the activation-table GEMV (:mod:`tvmq.schedules.lut_gemv`) only for the shapes the
        CPU's shipped table measured it faster (:mod:`tvmq.schedules.gemv_select`);
        ``"direct"``/``"lut"`` force one form (for comparison and tests).
    dump_dir : path or None
        Write the IR after each phase there.
    database : path or None
        MetaSchedule database to apply in the schedule phase (default: the board's shipped one).
    """

    integer: bool = True
    dump_dir: str | None = None
    database: str | None = None
    use_shipped_database: bool = True
    match_onnxruntime: bool = False
    keep_subbyte_packed: bool = True
    blocked_layout: bool = True
    integer_lut: bool = True
    float_kernels: bool = True
    gemv_form: str = "auto"
    stats: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        from tvmq.schedules.gemv_select import MODES as forms

        if self.gemv_form not in forms:
            raise ValueError(f"PipelineOptions(gemv_form={self.gemv_form!r}): use one of "
                             f"{forms}, e.g. PipelineOptions(gemv_form='auto')")


def canonicalize_passes(board: Board, opts: PipelineOptions) -> list:
    from tvmq.passes import FoldBatchNormIntoConv, FoldConstantKeepQuantized, LowerCodebookWeights

    # FoldConstant would turn dequantize(W_int8) into float weights before the quantize phase,
    # and a codebook's take(table, indices) into the dense weight
    fold = FoldConstantKeepQuantized if opts.integer else relax.transform.FoldConstant
    return [LowerCodebookWeights(), fold(), FoldBatchNormIntoConv(), fold(),
            relax.transform.DecomposeOpsForInference()]


def quantize_passes(board: Board, opts: PipelineOptions) -> list:
    """Integer lowering of QDQ patterns (a no-op on float graphs); see ``tvmq.passes``.

    Ends with ``FoldConstant`` (float fallbacks fold their dequantized weights) and then
    ``PackSubByteWeights``, whose encoded weights (calls of marked decode functions,
    :mod:`tvmq.ir.encoded`) no ``FoldConstant`` evaluates.
    """
    from tvmq import passes as P

    if not opts.integer:
        return []
    f32 = opts.match_onnxruntime
    lut = [P.LowerIntegerLUT()] if opts.integer_lut else []
    return [*lut, P.SinkDequantize(), P.LowerIntegerConv(split_bias=not f32),
            P.LowerIntegerAdd(f32),
            P.LowerIntegerConcat(),
            P.LowerIntegerPool(), P.SinkDequantize(), P.IntegerRequantize(f32),
            P.SinkDequantize(), P.IntegerRequantize(f32),
            relax.transform.FoldConstant(), relax.transform.DeadCodeElimination(),
            P.PackSubByteWeights()]


def _warn_without_strategy(board: Board) -> None:
    """Warn (once per board and target) when tvmq has no integer kernels for ``board``."""
    from tvmq.schedules import strategy_for

    target = board.tvm_target()
    if strategy_for(target) is not None:
        return
    attrs = target.attrs
    what = " ".join(str(attrs[k]) for k in ("mtriple", "mcpu") if attrs.get(k)) or str(target)
    warnings.warn(f"board {board.name!r} ({what}) has no tvmq integer-kernel strategy: its "
                  "int8 conv/dense layers fall back to generic scalar TIR (no SIMD dot "
                  "products, several times slower)", stacklevel=2)


def legalize_passes(board: Board, opts: PipelineOptions) -> list:
    # With integer lowering, constants were folded at the end of the quantize phase (a fold
    # here would leave the encoded weights alone: FoldConstant never evaluates their decode).
    fold = [] if opts.integer else [relax.transform.FoldConstant()]
    from tvmq import passes as P

    # tvmq.schedules: integer conv/matmul -> the board's blocked kernels (weights packed now)
    from tvmq import schedules

    if opts.integer:
        _warn_without_strategy(board)
    prelude = schedules.legalize_prelude(board.tvm_target(),
                                         subbyte_in_kernel=opts.keep_subbyte_packed,
                                         # match_onnxruntime's float32 emulation has bool
                                         # stages TVM 0.27 cannot re-layout (transform_layout
                                         # pads bool with float): it keeps NCHW
                                         blocked_layout=opts.blocked_layout
                                         and not opts.match_onnxruntime,
                                         float_kernels=opts.float_kernels,
                                         gemv_form=opts.gemv_form)
    return [*prelude, relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(), P.MarkLookupsElementwise(), *fold,
            relax.transform.FuseOps(), relax.transform.FuseTIR()]


def tuned_passes(board: Board, opts: PipelineOptions) -> list:
    from tvmq._tvm import TVM_VERSION
    from tvmq.schedules import database as dbmod

    path = opts.database
    if path is None and opts.use_shipped_database:
        shipped = dbmod.shipped_dir(board.name, board.target)
        path = shipped if (shipped / dbmod.WORKLOAD_FILE).is_file() else None
        if path is None:  # none for this CPU: default schedules (meta.json says which exist)
            opts.stats["shipped_databases"] = dbmod.shipped_targets(board.name)
    opts.stats["database"] = str(path) if path else None
    opts.stats["tuned"] = []
    if path is None:
        return []
    db = dbmod.open_database(path, board.target, TVM_VERSION)
    if db is None:
        opts.stats["database"] = None
        return []

    @tvm.transform.module_pass(opt_level=0, name="ApplyTunedDatabase")
    def _apply(mod, _ctx):
        mod, tuned = dbmod.apply_database(mod, board.tvm_target(), db)
        opts.stats["tuned"] = tuned
        return mod

    return [_apply]


def schedule_passes(board: Board, opts: PipelineOptions) -> list:
    """Default schedules: tensorized int8 kernels, parallel+vectorized elementwise (tvmq.schedules).

    Functions already marked ``tirx.is_scheduled`` (e.g. by a tuned database applied before)
    are left alone.
    """
    from tvmq import schedules

    return schedules.schedule_passes(board.tvm_target())


def lower_passes(board: Board, opts: PipelineOptions) -> list:
    return [
        relax.transform.RewriteDataflowReshape(), relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(), relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(), relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(), relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(), relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]


PHASES: list[tuple[str, PhaseFn]] = [
    ("canonicalize", canonicalize_passes),
    ("quantize", quantize_passes),
    ("legalize", legalize_passes),
    ("tuned", tuned_passes),
    ("schedule", schedule_passes),
    ("lower", lower_passes),
]


def run_phases(mod: tvm.IRModule, board: Board, opts: PipelineOptions,
               until: str | None = None, start: str | None = None) -> tvm.IRModule:
    """Run the phases in order on ``mod`` (from ``start``, up to and including ``until``)."""
    from tvmq.passes import _qcommon

    names = [name for name, _ in PHASES]
    first = names.index(start) if start else 0
    if not first:
        _qcommon.SKIPPED.clear()  # float-fallback reasons of this compile (tvmq info)
    dump = Path(opts.dump_dir) if opts.dump_dir else None
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
        if not first:
            (dump / "00-input.py").write_text(mod.script(show_meta=False))
    with board.tvm_target(), tvm.transform.PassContext(opt_level=3):
        for i, (name, phase) in enumerate(PHASES[first:], start=first + 1):
            passes = phase(board, opts)
            if passes:
                mod = tvm.transform.Sequential(passes, name=name)(mod)
            if dump:
                (dump / f"{i:02d}-{name}.py").write_text(mod.script(show_meta=False))
            if name == until:
                break
    return mod


def build_pipeline(board: Board, opts: PipelineOptions | None = None) -> tvm.transform.Pass:
    """All phases as one ``Pass``, usable as ``tvm.compile(mod, target, relax_pipeline=...)``."""
    opts = opts or PipelineOptions()

    @tvm.transform.module_pass(opt_level=0, name="tvmq.pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return run_phases(mod, board, opts)

    return _pipeline
