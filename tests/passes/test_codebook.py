"""Codebook weights: ONNX Gather(table, indices) -> LowerCodebookWeights -> lookup in the kernels.

Models are built here with onnx.helper: a QDQ conv (or Gemm) whose weight is
``DequantizeLinear(Gather(int8 table, Cast(uint8 indices)), scale)`` (integer activations) or
``Gather(float table, Cast(indices))`` (float). The same model with the gathered weight stored
as a dense int8 / float initializer is the reference: the codebook build must give the same
outputs bit for bit (integer) or to 1e-5 relative (float), and onnxruntime (unoptimized) the
same codes within one output step.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmq
from tvmq._tvm import relax, tvm
from tvmq.errors import QuantizationParamError
from tvmq.ir import find_encoded
from tvmq.passes import LowerCodebookWeights

pytestmark = pytest.mark.build


def _qdq_conv(path, table, idx, *, dense: bool, op="Conv", integer=True, stride=1, seed=0):
    """x -> Q/DQ -> Conv|Gemm(weight) -> Q/DQ -> y; the weight a codebook Gather or dense."""
    rng = np.random.default_rng(seed)
    out_c = idx.shape[0]
    shape = [1, idx.shape[1], 9, 9] if op == "Conv" else [1, idx.shape[1]]
    inits = [numpy_helper.from_array(np.float32(0.05), "sx"),
             numpy_helper.from_array(np.uint8(128), "zx"),
             numpy_helper.from_array(np.float32(0.2), "sy"),
             numpy_helper.from_array(np.uint8(120), "zy"),
             numpy_helper.from_array(np.float32(0.01), "sw"),
             numpy_helper.from_array(np.int8(0), "zw"),
             numpy_helper.from_array(rng.normal(0, 0.1, out_c).astype(np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"])]
    wname = "w"
    if dense:
        values = table[idx]
        inits.append(numpy_helper.from_array(values, "wv"))
        src = "wv"
    else:
        inits += [numpy_helper.from_array(table, "table"),
                  numpy_helper.from_array(idx.astype(np.uint8), "idx")]
        nodes += [helper.make_node("Cast", ["idx"], ["idx64"], to=TensorProto.INT64),
                  helper.make_node("Gather", ["table", "idx64"], ["wg"], name="codebook_gather",
                                   axis=0)]
        src = "wg"
    if integer:
        nodes.append(helper.make_node("DequantizeLinear", [src, "sw", "zw"], [wname]))
    else:
        wname = src
    x_in = "xd" if integer else "x"
    if op == "Conv":
        nodes.append(helper.make_node("Conv", [x_in, wname, "b"], ["y"], pads=[1, 1, 1, 1],
                                      strides=[stride, stride]))
    else:
        nodes.append(helper.make_node("Gemm", [x_in, wname, "b"], ["y"], transB=1))
    if integer:
        nodes += [helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"])]
    else:
        nodes.append(helper.make_node("Identity", ["y"], ["out"]))
    graph = helper.make_graph(nodes, "cb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, path)
    return path, shape


def _codebook(k, shape, integer=True, seed=0):
    rng = np.random.default_rng(seed)
    if integer:
        table = np.unique(rng.integers(-127, 128, size=4 * k)).astype(np.int8)
        table = np.concatenate([[0], rng.permutation(table[table != 0])[:k - 1]]).astype(np.int8)
    else:
        table = np.concatenate([[0.0], rng.normal(0, 0.3, k - 1)]).astype(np.float32)
    idx = rng.integers(0, len(table), size=shape)
    return table, idx


def _run(path, shape, x):
    art = tvmq.compile(path)
    return art, art.run([x])[0]


@pytest.mark.parametrize("k,shape,op,stride", [
    (2, (16, 8, 3, 3), "Conv", 1), (4, (32, 16, 3, 3), "Conv", 2), (8, (16, 24, 3, 3), "Conv", 1),
    (16, (32, 32, 3, 3), "Conv", 1), (32, (16, 16, 1, 1), "Conv", 1), (256, (16, 16, 3, 3), "Conv", 1),
    (16, (24, 64), "Gemm", 1), (4, (10, 32), "Gemm", 1)])
def test_integer_codebook_kernels_bit_exact(tmp_path, k, shape, op, stride):
    table, idx = _codebook(k, shape)
    cb, in_shape = _qdq_conv(tmp_path / "cb.onnx", table, idx, dense=False, op=op, stride=stride)
    dense, _ = _qdq_conv(tmp_path / "dense.onnx", table, idx, dense=True, op=op, stride=stride)
    x = np.random.default_rng(1).normal(0, 2, in_shape).astype(np.float32)
    art, got = _run(cb, in_shape, x)
    _, ref = _run(dense, in_shape, x)
    np.testing.assert_array_equal(got, ref)  # codes equal: the lookup is exact
    (layer,) = art.meta["layers"]
    bits = max(1, int(np.ceil(np.log2(len(table)))))
    assert layer["integer"] and layer["codebook"]["k"] == 1 << bits
    assert layer["weight_bits"] == bits
    assert layer["weight_bytes"] == int(np.ceil(idx.size * bits / 8)) + (1 << bits)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(str(cb), so).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 0.2 + 1e-6  # at most one output step (sy = 0.2)


def test_kernel_reads_indices_and_table_not_dense_weights(tmp_path):
    """The compiled kernel takes the packed indices and the K-entry table as arguments."""
    from tvmq.boards import get_board
    from tvmq.frontend import import_onnx
    from tvmq.pipeline import PipelineOptions, run_phases

    table, idx = _codebook(16, (32, 32, 3, 3))
    path, _ = _qdq_conv(tmp_path / "cb.onnx", table, idx, dense=False)
    mod = run_phases(import_onnx(path).bind_params(), get_board("host"), PipelineOptions(),
                     until="legalize")
    kernels = [f for gv, f in mod.functions.items() if "tvmq_kernel" in gv.name_hint]
    (kernel,) = kernels
    shapes = [tuple(int(d) for d in b.shape) for b in kernel.params if hasattr(b, "shape")]
    assert shapes, "kernel parameters are buffers"
    assert (16,) in shapes, "the 16-entry table is a kernel argument"
    assert not any(int(np.prod(s)) == idx.size for s in shapes), "no dense int8 weight"
    assert any(int(np.prod(s)) == idx.size // 2 for s in shapes), "4-bit indices, 2 a byte"


@pytest.mark.parametrize("op,shape", [("Conv", (16, 8, 3, 3)), ("Gemm", (12, 40))])
def test_float_codebook_matches_dense(tmp_path, op, shape):
    table, idx = _codebook(16, shape, integer=False)
    cb, in_shape = _qdq_conv(tmp_path / "cb.onnx", table, idx, dense=False, op=op, integer=False)
    dense, _ = _qdq_conv(tmp_path / "d.onnx", table, idx, dense=True, op=op, integer=False)
    x = np.random.default_rng(2).normal(0, 1, in_shape).astype(np.float32)
    art, got = _run(cb, in_shape, x)
    _, ref = _run(dense, in_shape, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    want = ort.InferenceSession(str(cb)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    (layer,) = art.meta["layers"]
    assert layer["codebook"]["table_dtype"] == "float32" and layer["weight_bits"] == 4
    assert layer["weight_bytes"] == idx.size // 2 + 16 * 4


def test_codebook_artifact_is_smaller(tmp_path):
    table, idx = _codebook(16, (256, 256, 3, 3))
    cb, shape = _qdq_conv(tmp_path / "cb.onnx", table, idx, dense=False)
    dense, _ = _qdq_conv(tmp_path / "d.onnx", table, idx, dense=True)
    size = {}
    for tag, path in (("cb", cb), ("dense", dense)):
        size[tag] = os.path.getsize(tvmq.compile(path).save(tmp_path / tag) / "lib.so")
    # 589,824 int8 weight bytes vs 294,912 B of 4-bit indices (+16): about half
    assert size["dense"] - size["cb"] > 0.45 * idx.size, size


# -- the pass on Relax, and bad codebooks ----------------------------------------------------
def _take_module(table, idx):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, idx.shape[1], 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = bb.emit(relax.op.take(relax.const(table), relax.const(idx), axis=0))
            y = bb.emit_output(relax.op.nn.conv2d(x, w))
        bb.emit_func_output(y)
    return bb.get()


def test_pass_replaces_take_by_marked_codebook_and_survives_fold():
    table, idx = _codebook(8, (4, 2, 3, 3), integer=False)
    mod = LowerCodebookWeights()(_take_module(table, idx.astype(np.uint8)))
    mod = relax.transform.FoldConstant()(mod)
    assert "relax.take" not in mod["main"].script() and "R.take" not in mod["main"].script()
    bindings = {b.var: b.value for blk in mod["main"].body.blocks for b in blk.bindings}
    conv = next(v for v in bindings.values() if getattr(v.op, "name", "") == "relax.nn.conv2d")
    enc = find_encoded(mod, conv.args[1], bindings.get)
    assert enc.codec.name == "codebook_f32" and enc.codec.bits == 3
    np.testing.assert_array_equal(enc.decode(), table[idx])
    assert enc.stored_bytes == int(np.ceil(idx.size * 3 / 8)) + 8 * 4


@pytest.mark.parametrize("problem", ["range", "size", "nan"])
def test_bad_codebooks_are_refused(tmp_path, problem):
    table, idx = _codebook(8, (4, 2, 3, 3), integer=False)
    idx = idx.astype(np.int64)
    if problem == "range":
        idx[0, 0, 0, 0] = 8
    elif problem == "size":
        table = np.linspace(-1, 1, 300).astype(np.float32)
    else:
        table[3] = np.nan
    # raised inside the pass; TVM's pass runner re-raises it across its FFI as RuntimeError
    with pytest.raises((QuantizationParamError, RuntimeError),
                       match="LowerCodebookWeights: codebook weight take"):
        LowerCodebookWeights()(_take_module(table, idx))
    path, _ = _qdq_conv(tmp_path / "bad.onnx", table, idx.clip(0, 255), dense=False,
                        integer=False)
    if problem == "range":  # uint8 storage: write the bad index directly
        m = onnx.load(path)
        for t in m.graph.initializer:
            if t.name == "idx":
                bad = numpy_helper.to_array(t).copy()
                bad[0, 0, 0, 0] = 200
                t.CopyFrom(numpy_helper.from_array(bad, "idx"))
        onnx.save(m, path)
    with pytest.raises(QuantizationParamError, match="codebook_gather"):
        tvmq.compile(path)
