"""``tvmq quantize``: argument parsing only; the work is done by :mod:`tvmq.quant`.

Hook it into the main CLI with::

    from tvmq.quant import cli as quant_cli
    quant_cli.add_parser(subparsers)   # sets args.func = quant_cli.run
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``quantize`` subcommand to an ``argparse`` subparsers object."""
    from tvmq.quant.presets import list_presets

    p = subparsers.add_parser("quantize", help="QAT or PTQ a model and export an ONNX QDQ graph",
                              description="Train (zoo models start from scratch), quantize with a "
                                          "preset, export ONNX QDQ.")
    p.add_argument("model", help="zoo model name (tvmq.models.ZOO)")
    p.add_argument("--preset", default="w8a8", choices=list_presets())
    p.add_argument("--data", default="digits", help="'digits', an .npz file, or an image folder")
    p.add_argument("--method", choices=("qat", "ptq"), default="qat")
    p.add_argument("--fp32-epochs", type=int, default=30, help="float training before quantizing")
    p.add_argument("--epochs", type=int, default=15, help="QAT epochs")
    p.add_argument("--lr", type=float, default=None,
                   help="QAT learning rate (default: 5e-3; 3e-4 for dgms_* presets, whose "
                        "soft assignment diverges at 5e-3)")
    p.add_argument("--freeze-bn-after", type=int, default=None)
    p.add_argument("--plan", default=None, metavar="PLAN.json",
                   help="per-layer plan (module name -> null, preset or config), applied as "
                        "written; layers it does not name use --preset")
    p.add_argument("-o", "--output", default="qmodel.onnx")
    p.set_defaults(func=run)
    return p


def _load_data(spec: str, input_shape):
    from tvmq import data
    if spec == "digits":  # at the model's input size (resnet20_digits: 32x32)
        return data.digits(size=input_shape[-1])
    path = Path(spec)
    full = data.load_npz(path) if path.suffix == ".npz" else data.load_image_folder(path)
    return full, full


def run(args: argparse.Namespace) -> int:
    """Handler of ``tvmq quantize``; prints the accuracy before and after, returns 0."""
    import torch

    import tvmq.quant as tq
    from tvmq import models
    from tvmq.train import accuracy, predict, train

    train_set, test_set = _load_data(args.data, models.input_shape(args.model))
    model = train(models.create(args.model), train_set, epochs=args.fp32_epochs,
                  lr=models.train_lr(args.model))
    print(f"fp32 accuracy {accuracy(predict(model, test_set.x), test_set.y):.2f}%")
    base = tq.get_preset(args.preset)
    plan = tq.load_plan(args.plan) if args.plan else {}
    if args.method == "ptq":
        tq.quantize_(model, tq.PTQConfig(base, calibration=train_set, overrides=plan))
    else:
        tq.quantize_(model, tq.QATConfig(base, overrides=plan,
                                         freeze_bn_after=args.freeze_bn_after))
        lr = args.lr if args.lr is not None else (
            3e-4 if isinstance(base, tq.DGMSConfig) else 5e-3)
        tq.fit(model, train_set, epochs=args.epochs, lr=lr)
        tq.quantize_(model, tq.QATConfig(base, step="convert", overrides=plan))
    print(f"{args.preset} {args.method} accuracy {accuracy(predict(model, test_set.x), test_set.y):.2f}%")
    path = tq.export(model, torch.from_numpy(test_set.x[:1]), args.output)
    print(f"wrote {path}")
    return 0
