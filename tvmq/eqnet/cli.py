"""``tvmq eqnet train|search|export``: argument parsing only; the work is in
:mod:`tvmq.eqnet.workflow`.

    tvmq eqnet train digits_cnn --data digits --epochs 10 -o supernet.pt
    tvmq eqnet search supernet.pt --avg-bits 3 -o plan.json --plot search.png
    tvmq eqnet export supernet.pt --plan plan.json -o eqnet.onnx
    tvmq compile eqnet.onnx ...
"""
from __future__ import annotations

import argparse
from pathlib import Path


def _bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write bit widths as 2,3,4") from None


def _choices(mapping: dict):
    def parse(text: str) -> tuple:
        try:
            return tuple(mapping[t] for t in text.split(","))
        except KeyError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: write a comma list of {sorted(mapping)}") from None
    return parse


_GRAN = {"per_channel": True, "per_tensor": False}
_SYM = {"sym": True, "asym": False}


def add_parsers(subparsers) -> None:
    """Register ``eqnet`` with its ``train``, ``search`` and ``export`` sub-commands."""
    p = subparsers.add_parser("eqnet", help="EQ-Net elastic quantization supernet: train, "
                                            "search a subnet under a budget, export it")
    sub = p.add_subparsers(dest="eqnet_command", required=True)
    _add_train(sub)
    _add_search(sub)
    _add_export(sub)


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a zoo model in float, then its supernet")
    t.add_argument("model", help="zoo model name (tvmq.models.ZOO)")
    t.add_argument("--data", default="digits", help="'digits', an .npz file, or an image folder")
    t.add_argument("--fp32-epochs", type=int, default=30)
    t.add_argument("--epochs", type=int, default=10, help="supernet (GPG) epochs")
    t.add_argument("--lr", type=float, default=1e-2)
    t.add_argument("--subnets", type=int, default=4, help="subnets per GPG step (>= 2)")
    t.add_argument("--wdr", type=float, default=0.01, help="WDR kurtosis/skewness rate")
    t.add_argument("--weight-bits", type=_bits, default=(2, 3, 4, 5, 6, 7, 8), metavar="B,...")
    t.add_argument("--act-bits", type=_bits, default=(2, 3, 4, 5, 6, 7, 8), metavar="B,...")
    t.add_argument("--granularity", type=_choices(_GRAN), default=(True, False),
                   metavar="per_channel,per_tensor")
    t.add_argument("--act-symmetry", type=_choices(_SYM), default=(True, False),
                   metavar="sym,asym")
    t.add_argument("--elastic-first-last", action="store_true",
                   help="let the first and last layers change bits too (default: 8 bits)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("-o", "--output", default="supernet.pt")
    t.set_defaults(func=run_train)


def _add_search(sub) -> None:
    s = sub.add_parser("search", help="fit the accuracy predictor, genetic search -> plan.json")
    s.add_argument("checkpoint", help="supernet.pt from `tvmq eqnet train`")
    s.add_argument("--data", default="digits")
    budget = s.add_mutually_exclusive_group(required=True)
    budget.add_argument("--avg-bits", type=float, help="mean weight bits (model size)")
    budget.add_argument("--bops", help="bit operations: a number, or wXaY (that uniform model's)")
    s.add_argument("--samples", type=int, default=120, help="subnets measured for the predictor")
    s.add_argument("--population", type=int, default=40)
    s.add_argument("--generations", type=int, default=15)
    s.add_argument("--per-tensor", action="store_true", help="search per-tensor weight scales")
    s.add_argument("--asym", action="store_true", help="search asymmetric activations")
    s.add_argument("--plot", metavar="FILE.png", help="predicted vs measured, Pareto front")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", default="plan.json")
    s.set_defaults(func=run_search)


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="a plan's subnet -> QDQ ONNX (for `tvmq compile`)")
    e.add_argument("checkpoint")
    e.add_argument("--plan", required=True, help="plan.json from `tvmq eqnet search`")
    e.add_argument("--data", default="digits", help="BN recalibration data")
    e.add_argument("-o", "--output", default="eqnet.onnx")
    e.set_defaults(func=run_export)


def _data(spec: str, checkpoint=None, model: str | None = None):
    from tvmq import models
    from tvmq.eqnet.supernet import Supernet
    from tvmq.mixed.cli import _load_data

    name = model or Supernet.read_meta(checkpoint).get("model")
    return _load_data(spec, models.input_shape(name))


def run_train(args: argparse.Namespace) -> int:
    from tvmq import distributed as dist
    from tvmq.eqnet import ElasticSpace, GPGConfig
    from tvmq.eqnet.workflow import train_zoo

    space = ElasticSpace(args.weight_bits, args.act_bits, args.granularity, args.act_symmetry,
                         None if args.elastic_first_last else 8)
    gpg = GPGConfig(num_subnets=args.subnets, kurtosis_rate=args.wdr, skewness_rate=args.wdr)
    data = _data(args.data, model=args.model)
    path = train_zoo(args.model, data[0], space, args.output, args.fp32_epochs, args.epochs,
                     args.lr, gpg, args.seed)
    if dist.is_main():  # under torchrun only rank 0 wrote it
        print(f"wrote {path} (then: tvmq eqnet search {path} --avg-bits 3 -o plan.json)")
    return 0


def run_search(args: argparse.Namespace) -> int:
    import tvmq.mixed as mixed
    from tvmq.eqnet.workflow import describe, search_checkpoint
    from tvmq.mixed.search import parse_bops

    budget = (mixed.SizeBudget(avg_bits=args.avg_bits) if args.avg_bits is not None
              else parse_bops(args.bops))
    cond = {"per_channel": not args.per_tensor, "act_symmetric": not args.asym}
    plan, report = search_checkpoint(args.checkpoint, _data(args.data, args.checkpoint), budget,
                                     args.output, args.samples, args.population,
                                     args.generations, args.seed, args.plot, **cond)
    print(describe(plan, report))
    print(f"wrote {Path(args.output)} (then: tvmq eqnet export {args.checkpoint} "
          f"--plan {args.output} -o eqnet.onnx)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from tvmq.eqnet.workflow import export_checkpoint

    train_set, _ = _data(args.data, args.checkpoint)
    path = export_checkpoint(args.checkpoint, args.plan, train_set, args.output)
    print(f"wrote {path} (then: tvmq compile {path})")
    return 0
