"""``tvmq device up|down|list`` and ``tvmq bench``: argument parsing only.

``tvmq/cli.py`` calls :func:`add_parsers` with its subparsers; each parser sets ``func`` to a
handler taking the parsed namespace. Errors are :class:`~tvmq.errors.TvmqError`, printed by the
main CLI as one line (exit code 2).
"""
from __future__ import annotations

import argparse


def add_parsers(subparsers) -> None:
    """Register ``device`` (with ``up``, ``down``, ``list``) and ``bench``."""
    device = subparsers.add_parser("device", help="start/stop/list local RPC tracker and boards")
    actions = device.add_subparsers(dest="device_command", required=True)

    up = actions.add_parser("up", help="start a tracker and RPC servers (127.0.0.1 by default)")
    up.add_argument("--emulated-arm", action="store_true",
                    help="also serve the emulated aarch64 board (key arm64-emu; needs root)")
    up.add_argument("--host", help="bind address (default TVM_TRACKER_HOST or 127.0.0.1)")
    up.add_argument("--port", type=int, help="tracker port (default TVM_TRACKER_PORT or 9190)")
    up.add_argument("--no-host-server", dest="host_server", action="store_false",
                    help="do not serve this machine's CPU under key 'host'")
    up.add_argument("--servers", type=int, default=1, metavar="N",
                    help="run N servers under key 'host' (a fleet on loopback; each gets "
                         "1/N of the cores); default 1")
    up.set_defaults(func=_up)

    down = actions.add_parser("down", help="stop the processes `device up` started")
    scope = down.add_mutually_exclusive_group()
    scope.add_argument("--port", type=int, help="the tracker port whose processes to stop "
                       "(default TVM_TRACKER_PORT or 9190)")
    scope.add_argument("--all", action="store_true",
                       help="stop everything `device up` recorded, for every tracker")
    down.set_defaults(func=_down)

    lst = actions.add_parser("list", help="boards registered with the tracker per key: "
                             "total, free, busy, requests waiting")
    lst.add_argument("--tracker", help="HOST:PORT (default TVM_TRACKER_HOST:TVM_TRACKER_PORT)")
    lst.set_defaults(func=_list)

    bench = subparsers.add_parser("bench", help="check outputs on a device, then time them")
    bench.add_argument("artifact", metavar="ARTIFACT_DIR")
    bench.add_argument("--device", default="local", help="rpc://HOST:PORT/KEY or local")
    bench.add_argument("--reference", metavar="HOST_ARTIFACT_DIR",
                       help="host build of the same model, the reference for a cross artifact")
    bench.add_argument("--per-layer", action="store_true", help="also time each layer")
    bench.add_argument("--number", type=int, default=10, help="runs averaged per sample")
    bench.add_argument("--repeat", type=int, default=10, help="samples")
    bench.add_argument("--min-repeat-ms", type=int, default=0)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--timeout", type=float, default=60.0,
                       help="seconds to wait for a free board")
    bench.add_argument("--session-timeout", type=float, default=600.0, metavar="S",
                       help="give up on the board after S seconds for the whole session "
                            "(a hung board never answers; default 600, 0: wait forever)")
    bench.add_argument("--json", metavar="FILE")
    bench.add_argument("--csv", metavar="FILE")
    bench.add_argument("--plot", metavar="FILE", help="image (png/svg/pdf) via matplotlib")
    bench.set_defaults(func=_bench)


def _up(args: argparse.Namespace) -> int:
    from tvmq import device

    info = device.up(emulated_arm=args.emulated_arm, host=args.host, port=args.port,
                     host_server=args.host_server, servers=args.servers)
    started = ", ".join(info["started"]) or "nothing new (already running)"
    print(f"tracker {info['tracker']}: started {started}; state in {info['state']}")
    print(device.format_queue(device.queue(info["tracker"]), info["tracker"]))
    return 0


def _down(args: argparse.Namespace) -> int:
    from tvmq import device

    default = device.default_tracker()
    tracker = None if args.all else device.TrackerAddress(default.host,
                                                          args.port or default.port)
    stopped = device.down(tracker)
    where = "" if tracker is None else f" for tracker {tracker} (--all: every tracker)"
    print("stopped " + ", ".join(stopped) if stopped else f"nothing recorded to stop{where}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from tvmq import device

    from tvmq.device import processes

    for entry in processes.recorded():
        if entry["orphaned"]:
            print(f"orphaned: {entry['name']} (leader pid {entry['pid']} died, process group "
                  f"{entry.get('pgid', entry['pid'])} still runs; `tvmq device down` stops it)")
    tracker = args.tracker or str(device.default_tracker())
    print(device.format_queue(device.queue(tracker), tracker))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from tvmq import device

    from tvmq.device.watchdog import deadline

    limit = args.session_timeout
    with deadline(limit, f"no answer from {args.device} within {limit:.0f} s (board hung, "
                         "stopped or unreachable)", "restart the board's RPC server (tvmq "
                         "device down && tvmq device up), or raise --session-timeout",
                  prog="tvmq bench"):
        with device.connect(args.device, timeout=args.timeout,
                            session_timeout=int(limit)) as board:
            result = board.bench(args.artifact, reference=args.reference,
                                 number=args.number, repeat=args.repeat,
                                 min_repeat_ms=args.min_repeat_ms, warmup=args.warmup,
                                 per_layer=args.per_layer)
    print(result.summary())
    for path, write in ((args.json, result.write_json), (args.csv, result.write_csv),
                        (args.plot, result.write_plot)):
        if path:
            print(f"wrote {write(path)}")
    return 0
