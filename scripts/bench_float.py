"""Benchmark tvmq fp32 vs onnxruntime fp32 vs PyTorch fp32, before/after the float kernels (JSON).

    python scripts/bench_float.py --models resnet18 mobilenet_v2 digits_cnn --out float.json
    python scripts/bench_float.py --models resnet18 --mixed --out mixed.json

Per model, the float ONNX export compiled twice: ``tvmq_fp32`` with tvmq's blocked float
kernels (default), ``tvmq_fp32_before`` with ``PipelineOptions(float_kernels=False)``
(TVM's unscheduled legalization of float conv/dense, the path before them). Batch 1,
2 threads; ``tvmq_fp32``, ``ort_fp32`` and ``torch_fp32`` timed alternately, each in its
own worker processes (``scripts/_peers.py``), medians in ms; the before-build (seconds a
call on ResNet-18) gets ``--before-calls`` calls of its own. ``--mixed`` adds the common
recipe: ResNet-18 PTQ W8A8 by tvmq (4 random calibration inputs) all integer
(``tvmq_int8``) and with the first conv and the classifier kept float (``overrides``
``None``: ``tvmq_int8_float_ends``), timed alternately. The JSON names the CPU
(``/proc/cpuinfo``) and the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _peers import time_peers

import tvmq
from tvmq.boards import host_cpu_name
from tvmq.onnx_tools import export_float

#: first conv and classifier of the zoo models (kept float by ``--mixed``)
FLOAT_ENDS = {"resnet18": ("conv1", "fc"), "mobilenet_v2": ("features.0.0", "classifier")}


def cpu_isa() -> list[str]:
    """The vector extensions that decide the float kernels' family."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith(("flags", "Features"))), [])
    return [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "asimd") if f in flags]


def _compile(path: Path, out: Path, input_shapes=None, **opts) -> tuple[Path, float]:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        art = tvmq.compile(str(path), input_shapes=input_shapes,
                           options=tvmq.PipelineOptions(**opts))
    seconds = time.perf_counter() - t0
    return art.save(out), seconds


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def bench_model(name: str, work: Path, rounds: int, before_calls: int) -> dict:
    net, shape = tvmq.models.create(name).eval(), tvmq.models.input_shape(name)
    onnx_path = export_float(net, shape, work / f"{name}.onnx")
    after, t_after = _compile(onnx_path, work / f"{name}_after")
    before, t_before = _compile(onnx_path, work / f"{name}_before", float_kernels=False)
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    err = float(np.abs(tvmq.load(after).run([x])[0] - tvmq.load(before).run([x])[0]).max())
    med = time_peers({"tvmq_fp32": ("tvmq", after), "ort_fp32": ("ort", onnx_path),
                      "torch_fp32": ("torch", name)}, x, rounds)
    med.update(time_peers({"tvmq_fp32_before": ("tvmq", before)}, x, rounds=1,
                          batch=before_calls, procs_per_peer=1))
    return {"model": name, "input_shape": list(shape), "median_ms": med,
            "tvmq_over_ort": _ratio(med["tvmq_fp32"], med["ort_fp32"]),
            "tvmq_over_torch": _ratio(med["tvmq_fp32"], med["torch_fp32"]),
            "before_over_after": _ratio(med["tvmq_fp32_before"], med["tvmq_fp32"]),
            "max_abs_diff_after_vs_before": err,
            "compile_s": {"after": round(t_after, 1), "before": round(t_before, 1)}}


def _ptq_export(name: str, shape, work: Path, keep_float: tuple[str, ...]) -> Path:
    import torch

    import tvmq.quant as tq

    net = tvmq.models.create(name).eval()
    rng = np.random.default_rng(0)
    calib = [torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for _ in range(4)]
    cfg = tq.PTQConfig(tq.get_preset("w8a8"), calibration=calib, progress=False,
                       overrides={m: None for m in keep_float})
    tvmq.quantize_(net, cfg)
    tag = "float_ends" if keep_float else "int8"
    return tq.export(net, torch.randn(*shape), work / f"{name}_{tag}.onnx")


def bench_mixed(name: str, work: Path, rounds: int) -> dict:
    shape = tvmq.models.input_shape(name)
    shapes = {"input": shape}  # tq.export's batch axis is dynamic
    arts = {}
    for tag, keep in (("tvmq_int8", ()), ("tvmq_int8_float_ends", FLOAT_ENDS[name])):
        path = _ptq_export(name, shape, work, keep)
        arts[tag] = _compile(path, work / f"{name}_{tag}", shapes)[0]
    before = _compile(path, work / f"{name}_float_ends_before", shapes, float_kernels=False)[0]
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    med = time_peers({tag: ("tvmq", p) for tag, p in arts.items()}, x, rounds)
    med.update(time_peers({"tvmq_int8_float_ends_before": ("tvmq", before)}, x, rounds=1,
                          batch=3, procs_per_peer=1))
    return {"model": name, "recipe": f"W8A8 PTQ, {' and '.join(FLOAT_ENDS[name])} float",
            "median_ms": med,
            "float_ends_over_int8": _ratio(med["tvmq_int8_float_ends"], med["tvmq_int8"])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "digits_cnn"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--before-calls", type=int, default=3)
    ap.add_argument("--mixed", action="store_true", help="also the W8A8 float-ends recipe")
    ap.add_argument("--out", default="bench_float.json")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_model(m, Path(tmp), args.rounds, args.before_calls)
                   for m in args.models]
        mixed = [bench_mixed(m, Path(tmp), args.rounds) for m in args.models
                 if args.mixed and m in FLOAT_ENDS]
    report = {"cpu": host_cpu_name(), "isa": cpu_isa(), "cores": os.cpu_count(), "threads": 2,
              "batch": 1,
              "loadavg_before": [round(v, 2) for v in load0],
              "loadavg_after": [round(v, 2) for v in os.getloadavg()],
              "results": results, "mixed": mixed}
    text = json.dumps(report, indent=2)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
