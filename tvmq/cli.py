"""``tvmq`` command line: argument parsing only; every command calls the library.

Errors in the user's input (:class:`tvmq.errors.TvmqError`) print one line and exit with 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from tvmq.errors import InputMismatchError, TvmqError


def _parse_shapes(values: list[str] | None) -> dict[str, tuple[int, ...]] | None:
    """``NAME:1,3,224,224`` or ``1,3,224,224`` (first input) -> {name: shape}."""
    if not values:
        return None
    shapes = {}
    for i, text in enumerate(values):
        name, _, dims = text.rpartition(":")
        try:
            shapes[name or f"input{i}"] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise TvmqError(f"bad --input-shape {text!r}", "write NAME:1,3,224,224 or 1,3,224,224")
    return shapes


def _resolve_model(spec: str, shapes):
    """A model argument: ``zoo:NAME``, an ``.onnx`` file or a ``.pt2`` torch.export file."""
    if spec.startswith("zoo:"):
        import torch

        from tvmq import models

        name = spec[4:]
        shape = next(iter(shapes.values())) if shapes else models.input_shape(name)
        return models.create(name), torch.randn(*shape), None
    if shapes and any(k.startswith("input") and k[5:].isdigit() for k in shapes):
        shapes = _name_positional_shapes(spec, shapes)
    return spec, None, shapes


def _name_positional_shapes(path: str, shapes):
    from tvmq.frontend import load_onnx

    model = load_onnx(path)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    return {names[int(k[5:])] if k.startswith("input") and int(k[5:]) < len(names) else k: v
            for k, v in shapes.items()}


def cmd_compile(args) -> int:
    import tvmq

    from tvmq.artifact import check_output_dir

    check_output_dir(args.output)  # before a long compile
    shapes = _parse_shapes(args.input_shape)
    model, example, shapes = _resolve_model(args.model, shapes)
    opts = tvmq.PipelineOptions(dump_dir=args.dump_ir, database=_database_dir(args.db))
    artifact = tvmq.compile(model, example_inputs=example, board=args.board,
                            input_shapes=shapes, options=opts)
    path = artifact.save(args.output)
    sizes = artifact.meta["sizes"]
    print(f"compiled {args.model} for {args.board} -> {path} "
          f"({sizes['lib_bytes'] / 1024:.1f} KiB, {artifact.meta['compile_seconds']:.1f} s)")
    return 0


def _database_dir(db: str | None) -> str | None:
    """``--db DIR``: a database written by ``tvmq tune --db DIR``."""
    if db is None:
        return None
    from tvmq.schedules.database import WORKLOAD_FILE

    if not (Path(db) / WORKLOAD_FILE).is_file():
        raise TvmqError(f"--db {db} is not a tuning database (no {WORKLOAD_FILE})",
                        "pass the directory of `tvmq tune --db DIR`")
    return db


def _load_inputs(values: list[str], artifact) -> dict[str, np.ndarray] | list[np.ndarray]:
    from tvmq.data import load_array

    specs = artifact.input_specs
    named, positional = {}, []
    for text in values:
        name, sep, file = text.partition("=")
        if not sep:
            file, name = text, None
        arr = load_array(file)
        if name:
            named[name] = arr
        else:
            positional.append(arr)
    if named:
        named.update({s["name"]: a for s, a in zip(specs, positional)})
        return named
    return positional


def cmd_run(args) -> int:
    import tvmq
    from tvmq.artifact import atomic_write

    artifact = tvmq.load(args.artifact)
    if args.output and Path(args.output).is_dir():
        raise TvmqError(f"--output {args.output} is a directory", "name a file: OUT.npy or OUT.npz")
    inputs = _load_inputs(args.input, artifact)
    bad = artifact.nonfinite_inputs(inputs)
    if bad and args.check_inputs:
        raise InputMismatchError(bad, "clean the input, or drop --check-inputs to run anyway")
    if bad:
        print(f"tvmq run: warning: {bad}; the outputs may be NaN or meaningless "
              "(--check-inputs refuses such inputs)", file=sys.stderr)
    outputs = artifact.run(inputs)
    names = [o["name"] for o in artifact.meta["outputs"]]
    if args.output:
        out = Path(args.output)
        if out.suffix == ".npz" or len(outputs) > 1:
            atomic_write(out, lambda f: np.savez(f, **dict(zip(names, outputs))))
        else:
            atomic_write(out, lambda f: np.save(f, outputs[0]))
        print(f"wrote {len(outputs)} output(s) to {out}")
    else:
        for name, arr in zip(names, outputs):
            print(f"{name}: shape={list(arr.shape)} dtype={arr.dtype}\n{arr}")
    return 0


def cmd_boards(args) -> int:
    from tvmq.boards import list_boards

    if args.json:
        print(json.dumps([{"name": b.name, "target": b.target, "cross_compiler": b.cross_compiler,
                           "rpc_key": b.rpc_key, "cores": b.cores, "arch": b.arch,
                           "notes": b.notes} for b in list_boards()], indent=2))
        return 0
    print(f"{'board':<14}{'arch':<9}{'cores':<7}{'mcpu':<13}notes")
    for b in list_boards():
        print(f"{b.name:<14}{b.arch:<9}{b.cores:<7}{b.target.get('mcpu', ''):<13}{b.notes}")
    return 0


def cmd_info(args) -> int:
    import tvmq
    from tvmq.report import format_codebooks, format_float_ops, format_layers

    artifact = tvmq.load(args.artifact)
    meta = artifact.meta
    try:
        artifact.verified_lib_path()
        library = "matches meta.json (size, SHA-256, TVM version, arch)"
    except TvmqError as err:  # info still describes it; run/load refuse it
        library = f"UNUSABLE: {err.problem}"
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    board = meta["board"]
    print(f"artifact   {Path(args.artifact).resolve()}")
    print(f"board      {board['name']} ({board['arch']}), TVM {meta['tvm_version']}, "
          f"from {meta['source']}")
    for kind in ("inputs", "outputs"):
        for s in meta[kind]:
            print(f"{kind[:-1]:<10} {s['name']} {s['shape']} {s['dtype']}")
    print(f"library    {library}")
    print("sizes      " + ", ".join(f"{k}={v}" for k, v in meta["sizes"].items()))
    print(format_layers(meta["layers"]))
    books = format_codebooks(meta["layers"])
    if books:
        print(books)
    if meta.get("ops"):
        print(format_float_ops(meta["ops"]))
    return 0


def cmd_verify(args) -> int:
    import tvmq
    from tvmq.data import load_array
    from tvmq.verify import verify

    target = args.artifact
    if (Path(target) / "meta.json").is_file():
        target = tvmq.load(target)
    report = verify(target, args.reference, load_array(args.input),
                    reference=args.ort)
    if report["reference_note"]:
        print(f"reference: onnxruntime, QDQ graph in float ({report['reference_note']})",
              file=sys.stderr)
    print(f"{'layer':<40}{'dtype':<9}{'max steps':>10}{'mismatched':>12}")
    for layer in report["layers"]:
        print(f"{layer['name'][:39]:<40}{str(layer['dtype']):<9}{layer['max_steps']:>10}"
              f"{layer['mismatched_fraction'] * 100:>11.3f}%")
    print(f"worst: {report['worst_steps']} step(s); "
          f"{report['mismatched_fraction'] * 100:.3f}% of elements differ")
    return 0 if report["worst_steps"] <= args.max_steps else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvmq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile an ONNX / .pt2 / zoo:NAME model to an artifact")
    p.add_argument("model", help="model.onnx, program.pt2 (torch.export.save) or zoo:NAME")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write")
    p.add_argument("--board", default="host", help="target board (see `tvmq boards`)")
    p.add_argument("--input-shape", action="append", metavar="[NAME:]D0,D1,...",
                   help="static input shape (repeat per input)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after each pipeline phase")
    p.add_argument("--db", metavar="DIR", help="apply this tuning database (`tvmq tune --db`) "
                   "instead of the board's shipped one")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run an artifact on this machine")
    p.add_argument("artifact")
    p.add_argument("--input", action="append", required=True, metavar="[NAME=]FILE.npy")
    p.add_argument("--output", metavar="FILE.npy|FILE.npz")
    p.add_argument("--check-inputs", action="store_true",
                   help="refuse inputs holding NaN or infinity (default: warn and run)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("boards", help="list the board registry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_boards)

    p = sub.add_parser("info", help="describe an artifact")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("verify", help="compare a compiled model with onnxruntime, layer by layer")
    p.add_argument("artifact", help="artifact directory, or a quantized model.onnx to compile")
    p.add_argument("--reference", required=True, help="reference model.onnx (run by onnxruntime)")
    p.add_argument("--input", required=True, metavar="X.npy")
    p.add_argument("--max-steps", type=int, default=1,
                   help="exit 1 when any layer is off by more quantization steps (default 1)")
    p.add_argument("--ort", choices=["auto", "integer", "qdq-float"], default="auto",
                   help="onnxruntime's fused int8 kernels, or the QDQ graph in float; auto: "
                        "the int8 kernels unless they saturate on this CPU (x86 without VNNI)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="train, compile and run the digits CNN end to end")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("-o", "--output", default="out/demo", help="where artifacts and report go")
    p.set_defaults(func=lambda a: __import__("tvmq.demo", fromlist=["main"]).main(a))

    for module in _EXTENSIONS:
        _register_extension(sub, module)
    return parser


# Sub-command groups defined next to the library code they call: each module has
# ``add_parsers(subparsers)``.
_EXTENSIONS: list[str] = ["tvmq.quant.cli", "tvmq.device.cli", "tvmq.tune.cli", "tvmq.mixed.cli",
                          "tvmq.eqnet.cli"]


def _register_extension(sub, module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    (getattr(mod, "add_parsers", None) or mod.add_parser)(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TvmqError as err:
        print(f"tvmq {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # tvmq.tune.tuner.TuneInterrupted says what was kept
        print(f"tvmq {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
