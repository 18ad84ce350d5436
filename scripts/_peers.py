"""Time several runtimes on the same input, alternating, each in its own worker process.

One process per runtime: a runtime's thread pool, allocator and CPU state cannot slow the
next one down. Measured on this 2-core host: in one process, onnxruntime's int8 ResNet-18
took 9.3 ms after each PyTorch call and 3.0-3.6 ms on its own. The parent sends one
command at a time, so only one runtime runs while the others block on their pipes.

A peer is ``(kind, what)``:

* ``("tvmq", artifact_dir)``: a saved tvmq artifact, run through its Relax VM;
* ``("ort", model.onnx)``: an onnxruntime CPU session;
* ``("torch", zoo_name)``: a model of tvmq's zoo in PyTorch eager (``no_grad``).

Every peer uses ``threads`` intra-op threads.
"""
from __future__ import annotations

import multiprocessing as mp
import statistics
import time

#: pause before each peer's turn: after a call, TVM's pool threads yield-spin for about
#: 120 ms of CPU (measured: ``os.times`` of an idle process after a ResNet-18 call) and
#: onnxruntime's and OpenMP's spin too; a shorter pause hands the next peer one core
SETTLE_S = 0.25


def _make_runner(kind: str, what: str, x, threads: int):
    if kind == "tvmq":
        import tvmq

        art = tvmq.load(what)
        return lambda: art.run([x])
    if kind == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # errors only: not one warning per unused initializer
        sess = ort.InferenceSession(what, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda: sess.run(None, {name: x})
    if kind == "torch":
        import torch

        import tvmq

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        net = tvmq.models.create(what).eval()
        xt = torch.from_numpy(x)

        def run():
            with torch.no_grad():
                return net(xt)
        return run
    raise ValueError(f"unknown peer kind {kind!r}")


def _worker(conn, kind: str, what: str, x, threads: int) -> None:
    try:
        run = _make_runner(kind, what, x, threads)
        run()
        conn.send(("ready", None))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", f"{kind} {what}: {err!r}"))
        return
    while True:
        msg = conn.recv()
        if msg is None:
            return
        run()  # untimed: wakes the runtime's threads
        times = []
        for _ in range(msg):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
        conn.send(("times", times))


def time_peers(peers: dict, x, rounds: int, batch: int = 5, threads: int = 2,
               procs_per_peer: int = 3) -> dict:
    """``{name: median ms}``: ``rounds`` rounds, each peer in turn timing ``batch`` calls
    (after a ``SETTLE_S`` pause and one untimed call). Each peer runs in
    ``procs_per_peer`` processes used in turn: on this VM a process keeps the speed it
    started with (the same MobileNetV2 build measured 1.8 ms in some processes and 2.9 ms
    in others, whatever the thread binding), so one process per peer could hand any peer
    a slow one for the whole run."""
    ctx = mp.get_context("spawn")
    procs = {}
    try:
        for name, (kind, what) in peers.items():
            for _ in range(procs_per_peer):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, kind, str(what), x, threads),
                                   daemon=True)
                proc.start()
                procs.setdefault(name, []).append((proc, parent))
                status, info = parent.recv()  # one at a time: loading is not timed anyway
                if status != "ready":
                    raise RuntimeError(f"peer {name} failed to start: {info}")
        times = {name: [] for name in peers}
        for r in range(rounds):
            for name, workers in procs.items():
                time.sleep(SETTLE_S)
                conn = workers[r % len(workers)][1]
                conn.send(batch)
                status, values = conn.recv()
                times[name] += values
        return {k: round(statistics.median(v), 3) for k, v in times.items()}
    finally:
        for proc, conn in (w for workers in procs.values() for w in workers):
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
