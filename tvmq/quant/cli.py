"""``tvmq quantize``: argument parsing only; the work is done by :mod:`tvmq.quant`.

Hook it into the main CLI with::

    from tvmq.quant import cli as quant_cli
    quant_cli.add_parser(subparsers)   # sets args.func = quant_cli.run
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tvmq import distributed as dist


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``quantize`` subcommand to an ``argparse`` subparsers object."""
    from tvmq.calib import METHODS
    from tvmq.quant.presets import list_presets

    p = subparsers.add_parser("quantize", help="QAT or PTQ a model and export an ONNX QDQ graph",
                              description="Train (zoo models start from scratch), quantize with a "
                                          "preset, export ONNX QDQ.")
    p.add_argument("model", help="zoo model name (tvmq.models.ZOO)")
    p.add_argument("--preset", default="w8a8", choices=list_presets())
    p.add_argument("--data", default="digits", help="'digits', an .npz file, or an image folder")
    p.add_argument("--method", choices=("qat", "ptq"), default="qat", action=_Given)
    p.add_argument("--zero-shot", nargs="?", const="gzsq", default=None, choices=list(METHODS),
                   metavar="METHOD",
                   help="PTQ calibrated on images synthesized from the model alone, no data: "
                        "gzsq (default; weight-derived, works without BatchNorm), zeroq "
                        "(BatchNorm statistics), noise. Implies --method ptq")
    p.add_argument("--zs-samples", type=int, default=256, metavar="N",
                   help="images to synthesize for --zero-shot")
    p.add_argument("--zs-iters", type=int, default=None, metavar="N",
                   help="synthesis steps per batch (default: the method's)")
    p.add_argument("--save-samples", default=None, metavar="DIR",
                   help="with --zero-shot: write the synthesized images to DIR as a PNG grid "
                        "and an .npz (reusable with --data)")
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


class _Given(argparse.Action):
    """Stores the value and records that the flag was written (``--method`` vs its default)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


#: flag -> (attribute, smallest allowed value): counts may be 0 (skip the step), sizes not
_MINIMUMS = {"--epochs": ("epochs", 0), "--fp32-epochs": ("fp32_epochs", 0),
             "--freeze-bn-after": ("freeze_bn_after", 0), "--zs-samples": ("zs_samples", 1),
             "--zs-iters": ("zs_iters", 1)}


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse negative epoch counts, empty sample sets and non-positive learning rates
    (``--epochs -3`` trained for zero epochs and reported it as QAT)."""
    import math

    from tvmq.errors import ConfigError

    for flag, (attr, low) in _MINIMUMS.items():
        value = getattr(args, attr, None)
        if value is not None and value < low:
            raise ConfigError(f"{flag} {value} is below {low}", f"pass {flag} {max(low, 1)} "
                              "or more" + (" (0 skips the step)" if low == 0 else ""))
    lr = getattr(args, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr {lr} is not a positive number", "pass e.g. --lr 5e-3")


def _method(args: argparse.Namespace) -> str:
    """``qat`` or ``ptq``, checking ``--zero-shot`` / ``--save-samples`` against it."""
    from tvmq.errors import ConfigError

    if getattr(args, "zero_shot", None) is None:
        if getattr(args, "save_samples", None):
            raise ConfigError("--save-samples saves the images of --zero-shot",
                              "add --zero-shot [gzsq|zeroq|noise], or drop --save-samples")
        return args.method
    if args.method == "qat" and getattr(args, "method_given", False):
        raise ConfigError("--zero-shot calibrates post-training quantization; QAT trains on "
                          "data", "drop --method qat (--zero-shot implies --method ptq)")
    return "ptq"


def _calibration(args: argparse.Namespace, model, train_set):
    """The training set, or (``--zero-shot``) images synthesized from ``model``."""
    if args.zero_shot is None:
        return train_set
    from tvmq import models, zeroshot

    calib = zeroshot.synthesize(model, args.zs_samples, args.zero_shot,
                                input_shape=models.input_shape(args.model), iters=args.zs_iters)
    if args.save_samples and dist.is_main():
        png, npz = zeroshot.save_samples(calib, args.save_samples, args.zero_shot)
        print(f"wrote {png} and {npz}")
    return calib


def _say(text: str) -> None:
    """Print on rank 0 only (under torchrun every rank runs this command)."""
    if dist.is_main():
        print(text)


def _load_data(spec: str, input_shape):
    from tvmq import data
    if spec == "digits":  # at the model's input size (resnet20_digits: 32x32)
        return data.digits(size=input_shape[-1])
    path = Path(spec)
    full = data.load_npz(path) if path.suffix == ".npz" else data.load_image_folder(path)
    return full, full


def run(args: argparse.Namespace) -> int:
    """Handler of ``tvmq quantize``; prints the accuracy before and after, returns 0.

    Under ``torchrun --nproc_per_node N`` the ranks train together (:mod:`tvmq.distributed`);
    only rank 0 prints and writes the ONNX file.
    """
    import torch

    import tvmq.quant as tq
    from tvmq import models
    from tvmq.train import accuracy, predict, train

    _check_numbers(args)
    method = _method(args)
    dist.maybe_init_process_group()
    train_set, test_set = _load_data(args.data, models.input_shape(args.model))
    model = models.create(args.model)
    if args.zero_shot is not None:  # refuse (ZeroQ without BatchNorm) before training
        from tvmq import zeroshot
        zeroshot.check(model, args.zero_shot)
    model = train(model, train_set, epochs=args.fp32_epochs, lr=models.train_lr(args.model))
    _say(f"fp32 accuracy {accuracy(predict(model, test_set.x), test_set.y):.2f}%")
    base = tq.get_preset(args.preset)
    plan = tq.load_plan(args.plan) if args.plan else {}
    if method == "ptq":
        tq.quantize_(model, tq.PTQConfig(base, calibration=_calibration(args, model, train_set),
                                         overrides=plan))
    else:
        tq.quantize_(model, tq.QATConfig(base, overrides=plan,
                                         freeze_bn_after=args.freeze_bn_after))
        lr = args.lr if args.lr is not None else (
            3e-4 if isinstance(base, tq.DGMSConfig) else 5e-3)
        tq.fit(model, train_set, epochs=args.epochs, lr=lr)
        tq.quantize_(model, tq.QATConfig(base, step="convert", overrides=plan))
    label = method if args.zero_shot is None else f"zero-shot {args.zero_shot} ptq"
    _say(f"{args.preset} {label} accuracy {accuracy(predict(model, test_set.x), test_set.y):.2f}%")
    if dist.is_main():
        path = tq.export(model, torch.from_numpy(test_set.x[:1]), args.output)
        _say(f"wrote {path}")
    return 0
