"""Accuracy cost of 7-bit weights (``w7a8``, onnxruntime's ``reduce_range``) against ``w8a8``.

On x86 CPUs without VNNI, tvmq's integer kernels run ``vpmaddubsw`` for layers whose weight
pairs fit an int16 sum (7-bit weights do) and the slower exact ``vpmaddwd`` path otherwise.
For each model and seed: train fp32 (zoo recipe), PTQ with real calibration data at w8a8 and
w7a8 (every layer 7-bit, first and last included), export, compile with tvmq for this host and
run the 450 test images. Each row: accuracy of the TVM-compiled model, SQNR (dB) of its logits
against the fp32 model's, and how many of its conv/dense kernels use ``vpmaddubsw``.

    python scripts/reduce_range_digits.py                   # docs/results/reduce_range_digits.json
    python scripts/reduce_range_digits.py --models digits_cnn --seeds 0 -o out.json
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from zeroshot_digits import sqnr_db  # scripts/ is on sys.path when this file runs

import tvmq
import tvmq.quant as tq
from tvmq import data, models
from tvmq.boards import host_cpu_name
from tvmq.train import accuracy, predict, train

MODELS = ("digits_cnn", "digits_cnn_nobn", "resnet20_digits")
PRESETS = ("w8a8", "w7a8")


def _kernels_using(art, instr: str) -> tuple[int, int]:
    """(integer conv/dense layers whose code has ``instr``, integer conv/dense layers)."""
    from tvmq.roofline.asm import _kernel_functions, split_functions

    funcs = split_functions(art.executable.mod.imports[0].inspect_source("asm"))
    hits = total = 0
    for layer in art.meta["layers"]:
        if not (layer.get("integer") and layer.get("primfunc") and layer.get("macs")):
            continue
        code = [ln for f in _kernel_functions(funcs, layer["primfunc"]) for ln in funcs[f]]
        if any(m in ln for ln in code for m in ("vpmaddwd", "vpmaddubsw", "vpdpbusd")):
            total += 1
            hits += any(instr in ln for ln in code)
    return hits, total


def run(name: str, seed: int, workdir: Path) -> list[dict]:
    train_set, test = data.digits(size=models.input_shape(name)[-1])
    fp32 = train(models.create(name, seed=seed), train_set, epochs=models.train_epochs(name),
                 lr=models.train_lr(name), seed=seed, progress=False)
    ref = predict(fp32, test.x)
    rows = [{"model": name, "seed": seed, "preset": "fp32", "acc_torch": accuracy(ref, test.y)}]
    for preset in PRESETS:
        q = tq.quantize_(copy.deepcopy(fp32), tq.PTQConfig(tq.get_preset(preset),
                                                           calibration=train_set,
                                                           progress=False))
        path = tq.export(q, torch.from_numpy(test.x[:1]), workdir / f"{name}_{seed}_{preset}.onnx")
        art = tvmq.compile(path)
        logits = np.concatenate([art.run(test.x[i:i + 1])[0] for i in range(len(test.x))])
        ubs, total = _kernels_using(art, "vpmaddubsw")
        rows.append({"model": name, "seed": seed, "preset": preset,
                     "acc_tvm": accuracy(logits, test.y), "sqnr_tvm_db": sqnr_db(ref, logits),
                     "acc_torch": accuracy(predict(q, test.x), test.y),
                     "layers_with_vpmaddubsw": ubs, "int8_dot_layers": total})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        for preset in ("fp32", *PRESETS):
            sel = [r for r in rows if r["model"] == name and r["preset"] == preset]
            key = "acc_torch" if preset == "fp32" else "acc_tvm"
            row = {"model": name, "preset": preset, "seeds": len(sel),
                   "acc_mean": float(np.mean([r[key] for r in sel]))}
            if preset != "fp32":
                row["sqnr_db_mean"] = float(np.mean([r["sqnr_tvm_db"] for r in sel]))
            out.append(row)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("-o", "--out", default="docs/results/reduce_range_digits.json")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for seed in args.seeds:
                rows += run(name, seed, Path(tmp))
    summary = summarize(rows)
    for r in summary:
        print(f"{r['model']:>16} {r['preset']:>5}: {r['acc_mean']:.2f}%"
              + (f"  SQNR {r['sqnr_db_mean']:.1f} dB" if "sqnr_db_mean" in r else ""))
    from tvmq.boards import get_board
    from tvmq.schedules.strategy import strategy_for

    st = strategy_for(get_board("host").tvm_target())
    res = {"cpu": host_cpu_name(), "strategy": st.name if st else None, "rows": rows,
           "summary": summary}
    tvmq.artifact.atomic_write(args.out, lambda f: f.write(json.dumps(res, indent=1).encode()))


if __name__ == "__main__":
    main()
