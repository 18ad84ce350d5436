"""LowerIntegerLUT: elementwise activations between 8-bit tensors as 256-entry tables.

Reference (bit-exact): :func:`tvmq.qref.lut` of the activation written here in NumPy float32
in the form TVM's ONNX importer gives it (e.g. HardSwish = ``x * (clip(x + 3, 0, 6) / 6)``),
dequantize/quantize as ONNX defines them (float32, round half to even, saturate). Every
input value of the 8-bit type is fed, so the whole table is checked. Independent check:
onnxruntime runs the same QDQ graph with its own float kernels (within one step).
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmq
from tvmq import qref

pytestmark = pytest.mark.build

_SHAPE = [1, 4, 8, 8]  # 256 elements: every input value once
_TYPES = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}
_F32 = np.float32


def _f(v):
    return _F32(v)


def _sigmoid(x):
    return _f(1) / (_f(1) + np.exp(-x))


def _erf(x):
    from scipy.special import erf

    return erf(x).astype(np.float32)


def _softplus(x):
    return np.log(_f(1) + np.exp(x))  # ONNX Softplus: ln(exp(x) + 1)


#: name -> (ONNX nodes from "xf" to "yf", extra float initializers, NumPy float32 reference)
ACTS = {
    "hardswish": ([helper.make_node("HardSwish", ["xf"], ["yf"])], {},
                  lambda x: x * (np.clip(x + _f(3), _f(0), _f(6)) / _f(6))),
    "hardsigmoid": ([helper.make_node("HardSigmoid", ["xf"], ["yf"], alpha=0.2, beta=0.5)], {},
                    lambda x: np.clip(x * _f(0.2) + _f(0.5), _f(0), _f(1))),
    "leakyrelu": ([helper.make_node("LeakyRelu", ["xf"], ["yf"], alpha=0.1)], {},
                  lambda x: np.where(x > 0, x, x * _f(0.1))),
    "sigmoid": ([helper.make_node("Sigmoid", ["xf"], ["yf"])], {}, _sigmoid),
    "tanh": ([helper.make_node("Tanh", ["xf"], ["yf"])], {}, np.tanh),
    "silu": ([helper.make_node("Sigmoid", ["xf"], ["s"]),
              helper.make_node("Mul", ["xf", "s"], ["yf"])], {}, lambda x: x * _sigmoid(x)),
    "gelu": ([helper.make_node("Div", ["xf", "sqrt2"], ["a"]),
              helper.make_node("Erf", ["a"], ["b"]),
              helper.make_node("Add", ["b", "one"], ["c"]),
              helper.make_node("Mul", ["xf", "c"], ["d"]),
              helper.make_node("Mul", ["d", "half"], ["yf"])],
             {"sqrt2": np.sqrt(2), "one": 1.0, "half": 0.5},
             lambda x: x * (_erf(x / _f(np.sqrt(2))) + _f(1)) * _f(0.5)),
    "mish": ([helper.make_node("Softplus", ["xf"], ["a"]),
              helper.make_node("Tanh", ["a"], ["b"]),
              helper.make_node("Mul", ["xf", "b"], ["yf"])], {},
             lambda x: x * np.tanh(_softplus(x))),
}


def _model(nodes, consts, in_dtype="uint8", sx=0.05, zx=None, sy=0.02, zy=None,
           out_dtype=None, opset=17):
    out_dtype = out_dtype or in_dtype
    zx = (120 if in_dtype == "uint8" else -8) if zx is None else zx
    zy = (60 if out_dtype == "uint8" else -60) if zy is None else zy
    np_in, np_out = np.dtype(in_dtype), np.dtype(out_dtype)
    inits = [numpy_helper.from_array(np.array(sx, _F32), "sx"),
             numpy_helper.from_array(np.array(zx, np_in), "zx"),
             numpy_helper.from_array(np.array(sy, _F32), "sy"),
             numpy_helper.from_array(np.array(zy, np_out), "zy")]
    inits += [numpy_helper.from_array(np.array(v, _F32), k) for k, v in consts.items()]
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]), *nodes,
         helper.make_node("QuantizeLinear", ["yf", "sy", "zy"], ["y"])], "lut",
        [helper.make_tensor_value_info("x", _TYPES[in_dtype], _SHAPE)],
        [helper.make_tensor_value_info("y", _TYPES[out_dtype], _SHAPE)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def _all_values(dtype):
    lo, hi = qref.dtype_range(dtype)
    return np.arange(lo, hi + 1).astype(dtype).reshape(_SHAPE)


def _ort(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _float_ops(model, **opts):
    """Float32 ops left after the quantize phase (the graph's input quantize and output
    dequantize aside), and whether a table lookup was emitted."""
    from tvmq.boards import get_board
    from tvmq.frontend import import_model
    from tvmq.pipeline import PipelineOptions, run_phases

    mod = run_phases(import_model(model, None, None).bind_params(), get_board("host"),
                     PipelineOptions(**opts), until="quantize")
    text = mod["main"].script(show_meta=False)
    ops = set()
    for line in text.splitlines():
        if 'dtype="float32") = R.' in line and "R.dequantize(" not in line:
            ops.add(line.split("= R.")[1].split("(")[0])
    return ops, "R.take(" in text


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("act", list(ACTS))
def test_activation_is_a_table_bit_exact(act, dtype):
    nodes, consts, ref = ACTS[act]
    model = _model(nodes, consts, in_dtype=dtype)
    ops, lut = _float_ops(model)
    assert lut and not ops, f"{act}: float ops left {ops}"
    x = _all_values(dtype)
    (got,) = tvmq.compile(model).run(x)
    zx, zy = (120, 60) if dtype == "uint8" else (-8, -60)
    table = qref.lut(ref, 0.05, zx, dtype, 0.02, zy, dtype)
    lo = qref.dtype_range(dtype)[0]
    expected = table[x.astype(np.int64) - lo]
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, expected.astype(dtype), err_msg=act)
    # independent: onnxruntime's float kernels, within one step (ulp-level differences of
    # transcendentals can move a value that lies next to a rounding tie)
    steps = np.abs(got.astype(np.int32) - _ort(model, x).astype(np.int32))
    assert steps.max() <= 1 and (steps > 0).sum() <= 2, \
        f"{act}: {int((steps > 0).sum())} of 256 entries differ from onnxruntime"


def test_ties_round_half_to_even():
    """LeakyReLU(0.5) with equal scales: every odd negative input lands on an exact half."""
    model = _model([helper.make_node("LeakyRelu", ["xf"], ["yf"], alpha=0.5)], {},
                   in_dtype="int8", sx=0.25, zx=0, sy=0.25, zy=0)
    x = _all_values("int8")
    (got,) = tvmq.compile(model).run(x)
    v = x.astype(np.int64)
    exact = np.where(v > 0, v, v * 0.5)
    ties = (v < 0) & (v % 2 == 1)
    assert ties.sum() == 64
    np.testing.assert_array_equal(got, np.rint(exact).astype(np.int8))  # -0.5 -> 0, -1.5 -> -2
    assert not np.array_equal(got[ties], np.floor(exact[ties] + 0.5))  # half up would differ


def test_saturation_and_mixed_types():
    """uint8 in, int8 out; the output range saturates at both ends."""
    nodes, consts, ref = ACTS["tanh"]
    model = _model(nodes, consts, in_dtype="uint8", sx=0.1, zx=128, sy=0.005, zy=0,
                   out_dtype="int8")
    x = _all_values("uint8")
    (got,) = tvmq.compile(model).run(x)
    expected = qref.lut(ref, 0.1, 128, "uint8", 0.005, 0, "int8")[x.astype(np.int64)]
    np.testing.assert_array_equal(got, expected)
    assert got.min() == -128 and got.max() == 127


@pytest.mark.parametrize("act", ["hardswish", "gelu"])
def test_table_agrees_with_the_float_path(act):
    """``PipelineOptions(integer_lut=False)`` keeps the float ops: same results (<= 1 step)."""
    nodes, consts, _ = ACTS[act]
    model = _model(nodes, consts)
    ops, lut = _float_ops(model, integer_lut=False)
    assert ops and not lut
    x = _all_values("uint8")
    (a,) = tvmq.compile(model).run(x)
    (b,) = tvmq.compile(model, options=tvmq.PipelineOptions(integer_lut=False)).run(x)
    steps = np.abs(a.astype(np.int32) - b.astype(np.int32))
    assert steps.max() <= 1 and (steps > 0).sum() <= 2


def _two_input_model():
    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
             helper.make_node("DequantizeLinear", ["x2", "sx", "zx"], ["x2f"]),
             helper.make_node("Mul", ["xf", "x2f"], ["m"]),
             helper.make_node("Sigmoid", ["m"], ["yf"]),
             helper.make_node("QuantizeLinear", ["yf", "sy", "zy"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, d), k) for k, v, d in
             [("sx", 0.05, _F32), ("zx", 120, np.uint8), ("sy", 0.02, _F32), ("zy", 0, np.uint8)]]
    vi = [helper.make_tensor_value_info(n, TensorProto.UINT8, _SHAPE) for n in ("x", "x2")]
    graph = helper.make_graph(nodes, "two", vi,
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, _SHAPE)],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_left_alone():
    """Two tensors in, a lone ReLU (IntegerRequantize's), per-channel input parameters, and a
    function that is NaN somewhere (stays float, with a warning naming why)."""
    ops, lut = _float_ops(_two_input_model())
    assert not lut and "sigmoid" in ops
    ops, lut = _float_ops(_model([helper.make_node("Relu", ["xf"], ["yf"])], {}))
    assert not lut and not ops  # fixed-point requantize with the ReLU bound
    per_channel = _model(*ACTS["sigmoid"][:2])
    for init in per_channel.graph.initializer:
        if init.name in ("sx", "zx"):
            value = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.repeat(value, 4), init.name))
    per_channel.graph.node[0].attribute.append(helper.make_attribute("axis", 1))
    ops, lut = _float_ops(per_channel)
    assert not lut and "sigmoid" in ops
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops, lut = _float_ops(_model([helper.make_node("Log", ["xf"], ["yf"])], {}))
    assert not lut and "log" in ops
    assert any("NaN" in str(w.message) for w in caught)


def _qdq_net(act: str, tmp_path):
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    mods = {"hardswish": torch.nn.Hardswish(), "silu": torch.nn.SiLU(),
            "gelu": torch.nn.GELU(), "leakyrelu": torch.nn.LeakyReLU(0.1)}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.c3 = torch.nn.Conv2d(16, 16, 1)
            self.act = mods[act]

        def forward(self, x):
            a = self.act(self.c1(x))
            return self.c3(self.act(self.c2(a) + a))

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # 16x16: large enough for the blocked activation layout (BlockedActivationLayout)
    xs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(9)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), torch.from_numpy(xs[0]), tmp_path / "f.onnx",
                          dynamo=False, opset_version=17, input_names=["x"])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.data = iter({"x": x} for x in xs[:8])

        def get_next(self):
            return next(self.data, None)

    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return tmp_path / "q.onnx", xs[8]


@pytest.mark.parametrize("act", ["hardswish", "silu", "gelu", "leakyrelu"])
def test_onnxruntime_qdq_net_runs_integer_only(act, tmp_path):
    """onnxruntime's QDQ export quantizes around the activation (and, for SiLU and GELU,
    after every op of its decomposition): the whole chain becomes one table, no float op is
    left between the input quantize and the output dequantize, and every quantized tensor
    agrees with onnxruntime (``tvmq.verify``, per layer)."""
    from tvmq.verify import verify

    path, x = _qdq_net(act, tmp_path)
    ops, lut = _float_ops(onnx.load(path))
    assert lut and not ops, f"{act}: float ops left {ops}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = verify(str(path), str(path), {"x": x})
        # the tables stay in the blocked layout: 6 layout transforms without
        # BlockedActivationLayout's lookup rule, 3 with it (the output edge, and a pair
        # around the residual add's operand, which still reads the table's output in NCHW)
        tvmq.compile(str(path), options=tvmq.PipelineOptions(dump_dir=str(tmp_path / "ir")))
    legalized = (tmp_path / "ir" / "03-legalize.py").read_text()
    assert legalized.count("R.call_tir(cls.te_layout_transform") <= 3, legalized
    assert rep["worst_steps"] <= 1 and rep["mismatched_fraction"] <= 0.01, rep
