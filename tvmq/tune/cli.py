"""``tvmq tune``: argument parsing over :func:`tvmq.tune.tune`."""
from __future__ import annotations

import json


def cmd_tune(args) -> int:
    import contextlib
    import sys

    from tvmq.tune import export_database, tune

    # --json: stdout carries the JSON report alone; the summary and MetaSchedule's own
    # logging (configured inside tune(), on sys.stdout) go to stderr
    out = sys.stderr if args.json else sys.stdout
    trials = args.trials or (1_000_000 if args.time_budget else 64)
    model, example, shapes = args.model, None, None
    if model.startswith("zoo:"):  # as `tvmq compile zoo:NAME`
        from tvmq.cli import _resolve_model

        model, example, shapes = _resolve_model(args.model, None)
    with contextlib.redirect_stdout(out):
        report = tune(model, args.board, example_inputs=example, input_shapes=shapes, trials=trials, time_budget_min=args.time_budget,
                      db=args.db, device=args.device, trials_per_iter=args.trials_per_iter,
                      progress=not args.quiet, max_tasks=args.tasks,
                      kernels=not args.no_kernels, boards=args.boards)
    est = report.estimated_ms
    print(f"tuned {len(report.tasks)} task(s): {report.trials_run} new trial(s), "
          f"{report.trials_before + report.trials_run} in {report.db}; "
          f"estimated model latency {est:.3f} ms" if est is not None else
          f"tuned {len(report.tasks)} task(s): no successful measurement yet", file=out)
    for task in report.tasks:
        best = f"{task['best_us']:.1f} us" if task["best_us"] is not None else "-"
        name = ", ".join(task.get("layers") or []) or task["name"]  # the user's layer names
        name = name if len(name) <= 48 else name[:45] + "..."
        print(f"  {name:<48} x{task['weight']:<3} {task['records']:>5} records  {best}",
              file=out)
    if report.boards:
        print("measured on " + ", ".join(f"{b} ({n})" for b, n in report.boards.items()),
              file=out)
    if args.export_db:
        source = (model, example) if example is not None else model  # zoo: (module, input)
        models = [source] if report.board == "host" else []
        with contextlib.redirect_stdout(out):
            dest = export_database(args.db, args.board, models=models)
        print(f"exported to {dest}" + (" (only schedules measured faster in the model; see "
                                       "validation.json)" if models else ""), file=out)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("tune", help="auto-tune a model's kernels with MetaSchedule")
    p.add_argument("model", help="model.onnx, program.pt2, zoo:NAME or an artifact directory")
    p.add_argument("--board", default="host")
    p.add_argument("--device", help="rpc://HOST:PORT/KEY to measure on a board (default: local)")
    p.add_argument("--boards", type=int, metavar="N",
                   help="with --device: measure on N boards under the key at once (default: "
                        "every board free under the key at the start)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=int,
                        help="total trials the database should hold, default 64 "
                             "(a re-run continues)")
    budget.add_argument("--time-budget", type=float, metavar="MIN", help="stop after MIN minutes")
    p.add_argument("--db", default="tune-db", help="database directory (resumable)")
    p.add_argument("--trials-per-iter", type=int, default=16)
    p.add_argument("--tasks", type=int, metavar="N", help="tune only the N most expensive tasks (measured time on host, else FLOPs)")
    p.add_argument("--no-kernels", action="store_true",
                   help="leave tvmq's conv/dense kernels at their default schedules; tune the "
                        "rest (pools, transforms, elementwise)")
    p.add_argument("--export-db", action="store_true",
                   help="copy the database into the package's schedules/<board>/ (host: "
                        "only schedules measured faster in the compiled model)")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON on stdout (everything else goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tune)
