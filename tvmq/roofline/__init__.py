"""Static roofline of a compiled model's integer kernels on an ARM board (no board needed).

For each integer layer of an artifact compiled for an ARM board, the layer's kernel function
is read from the LLVM module's assembly (the ``*_compute_`` function plus the parallel
lambdas it launches), its innermost loops are found (a backward branch to a label above it),
and the loop with the most multiply-accumulates per iteration is taken as the kernel's hot
loop. Its MACs per iteration come from the instructions (``sdot`` .4s = 16, ``smull`` .8h =
8, ...); ``llvm-mca`` with the board's ``-mcpu`` gives its cycles per iteration. Then:

* MACs/cycle = MACs per iteration / cycles per iteration, and its fraction of the board's
  peak (:data:`PEAKS`);
* trip count = the layer's MACs / MACs per iteration, so the layer's estimate is
  cycles/iteration x trip count / clock (:data:`CLOCKS_GHZ`);
* the model estimate sums the integer layers, on one core and divided by the board's cores
  (ideal scaling).

What this is not: llvm-mca is a steady-state, cache-blind model (every load hits L1; no
memory bandwidth, no TLB, no branch mispredicts, no loop overhead outside the hot loop, no
thread start-up), and the estimate leaves out everything that is not an integer kernel's hot
loop (requantization epilogues when outside it, pools, adds, layout transforms, float
layers). It compares schedules (before/after) and boards; ``tvmq bench --device`` on a real
board stays the ground truth.

>>> art = tvmq.compile("resnet18_qdq.onnx", board="rasp4b")
>>> r = tvmq.roofline.analyze(art)
>>> r.estimate_ms, r.kernels[0].macs_per_cycle
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable
from typing import Any

from tvmq.boards import Board, get_board
from tvmq.roofline.asm import Loop, count_macs, hottest_loop, narrow_registers, split_functions
from tvmq.roofline.cores import (
    CLOCKS_GHZ,
    MCA_INSTALL,
    PEAKS,
    RooflineError,
    board_peak,
    check_board,
    find_llvm_mca,
    mca_cycles,
    mca_version,
)

__all__ = ["CLOCKS_GHZ", "MCA_INSTALL", "PEAKS", "KernelRoofline", "KernelSpec", "Loop",
           "Roofline", "RooflineError", "analyze", "analyze_asm", "board_peak", "count_macs",
           "find_llvm_mca", "hottest_loop", "mca_cycles", "mca_version", "narrow_registers",
           "split_functions"]


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One integer layer: its name, compiled function, MACs and a shape description."""

    name: str
    function: str
    macs: int
    shape: str = ""


@dataclasses.dataclass
class KernelRoofline:
    """One layer's hot loop on the board (``loop`` is ``None`` when none was found)."""

    spec: KernelSpec
    loop: dict[str, Any] | None
    macs_per_iter: int = 0
    cycles_per_iter: float | None = None
    block_rthroughput: float | None = None
    macs_per_cycle: float | None = None
    peak_fraction: float | None = None
    trip_count: float | None = None
    cycles: float | None = None
    why_not: str | None = None


@dataclasses.dataclass
class Roofline:
    """The static roofline of one compiled model on one board."""

    board: str
    mcpu: str
    arch: str
    peak_macs_per_cycle: int
    clock_ghz: float
    cores: int
    llvm_mca: str
    kernels: list[KernelRoofline]
    total_macs: int

    @property
    def covered(self) -> list[KernelRoofline]:
        return [k for k in self.kernels if k.cycles is not None]

    @property
    def covered_macs_fraction(self) -> float:
        """MACs of the layers whose hot loop was priced / MACs of all compute layers."""
        return sum(k.spec.macs for k in self.covered) / self.total_macs if self.total_macs else 0

    @property
    def cycles(self) -> float:
        return sum(k.cycles for k in self.covered)

    @property
    def estimate_ms(self) -> float:
        """Σ hot-loop cycles x trip count / clock, one core (ms)."""
        return self.cycles / (self.clock_ghz * 1e6)

    @property
    def estimate_ms_all_cores(self) -> float:
        """:attr:`estimate_ms` / cores: ideal scaling, no thread overhead (ms)."""
        return self.estimate_ms / self.cores

    @property
    def mac_weighted_macs_per_cycle(self) -> float | None:
        """Σ MACs_i x (MACs/cycle)_i / Σ MACs_i over the priced layers."""
        covered = self.covered
        macs = sum(k.spec.macs for k in covered)
        return sum(k.spec.macs * k.macs_per_cycle for k in covered) / macs if macs else None

    @property
    def effective_macs_per_cycle(self) -> float | None:
        """Σ MACs / Σ cycles over the priced layers (the time-weighted mean)."""
        return sum(k.spec.macs for k in self.covered) / self.cycles if self.covered else None

    @property
    def hottest_loop(self) -> dict[str, Any] | None:
        """The loop the model spends the most estimated cycles in.

        Layers whose hot loops have the same MAC instructions (e.g. 144 ``sdot``) run the
        same loop, give or take register allocation; the family with the most cycles wins,
        and its variant (same instruction count and cycles) with the most cycles stands for
        it: its loop, MACs/cycle and fraction of peak, with the family's layers, MACs/cycle
        (Σ MACs / Σ cycles) and share of the model's cycles.
        """
        families: dict[tuple, list[KernelRoofline]] = collections.defaultdict(list)
        for k in self.covered:
            families[tuple(k.loop["mac_instructions"].items())].append(k)
        if not families:
            return None
        family = max(families.values(), key=_cycles)
        variants: dict[tuple, list[KernelRoofline]] = collections.defaultdict(list)
        for k in family:
            variants[(k.loop["total"], round(k.cycles_per_iter, 1))].append(k)
        top = max(variants.values(), key=_cycles)[0]
        return {"loop": top.loop, "function": top.spec.function,
                "macs_per_iter": top.macs_per_iter, "cycles_per_iter": top.cycles_per_iter,
                "macs_per_cycle": top.macs_per_cycle, "peak_fraction": top.peak_fraction,
                "layers": [k.spec.name for k in family],
                "family_macs_per_cycle": sum(k.spec.macs for k in family) / _cycles(family),
                "cycles_share": _cycles(family) / self.cycles}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Roofline:
        """Rebuild from :meth:`to_json` (its summary is recomputed from the kernels)."""
        kernels = [KernelRoofline(**{**k, "spec": KernelSpec(**k["spec"])})
                   for k in data["kernels"]]
        fields = {f.name for f in dataclasses.fields(cls)} - {"kernels", "total_macs"}
        return cls(**{f: data[f] for f in fields}, kernels=kernels,
                   total_macs=data["summary"]["total_macs"])

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict: the board's assumptions, every kernel and the model summary."""
        return {
            "board": self.board, "mcpu": self.mcpu, "arch": self.arch,
            "peak_macs_per_cycle": self.peak_macs_per_cycle, "clock_ghz": self.clock_ghz,
            "cores": self.cores, "llvm_mca": self.llvm_mca,
            "summary": {
                "hottest_loop": self.hottest_loop,
                "mac_weighted_macs_per_cycle": self.mac_weighted_macs_per_cycle,
                "effective_macs_per_cycle": self.effective_macs_per_cycle,
                "estimate_ms_1core": self.estimate_ms,
                "estimate_ms_all_cores": self.estimate_ms_all_cores,
                "covered_macs_fraction": self.covered_macs_fraction,
                "total_macs": self.total_macs,
            },
            "kernels": [dataclasses.asdict(k) for k in self.kernels],
        }


def _cycles(rows: list[KernelRoofline]) -> float:
    return sum(k.cycles for k in rows)


def _price(spec: KernelSpec, loop: Loop | None, mca: dict | None, peak: int) -> KernelRoofline:
    if loop is None:
        return KernelRoofline(spec, None, why_not=f"no multiplying loop in {spec.function}")
    cyc = mca["cycles_per_iter"]
    mpc = loop.macs / cyc
    trips = spec.macs / loop.macs
    return KernelRoofline(spec, {"function": loop.function, "label": loop.label,
                                 **loop.summary()},
                          macs_per_iter=loop.macs, cycles_per_iter=cyc,
                          block_rthroughput=mca["block_rthroughput"], macs_per_cycle=mpc,
                          peak_fraction=mpc / peak, trip_count=trips, cycles=cyc * trips)


def analyze_asm(asm: str, board: str | Board, kernels: Iterable[KernelSpec],
                total_macs: int | None = None, iterations: int = 100) -> Roofline:
    """The roofline of ``kernels`` in the assembly ``asm`` built for ``board``.

    Parameters
    ----------
    asm : str
        The LLVM module's assembly (``inspect_source("asm")``).
    board : str or Board
        An aarch64 or armv7 board of the registry.
    kernels : iterable of KernelSpec
        The integer layers: name, compiled function, MACs.
    total_macs : int, optional
        MACs of every compute layer (integer or not), for the coverage; default: the
        kernels' sum.
    iterations : int
        llvm-mca ``-iterations``.
    """
    board = get_board(board)
    check_board(board)
    kernels = list(kernels)
    if not kernels:
        raise RooflineError("no integer kernel to analyze",
                            "quantize the model (tvmq.quantize_ or a QDQ ONNX file) first")
    peak, mca = board_peak(board), find_llvm_mca()
    funcs = split_functions(asm)
    loops: dict[str, tuple[Loop | None, dict | None]] = {}
    rows = []
    for spec in kernels:
        if spec.function not in loops:
            loop = hottest_loop(funcs, spec.function, board.arch)
            cyc = mca_cycles(loop.instructions, board, iterations, mca) if loop else None
            loops[spec.function] = (loop, cyc)
        rows.append(_price(spec, *loops[spec.function], peak))
    if not any(r.cycles is not None for r in rows):
        raise RooflineError(f"no integer kernel loop found in the {board.name} assembly "
                            f"({len(rows)} layers)",
                            "check that the artifact was compiled for this board")
    return Roofline(board.name, board.target.get("mcpu", "generic"), board.arch, peak,
                    CLOCKS_GHZ[board.name], board.cores, mca_version(mca), rows,
                    total_macs if total_macs is not None else sum(k.macs for k in kernels))


def _shape(layer: dict) -> str:
    out = "x".join(map(str, layer.get("out_shape") or []))
    w = "x".join(map(str, layer.get("weight_shape") or []))
    return f"out {out}, w {w}" + (f", w{layer['weight_bits']}" if layer.get("weight_bits")
                                  not in (None, 8, 32) else "")


def analyze(artifact, board: str | Board | None = None, iterations: int = 100) -> Roofline:
    """The static roofline of a compiled artifact's integer layers.

    Parameters
    ----------
    artifact : tvmq.Artifact
        As returned by ``tvmq.compile(..., board=...)`` (it holds the LLVM module; an
        artifact loaded from disk holds only the linked library).
    board : str or Board, optional
        Default: the board the artifact was compiled for.
    iterations : int
        llvm-mca ``-iterations``.

    Returns
    -------
    Roofline
        Per layer: hot loop, cycles/iteration, MACs/cycle, fraction of peak; per model:
        the estimate (ms, one core and all cores) and the fraction of MACs covered.
    """
    board = get_board(board or artifact.meta["board"]["name"])
    check_board(board)
    if artifact.meta["board"]["name"] != board.name:
        raise RooflineError(f"artifact compiled for {artifact.meta['board']['name']!r}, "
                            f"not {board.name!r}", f"tvmq.compile(..., board={board.name!r})")
    if getattr(artifact, "executable", None) is None:
        raise RooflineError("this artifact has no LLVM module (loaded from disk)",
                            "pass the Artifact that tvmq.compile(..., board=...) returns")
    asm = artifact.executable.mod.imports[0].inspect_source("asm")
    layers = artifact.meta["layers"]
    specs = [KernelSpec(lay["name"], lay["primfunc"], int(lay["macs"]), _shape(lay))
             for lay in layers if lay.get("integer") and lay.get("primfunc")]
    return analyze_asm(asm, board, specs, sum(int(lay["macs"]) for lay in layers), iterations)
