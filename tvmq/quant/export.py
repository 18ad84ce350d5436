"""Export a fake-quantized model as a standard ONNX QDQ graph.

What the graph holds
--------------------
* Activations: ``QuantizeLinear -> DequantizeLinear`` per tensor, in 8-bit containers
  (``int8`` for a signed grid, ``uint8`` otherwise). A grid narrower than its container
  (bits < 8) is enforced by a ``Clip`` to ``[(qmin - z) * s, (qmax - z) * s]`` in front of
  ``QuantizeLinear``: saturation alone would clamp to the container's range. With the clip,
  ``DQ(Q(Clip(x)))`` equals the fake-quant forward exactly (both round half to even).
* Learned offsets (LSQ+): ``beta = -z * s`` with ``z`` an integer by construction (see
  :class:`~tvmq.quant.methods.uniform.FakeQuantizer`), so the zero point is exactly ``z``. Grids
  that do not fit ``uint8`` as is are shifted by an integer ``c`` (``q' = q + c``,
  ``zp = z + c``): ``DQ`` gives ``(q' - zp) * s``, unchanged.
* Weights: integer initializers (``DequantizeLinear`` only), per output channel
  (``axis=0``) where configured. ``int8``/``uint8`` at opset 13 when every weight has
  more than 4 bits; otherwise opset 21 and ``int4``/``uint4`` for weights of 2-4 bits
  (values already on their grid, so no range question arises).
* Codebook weights (DGMS, :class:`~tvmq.quant.methods.dgms.CodebookWeight`): the indices as a
  ``uint8`` initializer of the weight's shape and the ``K``-entry table as a 1-D initializer,
  ``Gather(table, Cast(indices, to=INT64), axis=0)`` (ONNX ``Gather`` takes int32/int64
  indices; the stored ones stay uint8). Float table: the Gather is the weight. Integer
  activations: ``DequantizeLinear(Gather(int8 table, ...), scale)`` with one scale per layer.
  A conv followed by BatchNorm keeps one table and gets BN's factor per output channel
  (DGMS quantizes the conv's own weight): a per-channel ``DequantizeLinear`` scale
  (``axis=0``, the layer's step times the factor), or ``Mul(Gather(...), factor[C,1,1,1])``
  with a float table.
* Bias: float32, added by ``Conv``/``Gemm`` after dequantization (an integer compiler can
  requantize it to int32 at ``s_x * s_w``; rounding error at most half an accumulator step).
* BatchNorm: folded into the conv weights before quantization, as in training (after it
  for ``bn_after_quant`` quantizers, see above).
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tvmq.errors import ArtifactError
from tvmq.quant.api import _set_module, convert
from tvmq.quant.methods.dgms import CodebookWeight
from tvmq.quant.names import record_module_names
from tvmq.quant.quantizer import Quantizer, UniformActivation, UniformWeight, fake_quant
from tvmq.quant.registry import export_handler, register_export

_INT8_OPSET, _INT4_OPSET = 13, 21
_TORCHSCRIPT_OPSET = 17


class _ActQDQ(torch.autograd.Function):
    """Fake-quant forward; ``[Clip ->] QuantizeLinear -> DequantizeLinear`` in ONNX."""

    @staticmethod
    def forward(ctx, x, p):
        return fake_quant(x, torch.tensor(p["scale"]), torch.tensor(float(p["z"])),
                          p["qmin"], p["qmax"])

    @staticmethod
    def symbolic(g, x, p):
        scale = g.op("Constant", value_t=torch.tensor(p["scale"], dtype=torch.float32))
        zp = g.op("Constant", value_t=torch.tensor(p["zp"], dtype=p["dtype"]))
        if p["clip"] is not None:
            lo, hi = (g.op("Constant", value_t=torch.tensor(v, dtype=torch.float32))
                      for v in p["clip"])
            x = g.op("Clip", x, lo, hi)
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zp), scale, zp)


class _WeightDQ(torch.autograd.Function):
    """The dequantized weight forward; ``DequantizeLinear(int initializer)`` in ONNX."""

    @staticmethod
    def forward(ctx, w, d: UniformWeight):
        shape = (-1,) + (1,) * (w.dim() - 1) if d.scale.ndim else ()
        q = d.q.astype(np.float32)
        zp, scale = d.zero_point.astype(np.float32).reshape(shape), d.scale.reshape(shape)
        return torch.from_numpy((q - zp) * scale)

    @staticmethod
    def symbolic(g, w, d: UniformWeight):
        consts = [g.op("Constant", value_t=torch.from_numpy(np.ascontiguousarray(a)))
                  for a in (d.q, d.scale, d.zero_point)]
        kwargs = {"axis_i": 0} if d.scale.ndim else {}
        return g.op("DequantizeLinear", *consts, **kwargs)


class _CodebookGather(torch.autograd.Function):
    """``table[indices] (* scale)`` forward; ``[DequantizeLinear(]Gather(table, Cast(idx)))``."""

    @staticmethod
    def forward(ctx, w, d):
        return torch.from_numpy(d.weight())

    @staticmethod
    def symbolic(g, w, d):
        def const(a):
            # np.array, not np.ascontiguousarray: that makes a 0-d scale 1-d (per axis)
            return g.op("Constant", value_t=torch.from_numpy(np.array(a, copy=True)))

        idx = g.op("Cast", const(d.indices), to_i=TensorProto.INT64)
        cs = d.channel_scale
        if d.table is None:
            gathered = g.op("Gather", const(d.centers.astype(np.float32)), idx, axis_i=0)
            if cs is None:
                return gathered
            shape = (-1,) + (1,) * (d.indices.ndim - 1)
            return g.op("Mul", gathered, const(cs.astype(np.float32).reshape(shape)))
        gathered = g.op("Gather", const(d.table.astype(np.int8)), idx, axis_i=0)
        if cs is None:
            scale, zp, kw = np.float32(d.scale), np.int8(0), {}
        else:  # the folded BN factor: one DequantizeLinear scale per output channel
            scale = (np.float32(d.scale) * cs).astype(np.float32)
            zp, kw = np.zeros(cs.shape, np.int8), {"axis_i": 0}
        return g.op("DequantizeLinear", gathered, const(np.asarray(scale, np.float32)),
                    const(np.asarray(zp, np.int8)), **kw)


def _act_params(d: UniformActivation) -> dict:
    """Container (int8/uint8), shifted zero point and clip of an activation grid."""
    s, z = d.scale, d.zero_point
    signed = d.qmin < 0
    lo_c, hi_c = (-128, 127) if signed else (0, 255)
    shift = 0 if signed else max(0, -z)
    clip = None
    if (d.qmin + shift, d.qmax + shift) != (lo_c, hi_c):
        clip = (float(np.float32(d.qmin - z) * np.float32(s)),
                float(np.float32(d.qmax - z) * np.float32(s)))
    return {"scale": s, "z": z, "zp": z + shift, "qmin": d.qmin, "qmax": d.qmax, "clip": clip,
            "dtype": torch.int8 if signed else torch.uint8}


class _Emit(nn.Module):
    """Stands in for a quantizer during tracing: ``fn.apply(x, params)``."""

    def __init__(self, fn, params):
        super().__init__()
        self.fn, self.params = fn, params

    def forward(self, x):
        return self.fn.apply(x, self.params)


@register_export(UniformActivation)
def _export_uniform_act(d: UniformActivation) -> nn.Module:
    return _Emit(_ActQDQ, _act_params(d))


@register_export(UniformWeight)
def _export_uniform_weight(d: UniformWeight) -> nn.Module:
    return _Emit(_WeightDQ, d)


@register_export(CodebookWeight)
def _export_codebook_weight(d: CodebookWeight) -> nn.Module:
    return _Emit(_CodebookGather, d)


def _export_module(model: nn.Module) -> tuple[nn.Module, list]:
    """A copy of the converted model whose quantizers emit ONNX nodes; plus the weights'
    descriptions. Each quantizer describes itself (:meth:`Quantizer.describe`) and the
    export handler registered for the description's type builds the emitting module."""
    model = convert(copy.deepcopy(model))
    records = []
    for layer in list(model.modules()):
        wq = getattr(layer, "weight_quant", None)
        if isinstance(wq, Quantizer):
            desc = wq.describe(layer.weight)
            records.append(desc)
            layer.weight_quant = export_handler(desc)(desc)
    for name, quant in list(model.named_modules()):
        if isinstance(quant, Quantizer):  # layer inputs and the joins' quantizers
            desc = quant.describe()
            _set_module(model, name, export_handler(desc)(desc))
    return model, records


# -- ONNX post-processing --------------------------------------------------------------------
def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """Constant nodes become initializers, so weights are stored as (integer) initializers."""
    graph = model.graph
    keep = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _int4(record) -> bool:
    """A uniform weight of at most 4 bits: stored as INT4/UINT4 at opset 21."""
    return isinstance(record, UniformWeight) and record.bits <= 4


def _pack_int4(model: onnx.ModelProto, records: list) -> None:
    """Retype the initializers of weights with at most 4 bits to INT4/UINT4 (opset 21)."""
    small = {r.q.tobytes() + bytes(str(r.q.shape), "ascii"): r for r in records if _int4(r)}
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        arr = numpy_helper.to_array(inits[node.input[0]])
        rec = small.get(arr.tobytes() + bytes(str(arr.shape), "ascii"))
        if rec is None:
            continue
        kind = TensorProto.INT4 if arr.dtype == np.int8 else TensorProto.UINT4
        for slot, values in ((0, rec.q), (2, rec.zero_point)):
            name = f"{node.name or node.output[0]}_int4_{slot}"
            model.graph.initializer.append(helper.make_tensor(
                name, kind, values.shape, values.astype(np.int32).reshape(-1).tolist()))
            node.input[slot] = name
    _drop_unused_initializers(model)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _set_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current == opset:
        return model
    return onnx.version_converter.convert_version(model, opset)


def _save_atomic(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export(qmodel: nn.Module, example_inputs, path: str | os.PathLike,
           opset: int | None = None) -> Path:
    """Write ``qmodel`` (prepared or converted) to ``path`` as an ONNX QDQ graph.

    Parameters
    ----------
    qmodel : nn.Module
        A model quantized with :func:`tvmq.quant.quantize_`; it is not modified.
    example_inputs : Tensor or tuple of Tensor
        Traced once; the batch dimension is exported as dynamic (``"batch"``).
    path : path-like
        Written atomically (temporary file in the same folder, then ``os.replace``).
    opset : int or None
        Default: 13, or 21 when some weight has 4 bits or fewer (int4/uint4 initializers).

    Returns
    -------
    Path
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    module, records = _export_module(qmodel)
    int4 = any(_int4(r) for r in records)
    opset = opset or (_INT4_OPSET if int4 else _INT8_OPSET)
    names = [f"input{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    tmp = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
    tmp.close()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, inputs, tmp.name, dynamo=False, input_names=names,
                              output_names=["output"], opset_version=min(opset, _TORCHSCRIPT_OPSET),
                              do_constant_folding=False,
                              dynamic_axes={n: {0: "batch"} for n in names + ["output"]})
        model = onnx.load(tmp.name)
    finally:
        os.unlink(tmp.name)
    _constants_to_initializers(model)
    record_module_names(model, module)  # PyTorch module names for tvmq info/bench/tune
    model = _set_opset(model, opset)
    if opset >= _INT4_OPSET:
        _pack_int4(model, records)
    onnx.checker.check_model(model)
    path = Path(path)
    try:
        _save_atomic(model, path)
    except OSError as err:
        raise ArtifactError(f"cannot write {path}: {err}", "pass a path in a writable folder")
    return path
