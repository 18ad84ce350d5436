"""The encoded-weight mark: its structure, FoldConstant leaving it alone, its run-time decode."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import assert_well_formed
from tests._relax import constants
from tvmq import qref
from tvmq._tvm import relax, tensor, tvm
from tvmq.ir import encode_weight, encoded_bits, find_encoded, get_codec
from tvmq.ir.encoded import MARK, MARK_BITS, MARK_SHAPE
from tvmq.passes import FoldConstantKeepQuantized

W_SHAPE = (8, 5, 3, 3)  # 360 values: fields straddle bytes at 3, 5, 6 and 7 bits


def _conv_module(codec, w):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, w.shape[1], 6, 6), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            wv = bb.emit(encode_weight(bb, codec, w))
            out = bb.emit_output(relax.op.nn.conv2d(x, wv, out_dtype="int32"))
        bb.emit_func_output(out)
    return bb.get()


def _weight(rng, bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = rng.integers(lo, hi + 1, W_SHAPE).astype(np.int8)
    w.flat[0], w.flat[-1] = lo, hi
    return w


def _bindings(mod):
    out = {}
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            out[b.var] = b.value
    return out


def _conv_weight(mod):
    bound = _bindings(mod)
    conv = [v for v in bound.values() if isinstance(v, relax.Call)
            and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.nn.conv2d"]
    return conv[0].args[1], bound


@pytest.mark.parametrize("bits", [3, 6])
def test_mark_structure(rng, bits):
    """main calls a private decode function on the stored parts; the function's attributes
    say codec, bits and shape; its body is one call_tir of the decode PrimFunc."""
    codec, w = get_codec("packed", bits), _weight(rng, bits)
    mod = _conv_module(codec, w)
    assert_well_formed(mod)
    weight, bound = _conv_weight(mod)
    call = bound[weight]
    assert isinstance(call.op, relax.GlobalVar)
    func = mod[call.op.name_hint]
    assert "global_symbol" not in func.attrs  # private: DeadCodeElimination drops it unused
    assert str(func.attrs[MARK]) == "packed" and int(func.attrs[MARK_BITS]) == bits
    assert [int(d) for d in func.attrs[MARK_SHAPE]] == list(W_SHAPE)
    inner = func.body.blocks[0].bindings[0].value
    assert inner.op.name == "relax.call_tir"
    assert isinstance(mod[inner.args[0].name_hint], tvm.tirx.PrimFunc)
    enc = find_encoded(mod, weight, bound.get)
    assert enc.codec == codec and enc.shape == W_SHAPE
    assert enc.stored_bytes == -(-w.size * bits // 8)
    np.testing.assert_array_equal(enc.decode(), w)
    assert encoded_bits(mod, weight, bound.get) == bits
    assert find_encoded(mod, relax.const(w), bound.get) is None


def test_equal_weights_share_one_decode_function(rng):
    codec = get_codec("packed", 5)
    w1, w2 = _weight(rng, 5), _weight(rng, 5)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 5, 6, 6), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(x, bb.emit(encode_weight(bb, codec, w1)),
                                           out_dtype="int32"))
            b = bb.emit(relax.op.nn.conv2d(x, bb.emit(encode_weight(bb, codec, w2)),
                                           out_dtype="int32"))
            out = bb.emit_output(relax.op.add(a, b))
        bb.emit_func_output(out)
    names = sorted(gv.name_hint for gv in bb.get().functions)
    assert names == ["main", "tvmq_decode_packed5", "tvmq_decode_packed5_tir"], names


@pytest.mark.parametrize("fold", [relax.transform.FoldConstant, FoldConstantKeepQuantized])
@pytest.mark.parametrize("bits", [3, 6])
def test_fold_constant_never_folds_an_encoded_weight(rng, fold, bits):
    """Both folds leave main's stored constant packed: no dense int8 weight appears."""
    w = _weight(rng, bits)
    mod = _conv_module(get_codec("packed", bits), w)
    folded = fold()(mod)
    assert_well_formed(folded)
    consts = [(c.dtype.name, c.size) for c in constants(folded)]
    assert consts == [("uint8", -(-w.size * bits // 8))], consts
    weight, bound = _conv_weight(folded)
    np.testing.assert_array_equal(find_encoded(folded, weight, bound.get).decode(), w)


@pytest.mark.build
@pytest.mark.parametrize("name,bits", [("packed", b) for b in range(2, 8)] + [("codebook", 2)])
def test_run_time_decode_is_exact(rng, name, bits):
    """Without a kernel reading the mark, the decode runs in the program: exact."""
    codec = get_codec(name, bits)
    if name == "codebook":
        table = np.array([-100, -3, 7, 90], np.int8)
        w = table[rng.integers(0, 4, W_SHAPE)]
    else:
        w = _weight(rng, bits)
    mod = relax.transform.FoldConstant()(_conv_module(codec, w))
    ex = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    x = rng.integers(-128, 128, (1, 5, 6, 6)).astype(np.int8)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tensor(x)).numpy()
    np.testing.assert_array_equal(got, qref.conv2d_int(x, w))
