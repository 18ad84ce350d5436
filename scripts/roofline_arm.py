"""Static ARM roofline report: per integer kernel, its hot loop's llvm-mca cycles on each board.

For each model (tvmq's zoo, 224x224) and build (``int8``: onnxruntime's ``quantize_static``
QDQ graph, as in ``scripts/bench_int8.py``; ``int4``: the same graph with 4-bit weights kept
packed; ``codebook``: DGMS K=16 A8 from the k-means initialization, no training) it
compiles for each board, prices every integer layer with :func:`tvmq.roofline.analyze`
(hot loop, cycles/iteration from ``llvm-mca -mcpu=<board's>``, MACs/cycle, fraction of the
board's peak) and sums a model estimate (ms, one core and all cores). Next to it: the same
build compiled for this x86 host and timed here (``tvmq.device.connect("local").bench``,
median). Steady-state, cache-blind: compare builds and before/after, not boards' real
latency (``docs/roofline.md``).

    python scripts/roofline_arm.py --label before -o docs/results/roofline_arm_before.json

Writes JSON (``-o``) and prints markdown tables (summary; per kernel unless
``--summary-only``).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

import tvmq
from tvmq import roofline
from tvmq.onnx_tools import export_float, ort_quantize_static, requantize_weights

BOARDS = ["a55", "rpi5", "rasp4b", "rasp3b", "rasp4b-armv7"]
BUILDS = ["int8", "int4", "codebook"]


def _codebook_onnx(name: str, shape, path: Path) -> Path:
    """DGMS K=16 A8 (first/last layers K=256), prepare + calibrate + convert, exported."""
    import torch

    import tvmq.quant as tq

    torch.manual_seed(0)
    cfg = tq.get_preset("dgms_k16_a8")
    model = tvmq.models.create(name).eval()
    tq.quantize_(model, tq.QATConfig(cfg))
    tq.calibrate(model, [torch.randn(2, *shape[1:]) for _ in range(2)], progress=False)
    tq.quantize_(model, tq.QATConfig(cfg, step="convert"))
    return tq.export(model, torch.randn(*shape), path)


def build_onnx(name: str, builds: list[str], workdir: Path) -> dict[str, tuple[Path, dict]]:
    """ONNX file and compile keyword arguments of each build of ``name``."""
    shape = tvmq.models.input_shape(name)
    fp32 = export_float(tvmq.models.create(name).eval(), shape, workdir / f"{name}.onnx")
    qdq = ort_quantize_static(fp32, workdir / f"{name}_qdq.onnx")
    out = {"int8": (qdq, {})}
    if "int4" in builds:
        out["int4"] = (requantize_weights(qdq, workdir / f"{name}_int4.onnx", bits=4), {})
    if "codebook" in builds:
        path = _codebook_onnx(name, shape, workdir / f"{name}_codebook.onnx")
        out["codebook"] = (path, {"input_shapes": {"input": tuple(shape)}})
    return {b: out[b] for b in builds}


def _compile(path: Path, board: str, kwargs: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tvmq.compile(str(path), board=board, **kwargs)


def arm_row(path: Path, kwargs: dict, board: str) -> dict:
    t0 = time.perf_counter()
    try:
        art = _compile(path, board, kwargs)
        res = roofline.analyze(art).to_json()
    except Exception as err:  # noqa: BLE001 - one failed build/board must not stop the rest
        return {"board": board, "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-2000:]}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def host_row(path: Path, kwargs: dict, workdir: Path, tag: str, repeats: int) -> dict:
    """This x86 host's median latency of the same build (tvmq's local bench)."""
    try:
        art = _compile(path, "host", kwargs)
        saved = art.save(workdir / f"art_{tag}")
        with tvmq.device.connect("local") as dev:
            res = dev.bench(saved, number=5, repeat=repeats, warmup=3)
    except Exception as err:  # noqa: BLE001 - reported in the JSON
        return {"error": f"{type(err).__name__}: {err}"}
    return {"median_ms": res.median_ms, "p90_ms": res.p90_ms, "samples": len(res.samples_ms),
            "number": 5, "target": art.meta["board"]["target"]}


def host_info() -> dict:
    flags, model = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx512_vnni", "avx512bw", "avx_vnni", "avx2") if f in flags]
    return {"cpu": model, "isa": isa, "machine": platform.machine(),
            "cpus": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg()}


# ---- markdown ---------------------------------------------------------------------------
def _mix(loop: dict | None) -> str:
    if not loop:
        return "-"
    macs = " + ".join(f"{n} {m}" for m, n in loop["mac_instructions"].items())
    outer = " (outer loop)" if loop.get("nested_loops_left_out") else ""
    return f"{macs} + {loop['other']} other{outer}"


def _f(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _ms(x) -> str:
    return "-" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.3g}"


SUMMARY_HEAD = ("| model | build | board | hottest loop | MACs/cycle | % peak (peak) | "
                "MAC-wtd MACs/cycle | est. ms 1 core | est. ms all cores | MACs covered | "
                "x86 host ms |")


OVER_PEAK = ("\\* above the assumed peak: llvm-mca's model of the core issues this loop's "
             "instructions faster than the peak allows (LLVM 14's Cortex-A55 model: the "
             "by-element sdot .4s two a cycle, the vector form one); see docs/roofline.md")


def _summary_cells(row: dict) -> list[str]:
    s, hot = row["summary"], row["summary"]["hottest_loop"] or {}
    over = "*" if (hot.get("peak_fraction") or 0) > 1 else ""
    return [_mix(hot.get("loop")), _f(hot.get("macs_per_cycle")),
            f"{_f(hot.get('peak_fraction'), '{:.0%}')}{over} ({row['peak_macs_per_cycle']})",
            _f(s["mac_weighted_macs_per_cycle"]), _ms(s["estimate_ms_1core"]),
            _ms(s["estimate_ms_all_cores"]), _f(s["covered_macs_fraction"], "{:.0%}")]


def summary_table(results: list[dict]) -> str:
    lines = [SUMMARY_HEAD, "|---" * 11 + "|"]
    for res in results:
        host = _ms(res["host"].get("median_ms"))
        for row in res["boards"]:
            cells = ([f"error: {row['error'][:80]}"] + [""] * 6 if "error" in row
                     else _summary_cells(row))
            lines.append("| " + " | ".join([res["model"], res["build"], row["board"], *cells,
                                             host]) + " |")
    if any("%* (" in line for line in lines):
        lines += ["", OVER_PEAK]
    return "\n".join(lines)


def kernel_table(res: dict, row: dict) -> str:
    title = (f"### {res['model']} {res['build']} on {row['board']} ({row['mcpu']}, peak "
             f"{row['peak_macs_per_cycle']} MACs/cycle, {row['clock_ghz']} GHz)")
    lines = [title, "",
             "| layer | shape | MACs | loop instructions | cycles/iter | MACs/cycle | % peak |",
             "|---|---|---|---|---|---|---|"]
    for k in row["kernels"]:
        lines.append(f"| {k['spec']['name']} | {k['spec']['shape']} | {k['spec']['macs']:,} | "
                     f"{_mix(k['loop']) if k['loop'] else k['why_not']} | "
                     f"{_f(k['cycles_per_iter'])} | {_f(k['macs_per_cycle'], '{:.2f}')} | "
                     f"{_f(k['peak_fraction'], '{:.0%}')} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--boards", nargs="+", default=BOARDS)
    ap.add_argument("--builds", nargs="+", default=BUILDS, choices=BUILDS)
    ap.add_argument("--label", default="current", help="before | after | any tag")
    ap.add_argument("--repeats", type=int, default=10, help="host bench samples")
    ap.add_argument("--no-host", action="store_true", help="skip the x86 host measurement")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("-o", "--out", default=None, help="JSON path (default: none)")
    ap.add_argument("--from-json", default=None, metavar="PATH",
                    help="print the tables of an earlier run (summaries recomputed from its "
                         "kernel rows; with -o, write it back so): no compiling")
    args = ap.parse_args(argv)
    if args.from_json:
        return _reprint(args)
    roofline.find_llvm_mca()  # fail early, with the install hint
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            for build, (path, kw) in build_onnx(name, args.builds, work).items():
                rows = [arm_row(path, kw, b) for b in args.boards]
                host = {} if args.no_host else host_row(path, kw, work, f"{name}_{build}",
                                                         args.repeats)
                results.append({"model": name, "build": build, "boards": rows, "host": host})
                print(f"{name} {build}: done", flush=True)
    doc = {"label": args.label, "date": datetime.date.today().isoformat(),
           "tvmq_path": str(Path(tvmq.__file__).parent.resolve()),
           "schedules_path": str(Path(importlib.import_module("tvmq.schedules").__file__)
                                 .parent.resolve()),
           "host": host_info(), "assumptions": _assumptions(), "results": results}
    _write_and_print(doc, args)


def _reprint(args) -> None:
    doc = json.loads(Path(args.from_json).read_text())
    for res in doc["results"]:
        res["boards"] = [row if "error" in row else
                         {**row, **roofline.Roofline.from_json(row).to_json()}
                         for row in res["boards"]]
    _write_and_print(doc, args)


def _write_and_print(doc: dict, args) -> None:
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, separators=(",", ":"), default=_json_default))
        print(f"wrote {args.out}")
    print(summary_table(doc["results"]))
    if not args.summary_only:
        for res in doc["results"]:
            for row in res["boards"]:
                if "error" not in row:
                    print("\n" + kernel_table(res, row))


def _assumptions() -> dict:
    return {"peaks_macs_per_cycle": {f"{m} ({k})": v for (m, k), v in roofline.PEAKS.items()},
            "clocks_ghz": roofline.CLOCKS_GHZ,
            "estimate": "sum over integer layers of hot-loop cycles/iteration x (layer MACs / "
                        "MACs per iteration) / clock; steady state, cache-blind (llvm-mca); "
                        "epilogues outside the hot loop, pools, adds, layout transforms and "
                        "float layers are left out; all-cores = 1-core / cores (ideal)"}


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(type(obj).__name__)


if __name__ == "__main__":
    main()
