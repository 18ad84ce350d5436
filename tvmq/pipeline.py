"""The compile pipeline: Relax passes in numbered phases, per board.

Phases (each a list of passes, a function of the board and the options):

0. ``canonicalize``: fold constants and BatchNorm, decompose inference-only ops.
1. ``quantize``: rewrite quantize/dequantize patterns into integer ops (tvmq.passes).
2. ``legalize``: lower Relax ops to TIR and fuse them.
3. ``schedule``: apply tuned databases / default schedules for the board.
4. ``lower``: VM lowering (memory planning, builtins) before codegen.

``dump_dir`` writes the IR after each phase to ``NN-<phase>.py`` for debugging.
"""
from __future__ import annotations

import dataclasses
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
    dump_dir : path or None
        Write the IR after each phase there.
    database : path or None
        MetaSchedule database to apply in the schedule phase (default: the board's shipped one).
    """

    integer: bool = True
    dump_dir: str | None = None
    database: str | None = None


def canonicalize_passes(board: Board, opts: PipelineOptions) -> list:
    from tvmq.passes import FoldBatchNormIntoConv

    return [relax.transform.FoldConstant(), FoldBatchNormIntoConv(),
            relax.transform.FoldConstant(), relax.transform.DecomposeOpsForInference()]


def quantize_passes(board: Board, opts: PipelineOptions) -> list:
    return []


def legalize_passes(board: Board, opts: PipelineOptions) -> list:
    return [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]


def schedule_passes(board: Board, opts: PipelineOptions) -> list:
    return []


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
    ("schedule", schedule_passes),
    ("lower", lower_passes),
]


def run_phases(mod: tvm.IRModule, board: Board, opts: PipelineOptions,
               until: str | None = None) -> tvm.IRModule:
    """Run the phases in order on ``mod`` (up to and including ``until``)."""
    dump = Path(opts.dump_dir) if opts.dump_dir else None
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / "00-input.py").write_text(mod.script(show_meta=False))
    with board.tvm_target(), tvm.transform.PassContext(opt_level=3):
        for i, (name, phase) in enumerate(PHASES, start=1):
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
