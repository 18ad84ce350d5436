"""DGMS codebook results: accuracy + SQNR of the TVM-compiled models, artifact sizes, latency.

Three parts (JSON rows, one file):

* ``accuracy`` (digits CNNs, ResNet-20 on 32x32 digits): fp32, DGMS K=16/8/4 weights only and
  with 8-bit activations, LSQ W4A8/W3A8/W2A8 at the same weight bits. Every quantized model
  is exported, compiled by tvmq and run here; ``acc_tvm`` and ``sqnr_db`` (the compiled
  model's logits against the fp32 model's, over the test set) are of that compiled model.
* ``size`` (ResNet-18, no training: prepare + convert from the k-means initialization):
  ``lib.so`` bytes of the fp32, int8 (W8A8 LSQ), DGMS K=16 A8 and K=4 A8 artifacts.
* ``latency`` (ResNet-18, MobileNetV2, batch 1, each runtime in its own process,
  ``scripts/_peers.py``): DGMS K=16 A8 vs the int4 build (W4A8) vs onnxruntime int8 (the
  W8A8 export) and the weight-only DGMS K=16 build vs the fp32 build.

    python scripts/dgms_digits.py --parts accuracy -o out/dgms_digits.json
    python scripts/dgms_digits.py --parts size latency -o out/dgms_resnet18.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import tvmq
import tvmq.quant as tq
from tvmq import data, models
from tvmq.quant import LSQConfig, PerChannel, QuantSpec
from tvmq.train import accuracy, predict, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers import time_peers  # noqa: E402
from tvmq.boards import get_board, host_cpu_name  # noqa: E402

DGMS = ("dgms_k16", "dgms_k8", "dgms_k4", "dgms_k16_a8", "dgms_k8_a8", "dgms_k4_a8")
LSQ = {"lsq_w4a8": 4, "lsq_w3a8": 3, "lsq_w2a8": 2}
MODELS = ("digits_cnn", "digits_cnn_silu", "digits_cnn_nobn", "resnet20_digits")


def config(name: str):
    if name in LSQ:
        return LSQConfig(weight=QuantSpec(LSQ[name], PerChannel()), activation=QuantSpec(8))
    return tq.get_preset(name)


def sqnr_db(logits: np.ndarray, ref: np.ndarray) -> float:
    """``10 log10(sum ref^2 / sum (logits - ref)^2)`` over the whole test set."""
    noise = float(((logits.astype(np.float64) - ref) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref.astype(np.float64) ** 2).sum()) / noise)


def compiled_logits(path: Path, x: np.ndarray) -> tuple[np.ndarray, dict]:
    art = tvmq.compile(path, input_shapes={"input": (1, *x.shape[1:])})
    return np.concatenate([art.run(x[i:i + 1])[0] for i in range(len(x))]), art.meta


def accuracy_rows(name: str, args, workdir: Path) -> list[dict]:
    train_set, test_set = data.digits(size=models.input_shape(name)[-1])
    epochs = models.train_epochs(name)
    fp32 = train(models.create(name, seed=args.seed), train_set, epochs=epochs,
                 lr=models.train_lr(name), seed=args.seed, progress=False)
    ref = predict(fp32, test_set.x)
    rows = [{"part": "accuracy", "model": name, "method": "fp32", "acc_torch": accuracy(ref, test_set.y),
             "acc_tvm": None, "sqnr_db": None}]
    print(json.dumps(rows[0]), flush=True)
    for method in args.methods:
        start = time.perf_counter()
        q = copy.deepcopy(fp32)
        cfg = config(method)
        lr = args.lr_lsq if method in LSQ else args.lr_dgms
        freeze = ((args.qat_epochs // 2 or None) if args.freeze_bn_after is None
                  else (None if args.freeze_bn_after < 0 else args.freeze_bn_after))
        tq.quantize_(q, tq.QATConfig(cfg, freeze_bn_after=freeze))
        tq.fit(q, train_set, epochs=args.qat_epochs, lr=lr, seed=args.seed, progress=False)
        tq.quantize_(q, tq.QATConfig(cfg, step="convert"))
        path = tq.export(q, torch.from_numpy(test_set.x[:1]), workdir / f"{name}_{method}.onnx")
        logits, meta = compiled_logits(path, test_set.x)
        row = {"part": "accuracy", "model": name, "method": method, "lr": lr,
               "acc_torch": accuracy(predict(q, test_set.x), test_set.y),
               "acc_tvm": accuracy(logits, test_set.y), "sqnr_db": round(sqnr_db(logits, ref), 2),
               "weight_bytes": sum(l["weight_bytes"] for l in meta["layers"]),
               "integer_layers": sum(bool(l["integer"]) for l in meta["layers"]),
               "layers": len(meta["layers"]),
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _convert_only(name: str, cfg, x: torch.Tensor, calib) -> torch.nn.Module:
    model = models.create(name).eval()
    tq.quantize_(model, tq.QATConfig(cfg))
    if cfg.activation is not None:
        tq.calibrate(model, calib, progress=False)
    return tq.quantize_(model, tq.QATConfig(cfg, step="convert"))


def build_variants(name: str, workdir: Path, variants: dict) -> dict[str, Path]:
    """Artifacts (saved folders) of ``name``: variant -> method name or ``"fp32"``."""
    shape = models.input_shape(name)
    x = torch.randn(1, *shape[1:])
    calib = [torch.randn(2, *shape[1:]) for _ in range(2)]
    out = {}
    for tag, method in variants.items():
        t0 = time.perf_counter()
        if method == "fp32":
            art = tvmq.compile(models.create(name).eval(), example_inputs=x)
        else:
            q = _convert_only(name, config(method), x, calib)
            path = tq.export(q, x, workdir / f"{name}_{tag}.onnx")
            out[f"{tag}.onnx"] = path
            art = tvmq.compile(path, input_shapes={"input": tuple(x.shape)})
        out[tag] = art.save(workdir / f"{name}_{tag}")
        print(f"{name} {tag}: built in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def size_rows(workdir: Path) -> list[dict]:
    arts = build_variants("resnet18", workdir, {"fp32": "fp32", "int8": "w8a8",
                                                "dgms_k16_a8": "dgms_k16_a8",
                                                "dgms_k4_a8": "dgms_k4_a8"})
    size = {t: os.path.getsize(Path(arts[t]) / "lib.so")
            for t in ("fp32", "int8", "dgms_k16_a8", "dgms_k4_a8")}
    row = {"part": "size", "model": "resnet18", "lib_so_bytes": size,
           "k16_over_int8": round(size["dgms_k16_a8"] / size["int8"], 3),
           "k4_over_int8": round(size["dgms_k4_a8"] / size["int8"], 3),
           "k16_over_fp32": round(size["dgms_k16_a8"] / size["fp32"], 3)}
    print(json.dumps(row), flush=True)
    return [row]


def latency_rows(workdir: Path, rounds: int, names) -> list[dict]:
    rows = []
    for name in names:
        arts = build_variants(name, workdir, {"fp32": "fp32", "int8": "w8a8", "int4": "lsq_w4a8",
                                              "dgms_k16_a8": "dgms_k16_a8",
                                              "dgms_k16": "dgms_k16"})
        x = np.random.default_rng(0).standard_normal(models.input_shape(name)).astype(np.float32)
        peers = {t: ("tvmq", str(arts[t]))
                 for t in ("fp32", "int8", "int4", "dgms_k16_a8", "dgms_k16")}
        peers["onnxruntime_int8"] = ("ort", str(arts["int8.onnx"]))
        med = time_peers(peers, x, rounds)  # medians, ms
        row = {"part": "latency", "model": name, "cpu": host_cpu_name(),
               "mcpu": get_board("host").target.get("mcpu"), "median_ms": med,
               "k16a8_over_int8": round(med["dgms_k16_a8"] / med["int8"], 3),
               "k16a8_over_int4": round(med["dgms_k16_a8"] / med["int4"], 3),
               "k16a8_over_ort_int8": round(med["dgms_k16_a8"] / med["onnxruntime_int8"], 3),
               "k16_weight_only_over_fp32": round(med["dgms_k16"] / med["fp32"], 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="out/dgms_digits.json")
    ap.add_argument("--parts", nargs="+", default=["accuracy"],
                    choices=["accuracy", "size", "latency"])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--methods", nargs="+", default=[*DGMS, *LSQ])
    ap.add_argument("--qat-epochs", type=int, default=10)
    ap.add_argument("--freeze-bn-after", type=int, default=-1,
                    help="QAT epoch after which BN statistics freeze (default -1: never; "
                         "LSQ W2A8 ResNet-20 collapses when they freeze at half the epochs; "
                         "N >= 0: after N epochs)")
    ap.add_argument("--lr-dgms", type=float, default=3e-4,
                    help="DGMS QAT learning rate (the reference trains at 2e-5 on CIFAR-10)")
    ap.add_argument("--lr-lsq", type=float, default=5e-3)
    ap.add_argument("--latency-models", nargs="+", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "accuracy" in args.parts:
            for name in args.models:
                rows += accuracy_rows(name, args, work)
        if "size" in args.parts:
            rows += size_rows(work)
        if "latency" in args.parts:
            rows += latency_rows(work, args.rounds, args.latency_models)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    cpu = platform.processor() or platform.machine()
    tmp.write_text(json.dumps({"config": vars(args), "cpu": cpu, "rows": rows}, indent=2))
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
