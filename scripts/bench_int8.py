"""Benchmark tvmq int8 vs onnxruntime int8 QDQ vs onnxruntime fp32 vs PyTorch fp32 (JSON out).

    python scripts/bench_int8.py --models resnet18 mobilenet_v2 --out bench.json

Batch 1, 2 threads, peers timed alternately in one process after warm-up; medians (ms).
Also reports artifact sizes of the fp32, int8 and int4-weight tvmq builds (the int4 build
re-quantizes the int8 QDQ model's conv/dense weights to 4 bits, per output channel).
tvmq kernels are untuned here (a later issue): expect it to be slow.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import tvmq


def _export(name: str, workdir: Path):
    net, shape = tvmq.models.create(name).eval(), tvmq.models.input_shape(name)
    fp32 = workdir / f"{name}.onnx"
    torch.onnx.export(net, torch.randn(*shape), str(fp32), dynamo=False, opset_version=17,
                      input_names=["x"])
    return net, shape, fp32


def _quantize(fp32: Path, shape, out: Path) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    rng = np.random.RandomState(0)

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": rng.randn(*shape).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def _int4_weights(qdq: Path, out: Path) -> Path:
    """Re-quantize int8 conv/dense weights to the int4 range (int8 container, new scales)."""
    import onnx
    from onnx import numpy_helper

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
        s4 = np.maximum(np.abs(real).max(axis=red), 1e-12) / 7.0
        q4 = np.clip(np.rint(real / s4.reshape(shp)), -8, 7).astype(np.int8)
        w.CopyFrom(numpy_helper.from_array(q4, w.name))
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(
            s4.astype(np.float32).reshape(s.shape), node.input[1]))
    onnx.save(model, str(out))
    return out


def _size(art, workdir: Path, tag: str) -> int:
    path = art.save(workdir / f"art_{tag}")
    return (path / "lib.so").stat().st_size


def _time_alternating(runners: dict, repeats: int) -> dict:
    for fn in runners.values():
        fn()  # warm-up
    times = {k: [] for k in runners}
    for _ in range(repeats):
        for k, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def bench_model(name: str, workdir: Path, repeats: int) -> dict:
    import onnxruntime as ort

    torch.set_num_threads(2)
    net, shape, fp32 = _export(name, workdir)
    qdq = _quantize(fp32, shape, workdir / f"{name}_qdq.onnx")
    int4 = _int4_weights(qdq, workdir / f"{name}_int4.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arts = {tag: tvmq.compile(str(p)) for tag, p in
                (("fp32", fp32), ("int8", qdq), ("int4", int4))}
    sizes = {tag: _size(a, workdir, tag) for tag, a in arts.items()}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    s_q = ort.InferenceSession(str(qdq), opts, providers=["CPUExecutionProvider"])
    s_f = ort.InferenceSession(str(fp32), opts, providers=["CPUExecutionProvider"])
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        med = _time_alternating({
            "tvmq_int8": lambda: arts["int8"].run([x]),
            "ort_int8_qdq": lambda: s_q.run(None, {"x": x}),
            "ort_fp32": lambda: s_f.run(None, {"x": x}),
            "torch_fp32": lambda: net(xt),
        }, repeats)
    agree = float(np.mean(np.argmax(arts["int8"].run([x])[0], -1)
                          == np.argmax(s_q.run(None, {"x": x})[0], -1)))
    return {"model": name, "input_shape": list(shape), "median_ms": med,
            "artifact_bytes": sizes, "int4_over_int8": round(sizes["int4"] / sizes["int8"], 3),
            "top1_agrees_with_ort_int8": agree,
            "integer_layers": sum(1 for l in arts["int8"].meta["layers"] if l["integer"])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="bench_int8.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_model(m, Path(tmp), args.repeats) for m in args.models]
    text = json.dumps({"threads": 2, "batch": 1, "results": results}, indent=2)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
