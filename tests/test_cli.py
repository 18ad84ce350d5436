"""The ``tvmq`` CLI: happy paths and bad input (one-line error, exit code 2, nothing written)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tvmq.cli import main

pytestmark = pytest.mark.build


def _tiny_onnx(path, op="Relu", domain=""):
    node = helper.make_node(op, ["x"], ["y"], name="the_node", domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _fails(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert match in err and "fix:" in err, err
    return err


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "art"
    assert main(["compile", "zoo:digits_cnn", "-o", str(out)]) == 0
    return out


def test_compile_run_info(compiled, tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(compiled), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy")]) == 0
    assert np.load(tmp_path / "y.npy").shape == (1, 10)
    assert main(["info", str(compiled)]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "host" in out


def test_onnx_compile_with_dump(tmp_path):
    model = _tiny_onnx(tmp_path / "relu.onnx")
    assert main(["compile", str(model), "-o", str(tmp_path / "a"),
                 "--dump-ir", str(tmp_path / "ir")]) == 0
    dumped = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert dumped[0] == "00-input.py" and "01-canonicalize.py" in dumped


def test_boards(capsys):
    assert main(["boards"]) == 0
    assert "rasp4b-armv7" in capsys.readouterr().out


def test_missing_model(tmp_path, capsys):
    _fails(capsys, ["compile", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "a")],
           "not found")
    assert not (tmp_path / "a").exists()


def test_corrupt_model(tmp_path, capsys):
    good = _tiny_onnx(tmp_path / "m.onnx").read_bytes()
    (tmp_path / "bad.onnx").write_bytes(good[: len(good) // 2])
    _fails(capsys, ["compile", str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "a")],
           "not a valid ONNX file")
    assert not (tmp_path / "a").exists()


def test_unsupported_op_named_with_node(tmp_path, capsys):
    model = _tiny_onnx(tmp_path / "m.onnx", op="FancyOp", domain="")
    err = _fails(capsys, ["compile", str(model), "-o", str(tmp_path / "a")], "FancyOp")
    assert "the_node" in err


def test_unknown_board(tmp_path, capsys):
    err = _fails(capsys, ["compile", "zoo:digits_cnn", "-o", str(tmp_path / "a"),
                          "--board", "pi4"], "unknown board")
    assert "rasp4b" in err


def test_run_shape_mismatch(compiled, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), "float32"))
    _fails(capsys, ["run", str(compiled), "--input", str(tmp_path / "x.npy"),
                    "--output", str(tmp_path / "y.npy")], "shape")
    assert not (tmp_path / "y.npy").exists()


def test_unwritable_output(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    _fails(capsys, ["compile", "zoo:digits_cnn", "-o", str(tmp_path / "file" / "a")],
           "cannot write")


def test_console_script_exit_code(tmp_path):
    """The installed entry point prints one line and exits 2."""
    proc = subprocess.run([sys.executable, "-m", "tvmq.cli", "info", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("tvmq info: error:"), proc.stderr
