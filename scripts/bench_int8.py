"""Benchmark tvmq int8 vs onnxruntime int8 QDQ vs onnxruntime fp32 vs PyTorch fp32 (JSON out).

``tvmq_int8`` compiles onnxruntime's ``quantize_static`` QDQ graph; ``tvmq_export_int8``
compiles the same network quantized by tvmq itself (``PTQConfig(get_preset("w8a8"))`` on
the same 4 random calibration inputs, ``tq.export``): ``export_over_ort_qdq`` is their
latency ratio, same run.

    python scripts/bench_int8.py --models resnet18 mobilenet_v2 --out bench.json

Batch 1, 2 threads, peers timed alternately, each in its own worker process
(``scripts/_peers.py``: rounds of 5 calls after a 250 ms pause and a warm call; in one
process, a runtime's leftover state slowed the next one by up to 3x); medians (ms).
``int8_rr``: onnxruntime's ``quantize_static(reduce_range=True)`` (7-bit weights), compiled by
tvmq (``tvmq_int8_rr``) and run by onnxruntime (``ort_int8_rr``): on x86 without VNNI both then
multiply with ``vpmaddubsw``, exact for such weights. Also reports artifact sizes of the fp32,
int8 and int4-weight tvmq builds (the int4 build re-quantizes the int8 QDQ model's conv/dense
weights to 4 bits, per output channel): ``int4`` keeps them packed 2 per byte and decodes them
inside the kernels (default), ``int4_decoded`` stores them as int8
(``PipelineOptions(keep_subbyte_packed=False)``).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
from _peers import time_peers

import tvmq
from tvmq.onnx_tools import export_float, ort_quantize_static, requantize_weights


def _export(name: str, workdir: Path):
    net, shape = tvmq.models.create(name).eval(), tvmq.models.input_shape(name)
    return net, shape, export_float(net, shape, workdir / f"{name}.onnx")


def _tvmq_export(name: str, shape, workdir: Path) -> Path:
    """The network quantized by tvmq's own PTQ (w8a8) and exported as QDQ."""
    import torch

    import tvmq.quant as tq

    net = tvmq.models.create(name).eval()
    rng = np.random.default_rng(0)
    calib = [torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for _ in range(4)]
    tq.quantize_(net, tq.PTQConfig(tq.get_preset("w8a8"), calibration=calib, progress=False))
    return tq.export(net, torch.randn(*shape), workdir / f"{name}_tvmq_w8a8.onnx")


def _float_ops(meta: dict) -> list[str]:
    """Ops left in float (``ops``: every op; artifacts before the per-layer map: ``layers``)."""
    return [f'{op["name"]}:{op["op"]}' for op in meta.get("ops", meta["layers"])
            if op["op"] not in ("quantize", "dequantize") and not op["integer"]]


def _size(art, workdir: Path, tag: str) -> int:
    path = art.save(workdir / f"art_{tag}")
    return (path / "lib.so").stat().st_size


def _output_scale(qdq: Path) -> float:
    """Scale of the graph output's last DequantizeLinear (one quantization step)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq))
    inits = {i.name: i for i in model.graph.initializer}
    out = model.graph.output[0].name
    prod = {o: n for n in model.graph.node for o in n.output}
    node = prod.get(out)
    while node is not None and node.op_type != "DequantizeLinear":
        node = prod.get(node.input[0])
    if node is None or node.input[1] not in inits:
        return 1.0
    return float(numpy_helper.to_array(inits[node.input[1]]).reshape(-1)[0])


def bench_model(name: str, workdir: Path, repeats: int) -> dict:
    import onnxruntime as ort

    _, shape, fp32 = _export(name, workdir)
    qdq = ort_quantize_static(fp32, workdir / f"{name}_qdq.onnx")
    # 7-bit weights: exact for vpmaddubsw (tvmq's and onnxruntime's kernels on AVX2)
    qdq_rr = ort_quantize_static(fp32, workdir / f"{name}_qdq_rr.onnx", reduce_range=True)
    int4 = requantize_weights(qdq, workdir / f"{name}_int4.onnx", bits=4)
    own = _tvmq_export(name, shape, workdir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arts = {tag: tvmq.compile(str(p)) for tag, p in
                (("fp32", fp32), ("int8", qdq), ("int8_rr", qdq_rr), ("int4", int4))}
        arts["export_int8"] = tvmq.compile(str(own), input_shapes={"input": shape})
        decoded = tvmq.PipelineOptions(keep_subbyte_packed=False)
        arts["int4_decoded"] = tvmq.compile(str(int4), options=decoded)
    sizes = {tag: _size(a, workdir, tag) for tag, a in arts.items()}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3  # errors only: not one warning per unused initializer
    s_q = ort.InferenceSession(str(qdq), opts, providers=["CPUExecutionProvider"])
    s_rr = ort.InferenceSession(str(qdq_rr), opts, providers=["CPUExecutionProvider"])
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    med = time_peers({
        **{f"tvmq_{tag}": ("tvmq", workdir / f"art_{tag}") for tag in
           ("int8", "int8_rr", "int4", "int4_decoded", "export_int8")},
        "ort_int8_qdq": ("ort", qdq), "ort_int8_rr": ("ort", qdq_rr), "ort_fp32": ("ort", fp32),
        "torch_fp32": ("torch", name),
    }, x, repeats)
    agree = float(np.mean(np.argmax(arts["int8"].run([x])[0], -1)
                          == np.argmax(s_q.run(None, {"x": x})[0], -1)))
    rr_max_diff = int(np.abs(arts["int8_rr"].run([x])[0] - s_rr.run(None, {"x": x})[0]).max()
                      / _output_scale(qdq_rr) + 0.5)
    return {"model": name, "input_shape": list(shape), "median_ms": med,
            "tvmq_over_ort_int8": round(med["tvmq_int8"] / med["ort_int8_qdq"], 3),
            "tvmq_rr_over_ort_int8": round(med["tvmq_int8_rr"] / med["ort_int8_qdq"], 3),
            "tvmq_rr_over_ort_rr": round(med["tvmq_int8_rr"] / med["ort_int8_rr"], 3),
            "rr_output_steps_vs_ort_rr": rr_max_diff,
            "artifact_bytes": sizes, "int4_over_int8": round(sizes["int4"] / sizes["int8"], 3),
            "int4_decoded_over_int8": round(sizes["int4_decoded"] / sizes["int8"], 3),
            "int4_latency_over_int8": round(med["tvmq_int4"] / med["tvmq_int8"], 3),
            "export_over_ort_qdq": round(med["tvmq_export_int8"] / med["tvmq_int8"], 3),
            "export_float_ops": _float_ops(arts["export_int8"].meta),
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
    from tvmq.boards import host_cpu_name

    text = json.dumps({"cpu": host_cpu_name(), "threads": 2, "batch": 1, "results": results},
                      indent=2)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
