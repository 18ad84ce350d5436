"""End-to-end benchmark: tvmq int8 vs onnxruntime int8 QDQ vs PyTorch fp32 (batch 1, 224x224).

The zoo model (``tvmq.models``) is exported to ONNX, quantized by onnxruntime's static QDQ
quantizer (u8 activations, s8 per-channel weights, random calibration), then compiled by
``tvmq.compile`` (no tuning database) and run by onnxruntime; PyTorch runs the fp32 model.
Same process, alternating, medians; the int8 outputs of tvmq and onnxruntime are compared.

Usage: python scripts/bench_models.py [--models resnet18,mobilenet_v2] [--rounds 9]
                                      [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see scripts/bench_kernels.py


def qdq_model(name: str, tmp: Path) -> tuple[Path, object, tuple]:
    from tvmq import models
    from tvmq.onnx_tools import export_float, ort_quantize_static

    net, shape = models.create(name), models.input_shape(name)
    fp32 = export_float(net, shape, tmp / f"{name}.fp32.onnx")
    return ort_quantize_static(fp32, tmp / f"{name}.qdq.onnx"), net, shape


def _timed(fn, inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def bench(name: str, threads: int, rounds: int, tmp: Path) -> dict:
    import onnxruntime as ort
    import torch

    import tvmq
    from tvmq._tvm import relax, tensor, tvm
    from tvmq.pipeline import PipelineOptions

    path, net, shape = qdq_model(name, tmp)
    t0 = time.perf_counter()
    art = tvmq.compile(str(path), options=PipelineOptions(use_shipped_database=False))
    compile_s = time.perf_counter() - t0
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    vm = relax.VirtualMachine(art.executable, tvm.cpu())
    xt, xtorch = tensor(x), torch.from_numpy(x)
    engines = {"tvmq": lambda: vm["main"](xt),
               "onnxruntime_int8": lambda: sess.run(None, {"x": x}),
               "torch_fp32": lambda: net(xtorch)}
    y_tv, y_ort = art.run({"x": x})[0], sess.run(None, {"x": x})[0]
    times = {n: [] for n in engines}
    with torch.no_grad():
        for fn in engines.values():
            fn()
        for _ in range(rounds):
            for n, fn in engines.items():
                times[n].append(_timed(fn, 3))
    med = {n: float(np.median(v)) * 1e3 for n, v in times.items()}
    err = np.abs(y_tv - y_ort)
    return {"model": name, "compile_s": compile_s, "ms": med,
            "tvmq_over_ort": med["tvmq"] / med["onnxruntime_int8"],
            "torch_over_tvmq": med["torch_fp32"] / med["tvmq"],
            "max_abs_diff_vs_ort": float(err.max()),
            "argmax_agree": bool(np.argmax(y_tv) == np.argmax(y_ort))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            row = bench(name, args.threads, args.rounds, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
