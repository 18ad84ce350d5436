"""Per-layer comparison of a tvmq build against onnxruntime on a quantized ONNX model.

>>> from tvmq.verify import verify
>>> rep = verify("model_qdq.onnx", "model_qdq.onnx", {"x": x})
>>> rep["worst_steps"], rep["layers"][0]

Every ``QuantizeLinear`` output of the reference model is a "layer": both sides are made to
return it (the ONNX graph gets extra outputs), and the difference is counted in quantization
steps (integer units of that tensor). An already compiled :class:`~tvmq.artifact.Artifact`
only exposes its final outputs, so they are compared in units of the reference output's
quantization step where one is known (else in absolute float difference).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Mapping, Sequence

import numpy as np

from tvmq.errors import InputMismatchError


def _load(model):
    from tvmq.frontend import load_onnx

    return load_onnx(model) if isinstance(model, (str, os.PathLike)) else model


def _quantized_tensors(model) -> list[str]:
    return [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]


def _with_outputs(model, names: Sequence[str]):
    import onnx

    model = copy.deepcopy(model)
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model


def ort_integer_kernels_exact() -> tuple[bool, str]:
    """``(exact, why)``: whether onnxruntime's CPU int8 kernels compute exact integer sums here.

    On x86 with AVX2 (or AVX-512) but no VNNI, onnxruntime's MLAS multiplies u8 activations
    by s8 weights with ``vpmaddubsw``, which adds two products into int16 with saturation
    (``255 * 127 * 2 > 32767``): its fused QLinearConv/MatMulInteger results can be off by
    many steps (measured on a Zen 2 host: 64 steps in a digits CNN's hidden layer, where
    the same QDQ graph run in float agrees with tvmq exactly). onnxruntime documents this
    as the U8S8 "saturation issue" of AVX2/AVX-512 without VNNI.
    """
    import platform

    from tvmq.boards import _host_cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True, ""
    flags = _host_cpu_flags()
    if not flags or {"avx512_vnni", "avx_vnni"} & flags or not {"avx2", "avx512bw"} & flags:
        return True, ""
    return False, ("this x86 CPU has no VNNI: onnxruntime's u8s8 kernels use vpmaddubsw, "
                   "which saturates pairs of products at int16")


def _ort_run(model, feeds: Mapping[str, np.ndarray],
             integer_kernels: bool = True) -> dict[str, np.ndarray]:
    """Run ``model`` in onnxruntime: with its fused integer kernels (graph optimizations on),
    or, ``integer_kernels=False``, the QDQ graph as written (DequantizeLinear -> float op ->
    QuantizeLinear, no fusion): the definition of a QDQ model, computed in float32."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    if not integer_kernels:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def _feeds(model, inputs) -> dict[str, np.ndarray]:
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if isinstance(inputs, Mapping):
        return {k: np.asarray(v) for k, v in inputs.items()}
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if len(inputs) != len(names):
        raise InputMismatchError(f"expected {len(names)} input(s), got {len(inputs)}",
                                 f"pass {names}")
    return {n: np.asarray(x) for n, x in zip(names, inputs)}


def _compare(name: str, got: np.ndarray, ref: np.ndarray, step: float | None) -> dict[str, Any]:
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return {"name": name, "error": f"shape {got.shape} != {ref.shape}"}
    if np.issubdtype(ref.dtype, np.integer):
        diff = np.abs(got.astype(np.int64) - ref.astype(np.int64)).astype(np.float64)
    else:
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64)) / (step or 1.0)
    return {"name": name, "dtype": str(ref.dtype), "size": int(ref.size),
            "max_steps": float(diff.max(initial=0)), "mismatched": int((diff > 0).sum()),
            "mismatched_fraction": float((diff > 0).mean()) if diff.size else 0.0,
            "unit": "steps" if (step or np.issubdtype(ref.dtype, np.integer)) else "abs"}


def _output_steps(model) -> dict[str, float]:
    """Graph outputs produced by DequantizeLinear with a constant scalar scale: their step."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    steps = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[1] in inits:
            s = inits[node.input[1]]
            if s.size == 1:
                steps[node.output[0]] = float(s.reshape(-1)[0])
    return steps


def verify(artifact_or_model, reference_onnx, inputs, board: str = "host",
           options=None, reference: str = "auto") -> dict[str, Any]:
    """Compare a tvmq build with onnxruntime, per quantized layer.

    Parameters
    ----------
    artifact_or_model : Artifact, ONNX path or onnx.ModelProto
        An ONNX model is compiled by tvmq with every ``QuantizeLinear`` output exposed; an
        :class:`~tvmq.artifact.Artifact` is run as is (final outputs only).
    reference_onnx : ONNX path or onnx.ModelProto
        The model onnxruntime runs (usually the same QDQ/QOperator file).
    inputs : array, list of arrays or dict name -> array
        One input set.
    options : PipelineOptions, optional
        Compile options, e.g. ``PipelineOptions(match_onnxruntime=True)``.
    board : str
        Board to compile for when ``artifact_or_model`` is a model (must run here).
    reference : {"auto", "integer", "qdq-float"}
        How onnxruntime runs the reference: ``"integer"`` with its fused int8 kernels (what
        an onnxruntime deployment computes), ``"qdq-float"`` the unfused QDQ graph in float,
        ``"auto"`` the integer kernels unless they are inexact on this CPU
        (:func:`ort_integer_kernels_exact`; the report's ``reference_note`` says why).

    Returns
    -------
    dict
        ``layers``: one entry per compared tensor (``name``, ``max_steps``, ``mismatched``,
        ``mismatched_fraction``, ``size``); ``worst_steps``; ``mismatched_fraction`` over all
        compared elements.
    """
    from tvmq.artifact import Artifact
    from tvmq.compiler import compile as tvmq_compile

    if reference not in ("auto", "integer", "qdq-float"):
        raise ValueError(f"reference={reference!r}: use 'auto', 'integer' or 'qdq-float'")
    note = ""
    if reference == "auto":
        exact, note = ort_integer_kernels_exact()
        reference = "integer" if exact else "qdq-float"
    integer_kernels = reference == "integer"
    reference_model = _load(reference_onnx)
    feeds = _feeds(reference_model, inputs)
    if isinstance(artifact_or_model, Artifact):
        art, names = artifact_or_model, [o.name for o in reference_model.graph.output]
        ref = _ort_run(reference_model, feeds, integer_kernels)
    else:
        names = ([o.name for o in reference_model.graph.output]
                 + _quantized_tensors(reference_model))
        model = _with_outputs(_load(artifact_or_model), names)
        art = tvmq_compile(model, board=board, options=options)
        ref = _ort_run(_with_outputs(reference_model, names), feeds, integer_kernels)
    got = art.run([feeds[s["name"]] if s["name"] in feeds else list(feeds.values())[i]
                   for i, s in enumerate(art.input_specs)])
    steps = _output_steps(reference_model)
    layers = [_compare(n, g, ref[n], steps.get(n)) for n, g in zip(names, got) if n in ref]
    total = sum(l.get("size", 0) for l in layers)
    bad = sum(l.get("mismatched", 0) for l in layers)
    return {"layers": layers, "worst_steps": max((l.get("max_steps", 0) for l in layers),
                                                 default=0.0),
            "reference": reference, "reference_note": note,
            "mismatched_fraction": bad / total if total else 0.0}
