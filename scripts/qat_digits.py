"""QAT/PTQ accuracy table on the digits models (public tvmq API only).

Writes JSON rows: model, method (fp32 / ptq / qat), preset, accuracy of the PyTorch
fake-quant model, of onnxruntime running the exported QDQ graph, and ``acc_tvm``: the same
graph compiled by tvmq into integer TVM code and run here. Each model trains on the digits
at its zoo input size (8x8 CNNs; ``resnet20_digits`` on ``data.digits(size=32)``) with its
zoo recipe (``models.train_lr``, ``models.train_epochs``) unless ``--epochs`` is given.

    python scripts/qat_digits.py -o out/qat_digits.json --qat-epochs 15
    python scripts/qat_digits.py --models digits_cnn digits_cnn_silu digits_cnn_nobn  # 8x8 rows
    python scripts/qat_digits.py --models resnet20_digits -o out/qat_resnet20.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import tvmq
import tvmq.quant as tq
from tvmq import data, models
from tvmq.train import accuracy, predict, train

QAT_PRESETS = ("w8a8", "w8a8_lsqplus", "w4a4", "w4a4_lsqplus", "w3a3", "w3a3_lsqplus",
               "w2a2", "w2a2_lsqplus")
#: model -> its QAT presets (``--qat-presets`` overrides); ResNet-20's QAT epochs cost ~50x a
#: digits CNN's, so it runs the two bit widths of the issue only
MODELS = {"digits_cnn": QAT_PRESETS, "digits_cnn_silu": QAT_PRESETS,
          "digits_cnn_nobn": QAT_PRESETS, "resnet20_digits": ("w4a4", "w2a2")}


def ort_accuracy(path: Path, test) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return accuracy(sess.run(None, {"input": test.x})[0], test.y)


def tvm_logits(path: Path, test) -> np.ndarray:
    """Compile the exported QDQ graph with tvmq (integer lowering); its logits on the test set."""
    art = tvmq.compile(path)
    return np.concatenate([art.run(test.x[i:i + 1])[0] for i in range(len(test.x))])


def tvm_accuracy(path: Path, test) -> float | None:
    """Compile the exported QDQ graph with tvmq (integer lowering) and run it over the test set."""
    return accuracy(tvm_logits(path, test), test.y)


def evaluate(name: str, method: str, preset: str, qmodel, test, workdir: Path) -> dict:
    row = {"model": name, "method": method, "preset": preset,
           "acc_torch": accuracy(predict(qmodel, test.x), test.y)}
    if method != "fp32":
        path = tq.export(qmodel, torch.from_numpy(test.x[:1]), workdir / f"{name}_{method}_{preset}.onnx")
        row["acc_onnxruntime"] = ort_accuracy(path, test)
        row["acc_tvm"] = tvm_accuracy(path, test)
    return row


def run_model(name: str, args, train_set, test_set, workdir: Path) -> list[dict]:
    start = time.perf_counter()
    epochs = args.epochs if args.epochs is not None else models.train_epochs(name)
    fp32 = train(models.create(name, seed=args.seed), train_set, epochs=epochs,
                 lr=models.train_lr(name), seed=args.seed, progress=False)
    seconds = round(time.perf_counter() - start, 1)
    rows = [{**evaluate(name, "fp32", "fp32", fp32, test_set, workdir), "epochs": epochs,
             "seconds": seconds}]
    print(json.dumps(rows[0]), flush=True)
    ptq = tq.quantize_(copy.deepcopy(fp32), tq.PTQConfig(tq.get_preset("w8a8"),
                                                         calibration=train_set, progress=False))
    rows.append(evaluate(name, "ptq", "w8a8", ptq, test_set, workdir))
    for preset in args.qat_presets or MODELS.get(name, QAT_PRESETS):
        start = time.perf_counter()
        qat = copy.deepcopy(fp32)
        base = tq.get_preset(preset)
        tq.quantize_(qat, tq.QATConfig(base, freeze_bn_after=args.freeze_bn_after))
        tq.fit(qat, train_set, epochs=args.qat_epochs, lr=args.lr, seed=args.seed,
               progress=False)
        tq.quantize_(qat, tq.QATConfig(base, step="convert"))
        row = evaluate(name, "qat", preset, qat, test_set, workdir)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="out/qat_digits.json")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--epochs", type=int, default=None,
                    help="fp32 training epochs (default: the zoo recipe's, 30 for the CNNs)")
    ap.add_argument("--qat-presets", nargs="+", default=None,
                    help="QAT presets for every model (default: per model, see MODELS)")
    ap.add_argument("--qat-epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=5e-3, help="QAT learning rate")
    ap.add_argument("--freeze-bn-after", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            train_set, test_set = data.digits(size=models.input_shape(name)[-1])
            rows += run_model(name, args, train_set, test_set, Path(tmp))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"config": vars(args), "rows": rows}, indent=2))
    os.replace(tmp, out)
    nan = float("nan")
    for r in rows:
        print(f"{r['model']:16s} {r['method']:4s} {r['preset']:13s} torch {r['acc_torch']:6.2f}"
              f"  ort {r.get('acc_onnxruntime', nan):6.2f}  tvm {r.get('acc_tvm') or nan:6.2f}")


if __name__ == "__main__":
    main()
