"""``make demo``: train the digits CNN, QAT it to W4A4, compile both with TVM, compare.

Prints accuracy (PyTorch fp32, TVM fp32, PyTorch fake-quant W4A4, TVM integer W4A4),
artifact size and batch-1 latency side by side, and writes ``<output>/demo.json``.
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tvmq import data, models, train
from tvmq.artifact import atomic_write

PRESET = "w4a4"


def _latency_ms(fn, x, repeat: int = 200) -> float:
    for _ in range(10):
        fn(x)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(x)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _run_all(artifact, x: np.ndarray) -> np.ndarray:
    return np.concatenate([artifact.run(x[i:i + 1])[0] for i in range(len(x))])


def _qat(model, train_set, epochs: int):
    import tvmq.quant as tq

    qmodel = copy.deepcopy(model)
    base = tq.get_preset(PRESET)
    tq.quantize_(qmodel, tq.QATConfig(base))
    tq.fit(qmodel, train_set, epochs=epochs, progress=True)
    tq.quantize_(qmodel, tq.QATConfig(base, step="convert"))
    return qmodel


def _row(name, acc, size, latency):
    size_s = f"{size / 1024:.1f}" if size else "-"
    return f"{name:<26}{acc:>11.2f}{size_s:>10}{latency:>12.3f}"


def main(args) -> int:
    import tvmq
    import tvmq.quant as tq

    torch.set_num_threads(2)
    out = Path(args.output)
    train_set, test_set = data.digits()
    print(f"digits: {len(train_set)} train / {len(test_set)} test images (8x8)")
    model = train.train(models.create("digits_cnn"), train_set, epochs=args.epochs)
    qmodel = _qat(model, train_set, epochs=max(args.epochs // 3, 1))
    example = torch.from_numpy(test_set.x[:1])
    tq.export(qmodel, example, out / f"digits_{PRESET}.onnx")

    fp32 = tvmq.compile(model, example_inputs=example, board="host")
    fp32 = tvmq.load(fp32.save(out / "digits_fp32"))
    q = tvmq.compile(out / f"digits_{PRESET}.onnx", board="host")
    q = tvmq.load(q.save(out / f"digits_{PRESET}"))

    acc = {"pytorch_fp32": train.accuracy(train.predict(model, test_set.x), test_set.y),
           "tvm_fp32": train.accuracy(_run_all(fp32, test_set.x), test_set.y),
           f"pytorch_{PRESET}_fakequant": train.accuracy(train.predict(qmodel, test_set.x),
                                                         test_set.y),
           f"tvm_{PRESET}_integer": train.accuracy(_run_all(q, test_set.x), test_set.y)}
    x1 = test_set.x[:1]
    with torch.no_grad():
        lat = {"pytorch_fp32": _latency_ms(lambda a: model(torch.from_numpy(a)), x1),
               "tvm_fp32": _latency_ms(fp32.run, x1),
               f"pytorch_{PRESET}_fakequant": _latency_ms(lambda a: qmodel(torch.from_numpy(a)),
                                                          x1),
               f"tvm_{PRESET}_integer": _latency_ms(q.run, x1)}
    sizes = {"tvm_fp32": fp32.meta["sizes"]["lib_bytes"],
             f"tvm_{PRESET}_integer": q.meta["sizes"]["lib_bytes"]}
    integer = [f"{l['op']}:{l.get('precision')}" + (f"/w{l['weight_bits']}"
                                                      if l.get("weight_bits") else "")
               for l in q.meta["layers"] if l["op"] in ("conv2d", "matmul", "dense")]
    report = {"model": "digits_cnn", "preset": PRESET, "epochs": args.epochs,
              "accuracy_percent": acc, "latency_ms_median_batch1": lat, "artifact_bytes": sizes,
              "integer_layers": integer}
    atomic_write(out / "demo.json", lambda f: f.write(json.dumps(report, indent=2).encode()))
    print(f"\n{'':<26}{'accuracy %':>11}{'size KiB':>10}{'latency ms':>12}")
    for key in acc:
        print(_row(key.replace("_", " "), acc[key], sizes.get(key), lat[key]))
    print(f"\ncompute layers of the {PRESET} artifact: {', '.join(integer)}")
    print(f"report: {out / 'demo.json'}")
    if abs(acc["pytorch_fp32"] - acc["tvm_fp32"]) > 0.25:
        print("error: the compiled fp32 model's accuracy differs from PyTorch's")
        return 1
    return 0
