"""``tvmq search-bits``: argument parsing only; the work is done by :mod:`tvmq.mixed`.

    tvmq search-bits digits_cnn --data digits --avg-bits 3 -o plan.json
    tvmq search-bits resnet20_digits --data digits --bops w4a4 -o plan.json
    tvmq search-bits digits_cnn --data digits --latency-ms 0.06 --board host -o plan.json
    tvmq quantize digits_cnn --plan plan.json -o q.onnx
"""
from __future__ import annotations

import argparse
from pathlib import Path


def _bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write bit widths as 2,3,4") from None


def add_parsers(subparsers) -> None:
    """Register ``search-bits``."""
    p = subparsers.add_parser(
        "search-bits", help="mixed-precision bit allocation (Hessian + knapsack) -> plan.json",
        description="Train the zoo model (as `tvmq quantize` does), estimate each layer's "
                    "Hessian sensitivity, allocate bits under a budget, write a per-layer plan "
                    "for `tvmq quantize --plan`.")
    p.add_argument("model", help="zoo model name (tvmq.models.ZOO)")
    p.add_argument("--data", default="digits", help="'digits', an .npz file, or an image folder")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--avg-bits", type=float, help="mean weight bits (model size)")
    budget.add_argument("--bops", help="bit operations per sample: a number, or wXaY (the "
                                       "BOPs of that uniform model)")
    budget.add_argument("--latency-ms", type=float,
                        help="milliseconds on --board (a per-layer table is measured or cached)")
    p.add_argument("--board", default="host", help="board of the latency table (tvmq boards)")
    p.add_argument("--device", default="local", help="rpc://HOST:PORT/KEY or local (timing)")
    p.add_argument("--latency-table", metavar="TABLE.json",
                   help="latency cache (default ~/.cache/tvmq/latency/<board>-<cpu>-<model>-"
                        "tvm<version>.json)")
    p.add_argument("--weight-bits", type=_bits, default=(2, 3, 4, 5, 6, 8), metavar="B,B,...")
    p.add_argument("--act-bits", type=_bits, default=None, metavar="B,B,...",
                   help="activation choices (default 4,6,8 for --bops; 8 for --avg-bits, where "
                        "they are free, and for --latency-ms: kernels take 8-bit containers)")
    p.add_argument("--solver", choices=("greedy", "dp", "milp"), default="greedy")
    p.add_argument("--preset", default="w8a8",
                   help="method of the plan's layers (bits replaced per layer)")
    p.add_argument("--tie", action="append", default=[], metavar="LAYER,LAYER,...",
                   help="layers that must share one bit choice (repeat per group)")
    p.add_argument("--fp32-epochs", type=int, default=30, help="float training first")
    p.add_argument("--samples", type=int, default=256, help="samples of the Hessian estimate")
    p.add_argument("--max-iter", type=int, default=50, help="Hutchinson samples at most")
    p.add_argument("--tol", type=float, default=0.1,
                   help="stop when every trace's relative standard error is below this")
    p.add_argument("--sensitivity-json", metavar="FILE", help="also write the sensitivity")
    p.add_argument("--pareto", metavar="FILE.png",
                   help="also sweep budgets and plot PTQ accuracy vs size (and latency)")
    p.add_argument("-o", "--output", default="plan.json")
    p.set_defaults(func=run)


def _load_data(spec: str, input_shape):
    from tvmq import data

    if spec == "digits":
        return data.digits(size=input_shape[-1])
    path = Path(spec)
    full = data.load_npz(path) if path.suffix == ".npz" else data.load_image_folder(path)
    return full, full


def _act_bits(args) -> tuple[int, ...]:
    if args.act_bits is not None:
        return args.act_bits
    return (4, 6, 8) if args.bops is not None else (8,)


def _early_budget(args):
    """The size or BOPs budget, checked before training (None for latency)."""
    import tvmq.mixed as mixed
    from tvmq.mixed.search import parse_bops

    if args.avg_bits is not None:
        return mixed.SizeBudget(avg_bits=args.avg_bits).check_bits(args.weight_bits)
    return parse_bops(args.bops) if args.bops is not None else None


def _budget(args, model, train_set, sens, early):
    import tvmq.mixed as mixed

    if early is not None:
        return early, None
    table = mixed.latency_table(model, train_set, args.model, board=args.board,
                                device=args.device, weight_bits=sens.weight_bits,
                                act_bits=sens.act_bits, method=sens.method,
                                cache=args.latency_table)
    return mixed.LatencyBudget(ms=args.latency_ms, table=table), table


def run(args: argparse.Namespace) -> int:
    """Handler of ``tvmq search-bits``: writes the plan, prints it; returns 0."""
    import tvmq.mixed as mixed
    import tvmq.quant as tq
    from tvmq import models
    from tvmq.mixed.search import format_plan, pareto_points, sweep
    from tvmq.train import train

    early = _early_budget(args)
    train_set, test_set = _load_data(args.data, models.input_shape(args.model))
    model = train(models.create(args.model), train_set, epochs=args.fp32_epochs,
                  lr=models.train_lr(args.model))
    ties = [t.split(",") for t in args.tie]
    sens = mixed.sensitivity(model, train_set, method=tq.get_preset(args.preset),
                             weight_bits=args.weight_bits, act_bits=_act_bits(args), ties=ties,
                             samples=args.samples, max_iter=args.max_iter, tol=args.tol)
    if args.sensitivity_json:
        sens.save(args.sensitivity_json)
    budget, table = _budget(args, model, train_set, sens, early)
    plan = mixed.allocate(sens, budget, solver=args.solver)
    print(format_plan(plan, sens, table))
    print(f"wrote {tq.save_plan(plan, args.output)} "
          f"(then: tvmq quantize {args.model} --plan {args.output} -o q.onnx)")
    if args.pareto:
        points = pareto_points(model, sens, sweep(sens, budget, solver=args.solver), train_set,
                               test_set, table)
        print(f"wrote {mixed.plot_pareto(points, args.pareto, quality_label='PTQ accuracy (%)')}")
    return 0
