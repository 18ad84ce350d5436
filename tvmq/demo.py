"""``make demo``: train the digits CNN, compile it with TVM, compare accuracy, size and latency."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tvmq import data, models, train
from tvmq.artifact import atomic_write


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


def main(args) -> int:
    import tvmq

    torch.set_num_threads(2)
    out = Path(args.output)
    train_set, test_set = data.digits()
    print(f"digits: {len(train_set)} train / {len(test_set)} test images (8x8)")
    model = train.train(models.create("digits_cnn"), train_set, epochs=args.epochs)
    acc_torch = train.accuracy(train.predict(model, test_set.x), test_set.y)

    example = torch.from_numpy(test_set.x[:1])
    artifact = tvmq.compile(model, example_inputs=example, board="host")
    artifact.save(out / "digits_fp32")
    artifact = tvmq.load(out / "digits_fp32")
    acc_tvm = train.accuracy(_run_all(artifact, test_set.x), test_set.y)

    x1 = test_set.x[:1]
    with torch.no_grad():
        t_torch = _latency_ms(lambda a: model(torch.from_numpy(a)), x1)
    t_tvm = _latency_ms(artifact.run, x1)
    report = {
        "model": "digits_cnn", "epochs": args.epochs,
        "accuracy": {"pytorch_fp32": acc_torch, "tvm_fp32": acc_tvm},
        "artifact_bytes": {"tvm_fp32": artifact.meta["sizes"]["lib_bytes"]},
        "latency_ms_median_batch1": {"pytorch_fp32": t_torch, "tvm_fp32": t_tvm},
    }
    atomic_write(out / "demo.json", lambda f: f.write(json.dumps(report, indent=2).encode()))
    print(f"\n{'':<14}{'accuracy %':>11}{'size KiB':>10}{'latency ms':>12}")
    print(f"{'PyTorch fp32':<14}{acc_torch:>11.2f}{'-':>10}{t_torch:>12.3f}")
    print(f"{'TVM fp32':<14}{acc_tvm:>11.2f}"
          f"{artifact.meta['sizes']['lib_bytes'] / 1024:>10.1f}{t_tvm:>12.3f}")
    print(f"\nreport: {out / 'demo.json'}")
    if abs(acc_torch - acc_tvm) > 0.25:
        print("error: compiled accuracy differs from PyTorch")
        return 1
    return 0
