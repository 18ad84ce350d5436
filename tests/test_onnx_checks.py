"""Invalid quantization parameters fail before import, with the node named (tvmq.onnx_checks).

Each case is a tiny ONNX model built with ``onnx.helper``; it must fail the same way through
``tvmq.compile`` and through the CLI (exit code 2, one stderr line, nothing written).
"""
from __future__ import annotations

import numpy as np
import pytest

from tvmq.errors import QuantizationParamError, TvmqError


def _model(scale, zero, x_dtype="float32", axis=None, x_shape=(1, 4, 2, 2), op="q"):
    """``x -> QuantizeLinear('conv1_q') -> DequantizeLinear('conv1_dq') -> y``; ``op="dq"``
    makes the integer input the graph input and only the DequantizeLinear carries params."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kw = {} if axis is None else {"axis": axis}
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
             numpy_helper.from_array(np.asarray(zero), "z")]
    if op == "q":
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="conv1_q", **kw),
                 helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["y"], name="conv1_dq",
                                  **kw)]
        elem = TensorProto.FLOAT
    else:
        nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], name="conv1_dq",
                                  **kw)]
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(x_dtype))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x_shape)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


CASES = {
    "zero_scale": (lambda: _model(0.0, np.uint8(0)), "QuantizeLinear node 'conv1_q'",
                   "scale must be positive and finite, got 0.0"),
    "negative_scale": (lambda: _model(-0.5, np.uint8(0)), "'conv1_q'", "got -0.5"),
    "nan_scale": (lambda: _model(np.nan, np.uint8(0)), "'conv1_q'", "got nan"),
    "inf_scale": (lambda: _model(np.inf, np.uint8(0)), "'conv1_q'", "got inf"),
    "zero_point_range": (lambda: _model(0.1, np.uint8(200), x_dtype="int8", op="dq"),
                         "DequantizeLinear node 'conv1_dq'", "zero point 200 is out of range"),
    "axis_range": (lambda: _model(np.ones(4, np.float32), np.zeros(4, np.uint8), axis=5),
                   "'conv1_q'", "axis 5 is out of range for a rank-4 tensor"),
    "per_channel_length": (lambda: _model(np.ones(3, np.float32), np.zeros(3, np.uint8)),
                           "'conv1_q'", "per-axis scale has 3 values but axis 1 has 4 channels"),
    "scale_zero_shapes": (lambda: _model(np.ones(4, np.float32), np.zeros(2, np.int8),
                                         x_dtype="int8", op="dq"),
                          "DequantizeLinear node 'conv1_dq'", "zero point shape [2] differ"),
}


@pytest.mark.parametrize("case", CASES)
def test_compile_names_the_node(case):
    import tvmq

    build, node, problem = CASES[case]
    with pytest.raises(QuantizationParamError) as err:
        tvmq.compile(build(), board="host")
    assert isinstance(err.value, TvmqError)
    assert node in str(err.value) and problem in str(err.value), str(err.value)
    assert "(fix: re-export or recalibrate" in str(err.value)


@pytest.mark.parametrize("case", ["zero_scale", "zero_point_range", "per_channel_length"])
def test_cli_exits_2_with_one_line(case, tmp_path, capsys):
    import onnx

    from tvmq.cli import main

    build, node, problem = CASES[case]
    path = tmp_path / "bad.onnx"
    onnx.save(build(), str(path))
    out = tmp_path / "art"
    assert main(["compile", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and node in err and problem in err, err
    assert not out.exists()


def test_valid_model_passes_checks():
    from tvmq.onnx_checks import check_quantization_params

    check_quantization_params(_model(np.full(4, 0.1, np.float32), np.zeros(4, np.uint8)))
