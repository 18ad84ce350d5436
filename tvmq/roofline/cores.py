"""Board side of the roofline: each core's int8 peak and clock, and llvm-mca's model of it."""
from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence

from tvmq.boards import Board
from tvmq.errors import TvmqError

MCA_INSTALL = "apt-get install -y llvm-14 (provides /usr/bin/llvm-mca-14), or `make llvm-mca`"

#: int8 MACs per cycle of one core, by (mcpu, "dot" when the target has +dotprod else
#: "neon"). Each is the best int8 instruction's throughput x its MACs, as the vendors'
#: optimization guides give it and LLVM 14's scheduling models agree (measured: 16
#: independent instructions under llvm-mca run at 1 per cycle, 2 for sdot on the A76):
#: A55: one 128-bit sdot per cycle (16 MACs); A76: two sdot pipes (V0, V1) = 32;
#: A72: integer multiplies on one 128-bit pipe (F0), smull/smlal .8h = 8 products a cycle;
#: A53: assumed as the A72 (one smull/smlal .8h a cycle, as LLVM's A53 model has it; the
#: A53's 64-bit NEON datapath may halve that on silicon: no ARM guide to check against).
#: The armv7 build of a Pi 4 runs on the same A72 pipes (vmull.s8 = 8 a cycle).
PEAKS: dict[tuple[str, str], int] = {
    ("cortex-a55", "dot"): 16,
    ("cortex-a76", "dot"): 32,
    ("cortex-a72", "neon"): 8,
    ("cortex-a53", "neon"): 8,
}

#: Clock (GHz) of each board's cores: Pi 3B A53 1.2; Pi 4B A72 1.5 (the launch firmware;
#: boards from 2020 on run 1.8 GHz: estimates on those are 1.2x faster); Pi 5 and RK3588
#: big cores A76 2.4; "a55" is a generic Cortex-A55 board: a typical 1.8 GHz (RK3566/RK3568,
#: Amlogic S905X3 range 1.8-2.0). The emulated board is priced as a Pi 4.
CLOCKS_GHZ: dict[str, float] = {
    "rasp3b": 1.2, "rasp4b": 1.5, "rasp4b-armv7": 1.5, "rpi5": 2.4, "rk3588": 2.4,
    "a55": 1.8, "arm64-emu": 1.5,
}

_TRIPLES = {"aarch64": "aarch64-linux-gnu", "armv7": "armv7-linux-gnueabihf"}



class RooflineError(TvmqError):
    """The roofline cannot be computed: wrong board, missing llvm-mca, no integer kernel."""



def board_peak(board: Board) -> int:
    """int8 MACs per cycle of one core of ``board`` (:data:`PEAKS`)."""
    kind = "dot" if board.target_features().get("has_dotprod") else "neon"
    mcpu = board.target.get("mcpu", "generic")
    if (mcpu, kind) not in PEAKS:
        raise RooflineError(f"no peak known for {mcpu} ({kind}) of board {board.name!r}",
                            "add it to tvmq.roofline.PEAKS with its source")
    return PEAKS[(mcpu, kind)]


def check_board(board: Board) -> None:
    if board.arch not in _TRIPLES:
        raise RooflineError(f"board {board.name!r} is {board.arch}: the roofline covers ARM "
                            "boards (aarch64, armv7)",
                            "compile for one of a55, rpi5, rasp4b, rasp3b, rasp4b-armv7")
    if board.name not in CLOCKS_GHZ:
        raise RooflineError(f"no clock known for board {board.name!r}",
                            "add it to tvmq.roofline.CLOCKS_GHZ")


# ---- llvm-mca ---------------------------------------------------------------------------
def find_llvm_mca() -> str:
    """Path of ``llvm-mca`` (or ``llvm-mca-14``); a :class:`RooflineError` says how to
    install it when neither is on ``PATH``."""
    for name in ("llvm-mca", "llvm-mca-14", "/usr/lib/llvm-14/bin/llvm-mca"):
        found = shutil.which(name)
        if found:
            return found
    raise RooflineError("llvm-mca not found on PATH", MCA_INSTALL)


def _mca_args(board: Board, iterations: int) -> list[str]:
    args = [f"-mtriple={_TRIPLES[board.arch]}", f"-mcpu={board.target.get('mcpu', 'generic')}",
            f"-iterations={iterations}"]
    mattr = board.target.get("mattr")
    if mattr:
        args.append("-mattr=" + ",".join(mattr))
    return args


def mca_cycles(instructions: Sequence[str], board: Board, iterations: int = 100,
               mca: str | None = None) -> dict[str, float]:
    """llvm-mca's steady state of a loop body on the board's core.

    Returns
    -------
    dict
        ``cycles_per_iter`` (Total Cycles / iterations), ``block_rthroughput``, ``ipc``.
    """
    cmd = [mca or find_llvm_mca(), *_mca_args(board, iterations)]
    src = "\n".join(instructions) + "\n"
    proc = subprocess.run(cmd, input=src, capture_output=True, text=True, timeout=120,
                          check=False)
    total = re.search(r"Total Cycles:\s+(\d+)", proc.stdout)
    if proc.returncode != 0 or total is None:
        raise RooflineError(f"llvm-mca failed on a loop of {len(instructions)} instructions: "
                            f"{proc.stderr.strip()[-500:]}",
                            f"check the board's mcpu/mattr ({' '.join(cmd[1:])})")
    rthr = re.search(r"Block RThroughput:\s+([\d.]+)", proc.stdout)
    ipc = re.search(r"IPC:\s+([\d.]+)", proc.stdout)
    return {"cycles_per_iter": int(total.group(1)) / iterations,
            "block_rthroughput": float(rthr.group(1)) if rthr else None,
            "ipc": float(ipc.group(1)) if ipc else None}


def mca_version(mca: str | None = None) -> str:
    """``llvm-mca --version``'s LLVM version line."""
    out = subprocess.run([mca or find_llvm_mca(), "--version"], capture_output=True,
                         text=True, check=False)
    found = re.search(r"LLVM version ([\w.]+)", out.stdout)
    return found.group(1) if found else out.stdout.strip()[:60]
