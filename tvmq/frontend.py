"""Import a PyTorch module or an ONNX file into a Relax IRModule with detached parameters.

Both routes return an :class:`ImportedModel`: the module (its ``main`` takes the user inputs
first, then the parameters) plus the parameter arrays and the input/output signature.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tvmq import layermap
from tvmq._tvm import (detach_params, from_exported_program, from_onnx, relax, struct_dtype,
                       struct_shape, tvm)
from tvmq.errors import InputMismatchError, ModelLoadError, TvmqError, UnsupportedOpError


@dataclasses.dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclasses.dataclass
class ImportedModel:
    """A Relax module whose ``main`` takes ``inputs`` then ``params`` (already bound or not)."""

    mod: tvm.IRModule
    params: dict[str, np.ndarray]
    inputs: list[TensorSpec]
    source: str  # "torch" or "onnx"
    output_names: list[str] | None = None
    #: per compute binding of ``mod["main"]`` (program order): the layer's ONNX node and
    #: user-facing name (:mod:`tvmq.layermap`)
    layer_sources: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """Output specs (name, shape, dtype), flattened from ``main``'s return type."""
        leaves = _flatten_type(self.mod["main"].ret_ty)
        names = self.output_names or []
        return [{"name": names[i] if i < len(names) else f"output{i}",
                 "shape": [int(d) for d in t.shape], "dtype": str(t.dtype)}
                for i, t in enumerate(leaves)]

    def bind_params(self) -> tvm.IRModule:
        """The module with parameters bound as constants (what the compile pipeline wants)."""
        if not self.params:
            return self.mod
        consts = {k: tvm.runtime.tensor(v) for k, v in self.params.items()}
        return relax.transform.BindParams("main", consts)(self.mod)


def _flatten_type(ty) -> list:
    if isinstance(ty, relax.TupleType):
        return [leaf for field in ty.fields for leaf in _flatten_type(field)]
    return [ty]


def _torch_inputs(example_inputs) -> tuple:
    import torch

    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    return tuple(torch.as_tensor(x) for x in example_inputs)


def _export(model, args):
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model.eval(), args)
    except Exception as err:  # torch.export raises many types; all mean "cannot trace"
        _check_eager(model, args)  # ... unless the inputs themselves do not fit
        raise UnsupportedOpError(f"torch.export failed on {type(model).__name__}: "
                                 f"{str(err).splitlines()[0]}",
                                 "make forward() traceable (no data-dependent Python control "
                                 "flow) or export the model to ONNX and compile that") from err


def _check_eager(model, args) -> None:
    """Raise InputMismatchError when ``model(*args)`` fails in eager mode too: then the
    example inputs are wrong (shape, dtype, count), not the model's traceability."""
    import torch

    try:
        with torch.no_grad():
            model(*args)
    except Exception as err:
        shapes = ", ".join(str(list(a.shape)) for a in args)
        raise InputMismatchError(
            f"{type(model).__name__}.forward fails on the example input(s) of shape {shapes}: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}",
            "pass example_inputs of the shape and dtype forward() expects (--input-shape "
            "for zoo models)") from err


def import_torch(model, example_inputs=None) -> ImportedModel:
    """Import a ``torch.nn.Module`` (traced with ``torch.export``) or an ``ExportedProgram``."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        ep = model
    else:
        args = _torch_inputs(example_inputs)
        ep = _export(model, args)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = from_exported_program(ep, keep_params_as_input=True)
    except AssertionError as err:
        raise UnsupportedOpError(f"TVM's PyTorch frontend cannot import: {err}",
                                 "replace the named op(s) or compile an ONNX export") from err
    mod, params = detach_params(mod)
    main = mod["main"]
    n_in = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs else len(args)
    names = [p.name for p in main.params]
    param_arrays = {n: p.numpy() for n, p in zip(names[n_in:], params.get("main", []))}
    specs = [TensorSpec(p.name, struct_shape(p), struct_dtype(p)) for p in main.params[:n_in]]
    return ImportedModel(mod, param_arrays, specs, "torch",
                         layer_sources=layermap.torch_sources(ep, mod))


def load_onnx(path: str | os.PathLike):
    """Load and check an ONNX file; a missing/corrupt file is a :class:`ModelLoadError`."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} not found", "check the path")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError and friends
        raise ModelLoadError(f"{path} is not a valid ONNX file ({type(err).__name__}: {err})",
                             "re-export the model; the file is truncated or not ONNX") from err
    if not model.graph.node:
        raise ModelLoadError(f"{path} has an empty graph", "re-export the model")
    return model


def load_exported_program(path: str | os.PathLike):
    """Load a ``torch.export.save``'d program without unpickling arbitrary objects.

    ``torch.export.load`` falls back to ``torch.load(weights_only=False)`` and
    ``pickle.loads`` for some payloads, which runs whatever code a crafted file carries.
    Here every ``torch.load`` is forced to ``weights_only=True`` and the other unpickling
    entry points refuse, so a program holding only tensors and the graph loads, and a file
    that needs arbitrary Python objects is a ModelLoadError.
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} not found", "check the path")
    try:
        with _unpickling_refused():
            return _torch_export_load(path)
    except pickle.UnpicklingError as err:
        raise ModelLoadError(
            f"{path} holds pickled Python objects, which tvmq never loads (they can run "
            f"code)", "export the model to ONNX, or re-save a program whose constants are "
            "plain tensors") from err
    except Exception as err:
        raise ModelLoadError(f"{path} is not a valid torch.export program "
                             f"({type(err).__name__})", "re-save it with torch.export.save") from err


def _torch_export_load(path: Path):
    import logging

    import torch

    logger = logging.getLogger("torch.export")  # logs a traceback before falling back
    disabled, logger.disabled = logger.disabled, True
    try:
        return torch.export.load(str(path))
    finally:
        logger.disabled = disabled


class _RefusingPickle:
    """``pickle`` as seen by torch's archive reader, with every loader refusing."""

    def __getattr__(self, name):
        import pickle

        return getattr(pickle, name)

    @staticmethod
    def loads(*_args, **_kwargs):
        import pickle

        raise pickle.UnpicklingError("unpickling an arbitrary object")

    load = Unpickler = loads


@contextlib.contextmanager
def _unpickling_refused():
    import torch
    from torch.export.pt2_archive import _package

    env = {k: os.environ.pop(k, None)
           for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    saved = _package.pickle, torch._C._pickle_load_obj
    _package.pickle, torch._C._pickle_load_obj = _RefusingPickle(), _RefusingPickle.loads
    try:
        yield
    finally:
        _package.pickle, torch._C._pickle_load_obj = saved
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ.update({k: v for k, v in env.items() if v is not None})


def _check_onnx_ops(model) -> None:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from tvmq import onnx_ops  # converters tvmq adds (QOperator formats ...)

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
    known = set(_get_convert_map()) | set(onnx_ops.EXTRA_CONVERTERS)
    for node in model.graph.node:
        if node.op_type not in known:
            raise UnsupportedOpError(
                f"unsupported ONNX op {node.op_type} at node {node.name or '<unnamed>'} "
                f"(opset {opset})",
                "replace it in the exporter or add a converter to tvmq.onnx_ops")


def import_onnx(model, shape_dict: dict[str, Sequence[int]] | None = None) -> ImportedModel:
    """Import an ONNX model (path or ModelProto) with Relax's ONNX frontend."""
    from tvmq import onnx_ops

    if isinstance(model, (str, os.PathLike)):
        model = load_onnx(model)
    model = onnx_ops.canonicalize(model)  # QOperator -> QDQ, sub-byte containers, blocked Q/DQ
    _check_onnx_ops(model)
    inputs = _onnx_inputs(model, shape_dict)
    with warnings.catch_warnings(), onnx_ops.registered():
        warnings.simplefilter("ignore")
        try:
            mod = from_onnx(model, shape_dict={s.name: list(s.shape) for s in inputs},
                            dtype_dict={s.name: s.dtype for s in inputs}, keep_params_in_input=True)
        except TvmqError:
            raise
        except Exception as err:
            raise UnsupportedOpError(f"TVM's ONNX frontend failed: {str(err).splitlines()[0]}",
                                     "simplify the model (onnxsim) or report the op") from err
    _check_static_outputs(mod, model)
    mod, params = detach_params(mod)
    names = [p.name for p in mod["main"].params]
    n_in = len(inputs)
    param_arrays = {n: p.numpy() for n, p in zip(names[n_in:], params.get("main", []))}
    for spec, name in zip(inputs, names):
        spec.name = name
    outputs = [o.name for o in model.graph.output]
    return ImportedModel(mod, param_arrays, inputs, "onnx", outputs,
                         layermap.onnx_sources(model, mod))


def _check_static_outputs(mod, model) -> None:
    """Every output has a static shape: an op whose output size depends on the data
    (``Unique``, ``NonZero``, ...) leaves it unknown, and the artifact cannot describe it."""
    leaves = _flatten_type(mod["main"].ret_ty)
    producers = {out: node for node in model.graph.node for out in node.output}
    for i, leaf in enumerate(leaves):
        shape = getattr(leaf, "shape", None)
        if shape is not None and all(isinstance(d, tvm.tirx.IntImm) for d in shape):
            continue
        name = model.graph.output[i].name if i < len(model.graph.output) else f"output{i}"
        node = producers.get(name)
        origin = f" (made by {node.op_type} node {node.name or '<unnamed>'})" if node else ""
        dynamic = [n.op_type for n in model.graph.node if n.op_type in _DATA_DEPENDENT_OPS]
        cause = f"; the graph has {', '.join(sorted(set(dynamic)))}" if dynamic else ""
        raise UnsupportedOpError(
            f"output {name!r}{origin} has a data-dependent shape{cause}, which tvmq cannot "
            "compile", "remove the data-dependent op (e.g. Unique, NonZero) from the exported "
            "graph, or give it a static size")


_DATA_DEPENDENT_OPS = ("Unique", "NonZero", "NonMaxSuppression", "Compress", "TopK")


def _onnx_inputs(model, shape_dict) -> list[TensorSpec]:
    import onnx

    inits = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        ttype = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if shape_dict and inp.name in shape_dict:
            dims = list(shape_dict[inp.name])
        elif dims and (dims[0] is None or dims[0] <= 0) and all(d and d > 0 for d in dims[1:]):
            # Only the batch is dynamic (the usual export): compile for batch 1.
            warnings.warn(f"ONNX input {inp.name!r} has a dynamic batch; compiling for batch 1 "
                          f"(pass --input-shape {inp.name}:N,... for another)", stacklevel=3)
            dims = [1, *dims[1:]]
        if any(d is None or d <= 0 for d in dims):
            example = ",".join(str(d) if d and d > 0 else "1" for d in dims)
            raise TvmqError(f"ONNX input {inp.name!r} has a dynamic shape {dims}",
                            f"give a static shape, e.g. --input-shape {inp.name}:{example}")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
        specs.append(TensorSpec(inp.name, tuple(int(d) for d in dims), dtype))
    return specs


def import_model(model, example_inputs=None, input_shapes=None) -> ImportedModel:
    """Dispatch on the model's kind: ``torch.nn.Module``, ONNX path or ``onnx.ModelProto``."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return import_torch(model)
    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            if not input_shapes:
                raise TvmqError("a PyTorch model needs example inputs",
                                "call tvmq.compile(model, example_inputs=torch.randn(1, 3, 224, 224))")
            example_inputs = tuple(torch.randn(*s) for s in input_shapes.values())
        return import_torch(model, example_inputs)
    if isinstance(model, (str, os.PathLike)):
        suffix = Path(model).suffix.lower()
        if suffix == ".pt2":
            return import_torch(load_exported_program(model))
        if suffix not in (".onnx", ""):
            raise ModelLoadError(f"{model}: unknown model format {suffix!r}",
                                 "pass an .onnx file, a torch.export .pt2 file or a torch.nn.Module")
        return import_onnx(model, input_shapes)
    if type(model).__name__ == "ModelProto":
        return import_onnx(model, input_shapes)
    raise TvmqError(f"cannot compile a {type(model).__name__}",
                    "pass a torch.nn.Module, an ONNX file path or an onnx.ModelProto")
