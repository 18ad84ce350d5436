"""Board registry: plain data, one place.

A board is a TVM target (dict form: CLI target strings are rejected by TVM 0.27), the cross
compiler that links shared objects for it, the RPC key its servers register under and its
core count. Users add their own boards from a JSON or TOML file (``TVMQ_BOARDS`` or
:func:`load_boards_file`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tomllib
from pathlib import Path
from typing import Any

from tvmq.errors import UnknownBoardError, TvmqError


@dataclasses.dataclass(frozen=True)
class Board:
    """One deployment target.

    Parameters
    ----------
    name : str
        Registry key, e.g. ``"rasp4b"``.
    target : dict
        TVM target in dict form, e.g. ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}``.
    cross_compiler : str or None
        Compiler that links the artifact's shared object; ``None`` links with the host's.
    rpc_key : str
        Key the board's RPC servers register under with the tracker.
    cores : int
        Number of cores used by the runtime thread pool.
    arch : str
        ``"x86_64"``, ``"aarch64"`` or ``"armv7"``: the ELF machine the artifact targets.
    notes : str
        Free text shown by ``tvmq boards``.
    """

    name: str
    target: dict[str, Any]
    cross_compiler: str | None
    rpc_key: str
    cores: int
    arch: str
    notes: str = ""

    @property
    def is_cross(self) -> bool:
        return self.cross_compiler is not None

    def tvm_target(self):
        """The :class:`tvm.target.Target` of this board."""
        from tvmq._tvm import tvm

        return tvm.target.Target(dict(self.target))

    def target_features(self) -> dict[str, bool]:
        """The ``feature.*`` flags TVM derives from the target (dotprod, asimd, ...)."""
        attrs = self.tvm_target().attrs
        return {k[len("feature."):]: bool(v) for k, v in attrs.items() if k.startswith("feature.")}


def _host_cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_cpu_name() -> str:
    """This machine's CPU model (``/proc/cpuinfo``'s model name), for benchmark reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _host_board() -> Board:
    from tvm.target import codegen

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = _host_cpu_flags()
    vnni = "avx512_vnni" in flags
    return Board(
        name="host",
        target={"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": cores},
        cross_compiler=None,
        rpc_key="host",
        cores=cores,
        arch=platform.machine(),
        notes="this machine" + (" (AVX-512 VNNI)" if vnni else (" (AVX2)" if "avx2" in flags else "")),
    )


def _arm64(name, mcpu, cores, notes, dotprod=False) -> Board:
    mattr = ["+neon"] + (["+dotprod"] if dotprod else [])
    return Board(
        name=name,
        target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr,
                "num-cores": cores},
        cross_compiler="aarch64-linux-gnu-gcc",
        rpc_key=name,
        cores=cores,
        arch="aarch64",
        notes=notes,
    )


_ARM_BOARDS = [
    _arm64("rasp3b", "cortex-a53", 4, "Raspberry Pi 3B, Cortex-A53 aarch64"),
    _arm64("rasp4b", "cortex-a72", 4, "Raspberry Pi 4B, Cortex-A72 aarch64"),
    Board(
        name="rasp4b-armv7",
        target={"kind": "llvm", "mtriple": "armv7l-linux-gnueabihf", "mcpu": "cortex-a72",
                "mattr": ["+neon"], "mfloat-abi": "hard", "num-cores": 4},
        cross_compiler="arm-linux-gnueabihf-gcc",
        rpc_key="rasp4b-armv7",
        cores=4,
        arch="armv7",
        notes="Raspberry Pi 4B, 32-bit OS (armv7 hard-float)",
    ),
    _arm64("rpi5", "cortex-a76", 4, "Raspberry Pi 5, Cortex-A76 (+dotprod)", dotprod=True),
    _arm64("rk3588", "cortex-a76", 4, "Rockchip RK3588 big cores, Cortex-A76 (+dotprod)",
           dotprod=True),
    _arm64("a55", "cortex-a55", 4, "Cortex-A55 (+dotprod)", dotprod=True),
    _arm64("arm64-emu", "cortex-a72", 2,
           "emulated aarch64 board (qemu-user); latency is emulation, not a Cortex core"),
]

_USER_BOARDS: dict[str, Board] = {}


def _registry() -> dict[str, Board]:
    boards = {"host": _host_board(), **{b.name: b for b in _ARM_BOARDS}}
    env_file = os.environ.get("TVMQ_BOARDS")
    if env_file:
        boards.update(_parse_boards_file(Path(env_file)))
    boards.update(_USER_BOARDS)
    return boards


def list_boards() -> list[Board]:
    """All registered boards, built-in first."""
    return list(_registry().values())


def get_board(name: str | Board) -> Board:
    """Look a board up by name; the error lists the valid names."""
    if isinstance(name, Board):
        return name
    boards = _registry()
    if name not in boards:
        raise UnknownBoardError(
            f"unknown board {name!r}",
            f"use one of {', '.join(boards)} or register yours with TVMQ_BOARDS=boards.toml",
        )
    return boards[name]


def _parse_boards_file(path: Path) -> dict[str, Board]:
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as err:
        raise TvmqError(f"cannot read boards file {path}: {err}",
                        "give a JSON or TOML file with a [boards.NAME] table per board") from err
    out = {}
    for name, spec in data.get("boards", data).items():
        try:
            out[name] = Board(name=name, target=dict(spec["target"]),
                              cross_compiler=spec.get("cross_compiler"),
                              rpc_key=spec.get("rpc_key", name), cores=int(spec.get("cores", 1)),
                              arch=spec.get("arch", "aarch64"), notes=spec.get("notes", ""))
        except (KeyError, TypeError) as err:
            raise TvmqError(f"board {name!r} in {path} is missing {err}",
                            "each board needs at least a 'target' table") from err
    return out


def load_boards_file(path: str | os.PathLike) -> list[Board]:
    """Register the boards of a JSON/TOML file for this process and return them."""
    boards = _parse_boards_file(Path(path))
    _USER_BOARDS.update(boards)
    return list(boards.values())


def ensure_cross_compiler(board: Board) -> str | None:
    """Path of the board's cross compiler, with a clear error when it is missing."""
    if board.cross_compiler is None:
        return None
    found = shutil.which(board.cross_compiler)
    if found is None:
        pkg = {"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
               "arm-linux-gnueabihf-gcc": "gcc-arm-linux-gnueabihf"}.get(board.cross_compiler,
                                                                        board.cross_compiler)
        raise TvmqError(f"cross compiler {board.cross_compiler} for board {board.name!r} not found",
                        f"install it: apt-get install -y {pkg} (or `make cross-compilers`)")
    return found
