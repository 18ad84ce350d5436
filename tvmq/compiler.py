"""``tvmq.compile``: model in, :class:`~tvmq.artifact.Artifact` out."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from tvmq._tvm import TVM_VERSION, tvm
from tvmq.artifact import FORMAT_VERSION, Artifact
from tvmq.boards import Board, ensure_cross_compiler, get_board
from tvmq.frontend import ImportedModel, import_model
from tvmq.layermap import layer_table
from tvmq.pipeline import PipelineOptions, run_phases
from tvmq.report import layer_report


def compile(model, example_inputs=None, board: str | Board = "host", *,
            input_shapes: dict[str, tuple[int, ...]] | None = None,
            options: PipelineOptions | None = None) -> Artifact:
    """Compile a PyTorch module or an ONNX model for ``board``.

    Parameters
    ----------
    model : torch.nn.Module, str, os.PathLike or onnx.ModelProto
        The model. A PyTorch module is traced with ``torch.export``.
    example_inputs : tensor or tuple of tensors, optional
        Example inputs of a PyTorch module (their shapes are compiled in).
    board : str or Board
        A registry name (``tvmq boards`` lists them), default ``"host"``.
    input_shapes : dict, optional
        Static shapes for ONNX inputs with dynamic dimensions.
    options : PipelineOptions, optional
        Pipeline knobs (IR dumps, tuned database).

    Returns
    -------
    Artifact
        Call ``.save(dir)`` to write it, ``.run(inputs)`` to run it here.
    """
    board = get_board(board)
    ensure_cross_compiler(board)
    opts = options or PipelineOptions()
    t0 = time.perf_counter()
    imported = import_model(model, example_inputs, input_shapes)
    mod = imported.bind_params()
    param_bytes = sum(int(v.nbytes) for v in imported.params.values())
    lowered = run_phases(mod, board, opts, until="quantize")
    ops = layer_report(lowered)
    rest = dataclasses.replace(opts, dump_dir=None)
    stages: dict[str, tvm.IRModule] = {}
    executable = _build(lowered, board, rest, dump_dir=opts.dump_dir, keep=stages)
    layers = layer_table(imported, lowered, stages.get("legalize"))
    meta = _meta(imported, board, layers, param_bytes, time.perf_counter() - t0)
    meta["ops"] = ops
    meta["schedules"] = {"database": rest.stats.get("database"),
                         "tuned_funcs": rest.stats.get("tuned", [])}
    if "shipped_databases" in rest.stats:  # none shipped for this CPU; these CPUs have one
        meta["schedules"]["shipped_for_other_cpus"] = rest.stats["shipped_databases"]
    if isinstance(model, (str, os.PathLike)):
        meta["model_path"] = str(Path(model).resolve())
    return Artifact(executable, meta)


def _build(mod: tvm.IRModule, board: Board, opts: PipelineOptions, dump_dir=None,
           keep: dict | None = None):
    """Build from the phase after ``quantize`` on; ``keep`` receives the module after each
    phase (by phase name)."""
    from tvmq.pipeline import PHASES

    start = [name for name, _ in PHASES].index("quantize") + 1

    @tvm.transform.module_pass(opt_level=0, name="tvmq.backend")
    def _backend(m, _ctx):
        with tvm.transform.PassContext(opt_level=3):
            for i, (name, phase) in enumerate(PHASES[start:], start=start + 1):
                m = tvm.transform.Sequential(phase(board, opts), name=name)(m)
                if keep is not None:  # a copy: later phases update functions in place
                    keep[name] = m.clone()
                if dump_dir:  # the phases before were dumped by run_phases
                    (Path(dump_dir) / f"{i:02d}-{name}.py").write_text(m.script(show_meta=False))
        return m

    from tvmq.schedules.lookup import register_pipeline

    target = board.tvm_target()
    with target:
        return tvm.compile(mod, target, relax_pipeline=_backend,
                           tir_pipeline=register_pipeline())


def _meta(imported: ImportedModel, board: Board, layers, param_bytes: int,
          seconds: float) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "tvm_version": TVM_VERSION,
        "source": imported.source,
        "inputs": [s.to_json() for s in imported.inputs],
        "outputs": imported.outputs,
        "board": {"name": board.name, "target": board.target, "arch": board.arch,
                  "cross_compiler": board.cross_compiler},
        "layers": layers,
        "sizes": {"param_bytes": param_bytes},
        "compile_seconds": round(seconds, 3),
    }
