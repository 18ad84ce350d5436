"""Board registry and cross compilation."""
from __future__ import annotations

import json

import pytest
import torch

import tvmq
from tvmq import models
from tvmq.boards import get_board, list_boards, load_boards_file

_ELF_MACHINE = {"aarch64": 183, "armv7": 40, "x86_64": 62}


def _elf_machine(path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


def test_registry_has_required_boards():
    names = {b.name for b in list_boards()}
    assert {"host", "rasp3b", "rasp4b", "rasp4b-armv7", "rpi5", "rk3588", "a55",
            "arm64-emu"} <= names


def test_dotprod_boards_have_the_feature():
    assert get_board("rpi5").target_features()["has_dotprod"]
    assert not get_board("rasp4b").target_features()["has_dotprod"]


def test_unknown_board_lists_valid_names():
    with pytest.raises(tvmq.TvmqError, match="rasp4b"):
        get_board("raspberry")


def test_user_boards_file(tmp_path):
    spec = {"boards": {"myboard": {"target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                              "mcpu": "cortex-a53"},
                                   "cross_compiler": "aarch64-linux-gnu-gcc", "cores": 4}}}
    path = tmp_path / "boards.json"
    path.write_text(json.dumps(spec))
    (board,) = load_boards_file(path)
    assert get_board("myboard") == board and board.arch == "aarch64"


@pytest.mark.build
@pytest.mark.parametrize("board", ["rasp4b", "rasp4b-armv7"])
def test_cross_compile_is_arm_elf(board, tmp_path):
    art = tvmq.compile(models.create("digits_cnn"), torch.randn(1, 1, 8, 8), board=board)
    path = art.save(tmp_path / board)
    arch = get_board(board).arch
    assert _elf_machine(path / "lib.so") == _ELF_MACHINE[arch]
    with pytest.raises(tvmq.TvmqError, match="built for"):
        tvmq.load(path).run(torch.randn(1, 1, 8, 8).numpy())
