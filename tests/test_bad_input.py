"""Bad input gets one line and exit code 2, never a traceback, and nothing is written (issue 24).

CLI cases run ``python -m tvmq.cli`` in a subprocess inside a scratch directory and assert:
exit code 2, exactly one line on stderr naming the problem and a fix, and no new file in the
scratch directory. Python API cases assert the :class:`tvmq.errors.TvmqError` subclass and
its message. The case list with before/after behaviour is in ``docs/reliability.md``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvmq import errors

pytestmark = pytest.mark.build

_F = TensorProto.FLOAT
_vi = helper.make_tensor_value_info


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _relu():
    return _model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                  [_vi("x", _F, [1, 4])], [_vi("y", _F, [1, 4])])


def _unique():
    return _model([helper.make_node("Unique", ["x"], ["y"], name="uniq")],
                  [_vi("x", _F, [4])], [_vi("y", _F, None)])


def _qlinearconv_runtime_scales():
    """QLinearConv whose scales and zero points are graph inputs, not initializers."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "wq")
    node = helper.make_node("QLinearConv", ["x", "s", "z", "wq", "ws", "wz", "s", "z"], ["c"],
                            name="qconv")
    return _model([node], [_vi("x", TensorProto.UINT8, [1, 3, 8, 8]), _vi("s", _F, []),
                           _vi("z", TensorProto.UINT8, []), _vi("ws", _F, [4]),
                           _vi("wz", TensorProto.INT8, [4])],
                  [_vi("c", TensorProto.UINT8, [1, 4, 6, 6])], [w])


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A host artifact of a [1, 4] ReLU and variants with a broken lib.so."""
    import tvmq

    root = tmp_path_factory.mktemp("arts")
    good = tvmq.compile(_relu()).save(root / "good")
    for name in ("empty", "random", "other_arch"):
        shutil.copytree(good, root / name)
    (root / "empty" / "lib.so").write_bytes(b"")
    (root / "random" / "lib.so").write_bytes(os.urandom(4096))
    # an aarch64 library under an x86_64 meta.json whose size and hash do match it
    lib = bytearray((good / "lib.so").read_bytes())
    lib[18:20] = (183).to_bytes(2, "little")  # ELF e_machine = EM_AARCH64
    (root / "other_arch" / "lib.so").write_bytes(bytes(lib))
    meta = json.loads((good / "meta.json").read_text())
    from tvmq.artifact import _sha256

    meta["lib_sha256"] = _sha256(root / "other_arch" / "lib.so")
    (root / "other_arch" / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def full_disk(tmp_path):
    """A 16 KiB tmpfs filled to the last byte (needs root: mount)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        with open(mnt / "fill", "wb") as f:
            try:
                f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _inputs(work: Path) -> None:
    onnx.save(_relu(), work / "relu.onnx")
    onnx.save(_unique(), work / "unique.onnx")
    onnx.save(_qlinearconv_runtime_scales(), work / "qconv.onnx")
    np.save(work / "x.npy", np.ones((1, 4), np.float32))
    np.save(work / "nan.npy", np.array([[1, np.nan, np.inf, 0]], np.float32))
    np.save(work / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (work / "garbage.npy").write_bytes(os.urandom(256))
    import ml_dtypes

    np.save(work / "int4.npy", np.array([[1, -2, 3, -8]], dtype=ml_dtypes.int4))
    (work / "a_file").write_text("keep me")
    (work / "a_dir").mkdir()


#: id -> (argv, substring of the error line); ``{art}`` is the artifact root, ``{full}`` a full disk
CLI_CASES = {
    "onnx_unique": (["compile", "unique.onnx", "-o", "out"], "data-dependent shape"),
    "output_is_file": (["compile", "relu.onnx", "-o", "a_file"], "is a file"),
    "compile_full_disk": (["compile", "relu.onnx", "-o", "{full}/out"], "no space left"),
    "npy_objects": (["run", "{art}/good", "--input", "objects.npy"], "holds Python objects"),
    "npy_garbage": (["run", "{art}/good", "--input", "garbage.npy"], "is not a .npy file"),
    "npy_int4": (["run", "{art}/good", "--input", "int4.npy"], "ml_dtypes int4"),
    "lib_other_arch": (["run", "{art}/other_arch", "--input", "x.npy"], "library for aarch64"),
    "lib_empty": (["run", "{art}/empty", "--input", "x.npy"], "not the library meta.json"),
    "lib_random": (["run", "{art}/random", "--input", "x.npy"], "not the library meta.json"),
    "output_is_dir": (["run", "{art}/good", "--input", "x.npy", "--output", "a_dir"],
                      "is a directory"),
    "run_full_disk": (["run", "{art}/good", "--input", "x.npy", "--output", "{full}/y.npy"],
                      "no space left"),
    "nan_check_inputs": (["run", "{art}/good", "--input", "nan.npy", "--check-inputs"],
                         "NaN or infinity"),
    "quantize_negative_epochs": (["quantize", "digits_cnn", "--epochs", "-3"], "--epochs -3"),
    "quantize_nan_lr": (["quantize", "digits_cnn", "--lr", "nan"], "--lr nan"),
    "qparams_runtime_inputs": (["compile", "qconv.onnx", "-o", "out"], "graph inputs"),
    "compile_db_not_a_database": (["compile", "relu.onnx", "-o", "out", "--db", "a_dir"],
                                  "is not a tuning database"),
    # tune parses zoo:NAME as compile does; a tune that fails leaves no database behind
    "tune_unknown_zoo": (["tune", "zoo:nope", "--db", "newdb"], "unknown zoo model"),
    "tune_failing_model_leaves_no_db": (["tune", "unique.onnx", "--db", "newdb"],
                                        "data-dependent shape"),
}


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1
            for p in root.rglob("*")}


def _tvmq(argv, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tvmq.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input_one_line_exit_2(case, art, tmp_path, request):
    argv, match = CLI_CASES[case]
    full = request.getfixturevalue("full_disk") if any("{full}" in a for a in argv) else None
    work = tmp_path / "work"
    work.mkdir()
    _inputs(work)
    argv = [a.format(art=art, full=full) for a in argv]
    before, full_before = _listing(work), full and _listing(full)
    proc = _tvmq(argv, work)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(err) == 1, proc.stderr[-3000:]
    assert match in err[0] and "(fix: " in err[0], err[0]
    assert _listing(work) == before, "something was written"
    if full:
        assert _listing(full) == full_before, "something was left on the full disk"
    assert (work / "a_file").read_text() == "keep me"


def test_nan_input_warns_one_line(art, tmp_path):
    _inputs(tmp_path)
    proc = _tvmq(["run", str(art / "good"), "--input", "nan.npy"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and "NaN or infinity" in err[0], err


def test_scalar_input_runs(tmp_path):
    """A two-input Mul with a 0-d input: the VM rejected the 1-d copy ascontiguousarray made."""
    import tvmq

    model = _model([helper.make_node("Mul", ["x", "s"], ["y"])],
                   [_vi("x", _F, [1, 4]), _vi("s", _F, [])], [_vi("y", _F, [1, 4])])
    art = tvmq.compile(model)
    (y,) = art.run([np.arange(4, dtype=np.float32)[None], np.float32(2.0)])
    np.testing.assert_array_equal(y, [[0, 2, 4, 6]])
    with pytest.raises(errors.InputMismatchError, match=r"shape \[1\], expected \[\]"):
        art.run([np.ones((1, 4), np.float32), np.ones(1, np.float32)])


def test_int4_ml_dtypes_input_widened():
    """An ml_dtypes int4 array for a sub-byte ONNX input runs in its int8 container."""
    import ml_dtypes

    import tvmq

    model = _model([helper.make_node("DequantizeLinear", ["q", "s"], ["y"])],
                   [_vi("q", TensorProto.INT4, [1, 4])], [_vi("y", _F, [1, 4])],
                   [numpy_helper.from_array(np.float32(0.5), "s")], opset=21)
    art = tvmq.compile(model)
    x = np.array([[1, -2, 3, -8]], dtype=ml_dtypes.int4)
    (y,) = art.run({"q": x})
    np.testing.assert_array_equal(y, [[0.5, -1.0, 1.5, -4.0]])


@pytest.mark.parametrize("bits, fixed", [(float("nan"), 8), (float("inf"), 8), ("4", 4),
                                         (4.0, 4), (True, 8), (12, 8), (None, 8)])
def test_quantspec_bad_bits(bits, fixed):
    from tvmq.quant import QuantSpec

    with pytest.raises(errors.ConfigError, match=rf"use QuantSpec\(bits={fixed}\)"):
        QuantSpec(bits=bits)


def test_override_of_missing_layer_shows_corrected_call():
    import tvmq.quant as tq
    from tvmq import models

    model = models.create("digits_cnn")
    with pytest.raises(errors.ConfigError) as info:
        tq.quantize_(model, tq.QATConfig(tq.get_preset("w8a8"), overrides={"feature.3": None}))
    assert "use overrides={'features.3': None}" in str(info.value), info.value


def test_torch_example_of_wrong_shape_names_the_input():
    import torch

    import tvmq
    from tvmq import models

    with pytest.raises(errors.InputMismatchError, match=r"shape \[1, 3, 32, 32\]") as info:
        tvmq.compile(models.create("digits_cnn"), example_inputs=torch.randn(1, 3, 32, 32))
    assert "traceable" not in str(info.value)



def test_info_reports_an_unusable_library(art, tmp_path):
    """``tvmq info`` still describes an artifact whose lib.so is broken, and says so."""
    proc = _tvmq(["info", str(art / "empty")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("library"))
    assert "UNUSABLE" in line and "0 bytes" in line, line
