"""Artifact save/load round trip, atomic writes, input validation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tvmq
from tvmq import models
from tvmq.device.remote import connect
from tvmq.errors import ArtifactError, InputMismatchError

pytestmark = pytest.mark.build


@pytest.fixture(scope="module")
def digits_artifact():
    return tvmq.compile(models.create("digits_cnn"), torch.randn(1, 1, 8, 8))


def test_round_trip(digits_artifact, tmp_path, rng):
    x = rng.standard_normal((1, 1, 8, 8)).astype("float32")
    path = digits_artifact.save(tmp_path / "art")
    loaded = tvmq.load(path)
    np.testing.assert_array_equal(loaded.run(x)[0], digits_artifact.run(x)[0])
    meta = json.loads((path / "meta.json").read_text())
    assert meta["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert meta["board"]["name"] == "host" and meta["tvm_version"].startswith("0.27")
    assert meta["sizes"]["lib_bytes"] == (path / "lib.so").stat().st_size
    assert any(layer["op"] == "conv2d" and layer["macs"] > 0 for layer in meta["layers"])


def test_plain_tvm_runtime_loads_it(digits_artifact, tmp_path, rng):
    """The deployment path needs only the TVM runtime, never tvmq."""
    import tvm
    from tvm import relax

    x = rng.standard_normal((1, 1, 8, 8)).astype("float32")
    path = digits_artifact.save(tmp_path / "art")
    lib = tvm.runtime.load_module(str(path / "lib.so"))
    out = relax.VirtualMachine(lib, tvm.cpu())["main"](tvm.runtime.tensor(x))
    out = out[0] if not hasattr(out, "numpy") else out
    np.testing.assert_array_equal(out.numpy(), digits_artifact.run(x)[0])


def test_artifact_saved_over_a_loaded_one_runs_the_new_code(digits_artifact, tmp_path, rng):
    """dlopen returns the library it already has for a path: a second artifact saved to the
    same directory and loaded in the same process must still run its own code."""
    x = rng.standard_normal((1, 1, 8, 8)).astype("float32")
    other = tvmq.compile(models.create("digits_cnn", seed=1), torch.randn(1, 1, 8, 8))
    first = tvmq.load(digits_artifact.save(tmp_path / "art")).run(x)[0]
    second = tvmq.load(other.save(tmp_path / "art")).run(x)[0]
    assert not np.allclose(first, second), "the two models must differ for this test to mean anything"
    np.testing.assert_array_equal(second, other.run(x)[0])
    np.testing.assert_array_equal(tvmq.load(tmp_path / "art").run(x)[0], second)


def test_overwrite_is_atomic(digits_artifact, tmp_path, monkeypatch):
    path = digits_artifact.save(tmp_path / "art")
    before = (path / "lib.so").read_bytes()

    def boom(self, dest):
        dest.write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(digits_artifact), "_export_library", boom)
    with pytest.raises(ArtifactError, match="disk full"):
        digits_artifact.save(path)
    assert (path / "lib.so").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"], "temp dir left behind"


def test_refuses_to_clobber_foreign_dir(digits_artifact, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a tvmq artifact"):
        digits_artifact.save(tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "keep me"


def test_unwritable_output(digits_artifact, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ArtifactError, match="cannot write"):
        digits_artifact.save(blocker / "art")


@pytest.mark.parametrize("bad,match", [
    (np.zeros((1, 1, 9, 9), "float32"), "shape"),
    (np.zeros((1, 1, 8, 8), "float64"), "dtype"),
    ([np.zeros((1, 1, 8, 8), "float32")] * 2, "expected 1 input"),
])
def test_input_mismatch(digits_artifact, bad, match):
    with pytest.raises(InputMismatchError, match=match):
        digits_artifact.run(bad)


def test_load_rejects_non_artifacts(tmp_path):
    with pytest.raises(ArtifactError, match="not a tvmq artifact"):
        tvmq.load(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    (tmp_path / "lib.so").write_bytes(b"")
    with pytest.raises(ArtifactError, match="corrupt"):
        tvmq.load(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "replace", "empty"])
def test_damaged_library_is_refused_before_dlopen(digits_artifact, tmp_path, rng, damage):
    """dlopen of a truncated library dies with SIGBUS: the size and hash recorded at save
    time are checked first."""
    path = digits_artifact.save(tmp_path / "art")
    lib = path / "lib.so"
    data = lib.read_bytes()
    if damage == "truncate":
        lib.write_bytes(data[: len(data) // 2])
    elif damage == "replace":
        lib.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        lib.write_bytes(b"")
    with pytest.raises(ArtifactError, match="not the library meta.json describes"):
        tvmq.load(path).run(rng.standard_normal((1, 1, 8, 8)).astype("float32"))
    with pytest.raises(ArtifactError, match="not the library meta.json describes"):
        connect("local").bench(tvmq.load(path), number=1, repeat=1)


def test_meta_from_another_tvm_or_missing_keys(digits_artifact, tmp_path):
    path = digits_artifact.save(tmp_path / "art")
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "tvm_version": "0.19.0"}))
    with pytest.raises(ArtifactError, match="built with TVM 0.19.0"):
        tvmq.load(path).run(np.zeros((1, 1, 8, 8), "float32"))
    del meta["outputs"], meta["board"]["arch"]
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="lacks outputs, board.arch"):
        tvmq.load(path)
