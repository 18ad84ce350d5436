"""ONNX helpers for benchmarks and users: float export, onnxruntime static quantization.

>>> fp32 = export_float(tvmq.models.create("resnet18"), (1, 3, 224, 224), "r18.onnx")
>>> qdq = ort_quantize_static(fp32, "r18.qdq.onnx")      # the onnxruntime int8 QDQ peer
>>> int4 = requantize_weights(qdq, "r18.w4.onnx", bits=4) # same graph, int4-range weights
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

INPUT_NAME = "x"


def export_float(model, input_shape: Sequence[int], path: str | os.PathLike,
                 opset: int = 17) -> Path:
    """Export a float ``torch.nn.Module`` to ONNX (input ``x``, output ``y``; BN folded)."""
    import torch

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(*input_shape),), str(path), dynamo=False,
                          opset_version=opset, input_names=[INPUT_NAME], output_names=["y"])
    return path


def ort_quantize_static(fp32: str | os.PathLike, out: str | os.PathLike,
                        calibration: Iterable[np.ndarray] | None = None,
                        per_channel: bool = True, samples: int = 4, seed: int = 0,
                        reduce_range: bool = False) -> Path:
    """onnxruntime ``quantize_static`` in QDQ format: u8 activations, s8 weights.

    ``calibration`` yields input arrays; by default ``samples`` random normal inputs of the
    model's input shape (fine for latency work, not for accuracy). ``reduce_range``:
    onnxruntime's 7-bit weights (``[-64, 64]``), meant for x86 CPUs without VNNI, where
    both onnxruntime's and tvmq's ``vpmaddubsw`` kernels are then exact.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    model = onnx.load(str(fp32))
    inp = model.graph.input[0]
    if calibration is None:
        shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        rng = np.random.default_rng(seed)
        calibration = [rng.standard_normal(shape).astype(np.float32) for _ in range(samples)]

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{inp.name: np.asarray(x, np.float32)} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Path(out)


def requantize_weights(qdq: str | os.PathLike, out: str | os.PathLike, bits: int = 4) -> Path:
    """Re-quantize a QDQ model's int8 conv/dense weights to ``bits`` (int8 container, new
    per-channel scales): the same graph with sub-byte weights, for size/latency comparisons."""
    import onnx
    from onnx import numpy_helper

    qmax = 2 ** (bits - 1) - 1
    model = onnx.load(str(qdq))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        w = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if w is None or w.data_type != onnx.TensorProto.INT8 or len(w.dims) not in (2, 4):
            continue
        q = numpy_helper.to_array(w).astype(np.float32)
        s = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        axis = [a.i for a in node.attribute if a.name == "axis"] or [1]
        shp = [-1 if i == axis[0] % q.ndim else 1 for i in range(q.ndim)] if s.size > 1 else ()
        real = q * s.reshape(shp)
        red = tuple(i for i in range(q.ndim) if s.size == 1 or i != axis[0] % q.ndim)
        s_new = np.maximum(np.abs(real).max(axis=red), 1e-12) / qmax
        q_new = np.clip(np.rint(real / s_new.reshape(shp)), -qmax - 1, qmax).astype(np.int8)
        w.CopyFrom(numpy_helper.from_array(q_new, w.name))
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(
            s_new.astype(np.float32).reshape(s.shape), node.input[1]))
    onnx.save(model, str(out))
    return Path(out)
