"""Activations between quantized layers as integer tables vs float (JSON out).

MobileNetV2 of tvmq's zoo with every ReLU6 swapped for another activation (Hardswish, as
MobileNetV3; SiLU, as EfficientNet; GELU), quantized by onnxruntime's ``quantize_static``
(QDQ: the activation sits between a QuantizeLinear/DequantizeLinear pair, SiLU and GELU
decomposed and quantized op by op). Compiled by tvmq twice: with
:class:`tvmq.passes.LowerIntegerLUT` (default: one 256-entry table per activation) and
with ``PipelineOptions(integer_lut=False)`` (dequantize -> float activation -> quantize);
onnxruntime int8 (same QDQ model) and fp32 as peers. Also: how many elements of the output
differ between the two tvmq builds.

    python scripts/bench_lut.py --acts hardswish silu gelu --out bench_lut.json

Batch 1, 2 threads, peers alternating in their own processes (``scripts/_peers.py``);
medians in ms. Random weights (BN statistics randomized) and random calibration inputs:
a latency benchmark, not an accuracy one.
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
from tvmq.onnx_tools import export_float, ort_quantize_static

ACTS = ("hardswish", "silu", "gelu")


def _net(act: str, model: str):
    import torch

    make = {"hardswish": torch.nn.Hardswish, "silu": torch.nn.SiLU, "gelu": torch.nn.GELU}[act]
    net = tvmq.models.create(model).eval()
    swapped = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (torch.nn.ReLU6, torch.nn.ReLU)):
                setattr(parent, name, make())
                swapped += 1
    if not swapped:
        raise SystemExit(f"{model} has no ReLU/ReLU6 module to swap")
    return net, swapped


def _float_ops(art) -> int:
    return sum(1 for op in art.meta["ops"]
               if op["op"] not in ("quantize", "dequantize") and not op["integer"])


def bench(act: str, model: str, workdir: Path, repeats: int) -> dict:
    net, swapped = _net(act, model)
    shape = tvmq.models.input_shape(model)
    fp32 = export_float(net, shape, workdir / f"{act}.onnx")
    qdq = ort_quantize_static(fp32, workdir / f"{act}_qdq.onnx")
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag, lut in (("lut", True), ("float_act", False)):
            art = tvmq.compile(str(qdq), options=tvmq.PipelineOptions(integer_lut=lut))
            art.save(workdir / f"art_{act}_{tag}")
            out[tag] = (art, art.run([x])[0])
    diff = np.abs(out["lut"][1] - out["float_act"][1])
    med = time_peers({"tvmq_lut": ("tvmq", workdir / f"art_{act}_lut"),
                      "tvmq_float_act": ("tvmq", workdir / f"art_{act}_float_act"),
                      "ort_int8_qdq": ("ort", qdq), "ort_fp32": ("ort", fp32)}, x, repeats)
    return {"model": model, "activation": act, "activations_swapped": swapped,
            "input_shape": list(shape), "median_ms": med,
            "lut_over_float_act": round(med["tvmq_lut"] / med["tvmq_float_act"], 3),
            "lut_over_ort_int8": round(med["tvmq_lut"] / med["ort_int8_qdq"], 3),
            "output_elements_differing": int((diff > 0).sum()),
            "output_max_abs_diff": float(diff.max()),
            "compile_seconds": {t: out[t][0].meta["compile_seconds"] for t in out},
            "ops_not_integer": {t: _float_ops(out[t][0]) for t in out}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--acts", nargs="+", default=list(ACTS), choices=ACTS)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="bench_lut.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench(a, args.model, Path(tmp), args.repeats) for a in args.acts]
    text = json.dumps({"threads": 2, "batch": 1, "results": results}, indent=2)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
