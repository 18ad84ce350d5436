"""Per-conv benchmark: tvmq int8 kernels vs onnxruntime int8 QDQ vs PyTorch fp32.

Each conv of ResNet-18 / MobileNetV2 (224x224, batch 1) is written as a QDQ ONNX model
(u8 activations, s8 per-channel weights, int32 bias, ReLU, u8 output), compiled by tvmq's
pipeline (integer lowering + blocked kernels + default schedules, no tuning) and run by
onnxruntime; PyTorch runs the same conv in fp32. The three run in the same process,
alternating, and medians are reported with GMAC/s and the fraction of the measured peak
(``scripts/bench_peak.py``). tvmq's output is compared with onnxruntime's.

Usage: python scripts/bench_kernels.py [--net resnet18|mobilenetv2|all] [--rounds 9]
                                       [--json out.json] [--threads 2] [--weight-bits 7|8]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Peers alternate on 2 shared cores: idle thread pools must sleep, not spin, or each runtime
# steals the cores from the next one (set before torch/onnxruntime load their pools).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# (name, C, O, H, k, stride, groups)
RESNET18 = [
    ("conv1_7x7", 3, 64, 224, 7, 2, 1), ("l1_3x3", 64, 64, 56, 3, 1, 1),
    ("l2_3x3_s2", 64, 128, 56, 3, 2, 1), ("l2_1x1_s2", 64, 128, 56, 1, 2, 1),
    ("l2_3x3", 128, 128, 28, 3, 1, 1), ("l3_3x3_s2", 128, 256, 28, 3, 2, 1),
    ("l3_3x3", 256, 256, 14, 3, 1, 1), ("l4_3x3_s2", 256, 512, 14, 3, 2, 1),
    ("l4_3x3", 512, 512, 7, 3, 1, 1),
]
MOBILENETV2 = [
    ("stem_3x3_s2", 3, 32, 224, 3, 2, 1), ("dw32_112", 32, 32, 112, 3, 1, 32),
    ("pw32_16_112", 32, 16, 112, 1, 1, 1), ("pw16_96_112", 16, 96, 112, 1, 1, 1),
    ("dw96_s2", 96, 96, 112, 3, 2, 96), ("pw96_24_56", 96, 24, 56, 1, 1, 1),
    ("pw24_144_56", 24, 144, 56, 1, 1, 1), ("dw144_56", 144, 144, 56, 3, 1, 144),
    ("pw192_32_28", 192, 32, 28, 1, 1, 1), ("dw384_14", 384, 384, 14, 3, 1, 384),
    ("pw384_64_14", 384, 64, 14, 1, 1, 1), ("pw960_160_7", 960, 160, 7, 1, 1, 1),
    ("pw320_1280_7", 320, 1280, 7, 1, 1, 1),
]


def qdq_conv_model(c, o, h, k, s, groups, seed=0, weight_max=127):
    """A QDQ ONNX conv: u8 in, s8 per-channel weights in ``[-weight_max, weight_max]``
    (64: onnxruntime's ``reduce_range``), int32 bias, ReLU, u8 out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.integers(-weight_max, weight_max + 1, (o, c // groups, k, k)).astype(np.int8)
    sw = (rng.random(o) * 0.01 + 0.002).astype(np.float32)
    sx, sy = np.float32(0.02), np.float32(0.08)
    inits = {"w_q": w, "w_s": sw, "w_z": np.zeros(o, np.int8), "x_s": np.array(sx),
             "x_z": np.array(np.uint8(128)), "y_s": np.array(sy), "y_z": np.array(np.uint8(0)),
             "b_q": rng.integers(-2000, 2000, o).astype(np.int32),
             "b_s": (sx * sw).astype(np.float32), "b_z": np.zeros(o, np.int32)}
    p = k // 2
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wf"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["bf"], axis=0),
        helper.make_node("Conv", ["xf", "wf", "bf"], ["yf"], kernel_shape=[k, k],
                         strides=[s, s], pads=[p] * 4, group=groups),
        helper.make_node("Relu", ["yf"], ["yr"]),
        helper.make_node("QuantizeLinear", ["yr", "y_s", "y_z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, h, h])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        [numpy_helper.from_array(v, n) for n, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model, w


def _peak(threads: int) -> float:
    spec = importlib.util.spec_from_file_location("bench_peak", Path(__file__).with_name(
        "bench_peak.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.measure(threads)["gmacs"]


def _tvmq_runner(path: str, x: np.ndarray):
    """(callable running the compiled model on ``x``, Artifact): the VM is called directly,
    so the time is the kernels', not NumPy conversions."""
    import tvmq
    from tvmq._tvm import relax, tensor, tvm
    from tvmq.pipeline import PipelineOptions

    art = tvmq.compile(path, options=PipelineOptions(use_shipped_database=False))
    vm = relax.VirtualMachine(art.executable, tvm.cpu())
    xt = tensor(x)
    return (lambda: vm["main"](xt)), art


def _timed(fn, inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def bench_conv(spec, threads: int, rounds: int, tmp: Path, weight_max: int = 127) -> dict:
    import onnx
    import onnxruntime as ort
    import torch

    name, c, o, h, k, s, g = spec
    model, w = qdq_conv_model(c, o, h, k, s, g, weight_max=weight_max)
    path = tmp / f"{name}.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(1).integers(0, 256, (1, c, h, h)).astype(np.uint8)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    tv_run, art = _tvmq_runner(str(path), x)
    xt, wt = torch.randn(1, c, h, h), torch.randn(o, c // g, k, k)
    engines = {
        "tvmq": tv_run,
        "onnxruntime_int8": lambda: sess.run(None, {"x": x}),
        "torch_fp32": lambda: torch.nn.functional.conv2d(xt, wt, None, s, k // 2, 1, g),
    }
    y_ort = sess.run(None, {"x": x})[0]
    y_tv = art.run({"x": x})[0]
    for fn in engines.values():
        fn()
    macs = o * (c // g) * k * k * (-(-h // s)) ** 2
    inner = max(3, int(2e-3 / max(_timed(tv_run, 3), 1e-6)))
    times = {n: [] for n in engines}
    with torch.no_grad():
        for _ in range(rounds):
            for n, fn in engines.items():
                times[n].append(_timed(fn, inner))
    med = {n: float(np.median(v)) for n, v in times.items()}
    diff = np.abs(y_tv.astype(np.int32) - y_ort.astype(np.int32))
    return {"name": name, "C": c, "O": o, "H": h, "k": k, "stride": s, "groups": g,
            "macs": macs, "ms": {n: t * 1e3 for n, t in med.items()},
            "gmacs": {n: macs / t / 1e9 for n, t in med.items()},
            "tvmq_vs_ort": med["tvmq"] / med["onnxruntime_int8"],
            "torch_over_tvmq": med["torch_fp32"] / med["tvmq"],
            "max_abs_diff_vs_ort": int(diff.max()), "frac_diff_vs_ort": float((diff > 0).mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="all", choices=["resnet18", "mobilenetv2", "all"])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="comma-separated conv names")
    ap.add_argument("--json", help="write the results there")
    ap.add_argument("--weight-bits", type=int, default=8, choices=[7, 8],
                    help="7: weights in [-64, 64] (onnxruntime's reduce_range; tvmq's "
                         "vpmaddubsw kernels on AVX2)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    specs = {"resnet18": RESNET18, "mobilenetv2": MOBILENETV2,
             "all": RESNET18 + MOBILENETV2}[args.net]
    if args.only:
        keep = set(args.only.split(","))
        specs = [s for s in specs if s[0] in keep]
    peak = _peak(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            row = bench_conv(spec, args.threads, args.rounds, Path(tmp),
                             weight_max=64 if args.weight_bits == 7 else 127)
            row["fraction_of_peak"] = row["gmacs"]["tvmq"] / peak
            rows.append(row)
            print(f"{row['name']:>14}: tvmq {row['ms']['tvmq']:.3f} ms "
                  f"({row['gmacs']['tvmq']:.0f} GMAC/s, {row['fraction_of_peak']:.0%} of peak) | "
                  f"ort {row['ms']['onnxruntime_int8']:.3f} | torch {row['ms']['torch_fp32']:.3f}"
                  f" | tvmq/ort {row['tvmq_vs_ort']:.2f} | diff<= {row['max_abs_diff_vs_ort']}",
                  flush=True)
    tot = {n: sum(r["ms"][n] for r in rows) for n in rows[0]["ms"]} if rows else {}
    res = {"peak_gmacs": peak, "threads": args.threads, "weight_bits": args.weight_bits,
           "convs": rows, "sum_ms": tot}
    print(json.dumps({"peak_gmacs": peak, "sum_ms": tot}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
