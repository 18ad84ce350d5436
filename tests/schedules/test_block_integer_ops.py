"""BlockIntegerOps + ScheduleIntegerKernels on integer Relax graphs: structure and exactness.

The reference is the same module built without tvmq's kernels (TVM's default legalization),
and for the QDQ case onnxruntime itself.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import assert_well_formed, run_target, to_blocked
from tests._relax import constants
from tvmq import qref
from tvmq import schedules as S
from tvmq._tvm import relax, tensor, tvm
from tvmq.passes import PackSubByteWeights

pytestmark = pytest.mark.build
TARGET = run_target()  # built and run here: znver4 where the CPU has AVX-512, else its own


def _graph(x_shape, in_dtype, w, *, dense=False, pad_value=None, **conv):
    """``x -> [pad] -> conv2d/matmul(int32) -> requantize -> uint8``, like tvmq.passes emit."""
    o = w.shape[1] if dense else w.shape[0]
    m, n = qref.quantize_multiplier(np.linspace(3e-4, 9e-4, o))
    cshape = (1, o) if dense else (1, o, 1, 1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, in_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            data = x
            if pad_value is not None:
                data = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 1, 1, 1, 1], pad_value=pad_value))
            if dense:
                acc = bb.emit(relax.op.matmul(data, relax.const(w), out_dtype="int32"))
            else:
                acc = bb.emit(relax.op.nn.conv2d(data, relax.const(w), out_dtype="int32", **conv))
            a64 = bb.emit(relax.op.astype(acc, "int64"))
            prod = bb.emit(relax.op.multiply(a64, relax.const(m.reshape(cshape), "int64")))
            y = bb.emit(relax.op.right_shift(prod, relax.const(n.reshape(cshape), "int64")))
            out = bb.emit_output(relax.op.astype(relax.op.clip(y, 0, 255), "uint8"))
        bb.emit_func_output(out)
    return bb.get()


def _lower(mod, ours: bool, blocked: bool = False):
    target = tvm.target.Target(TARGET)
    seq = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
           relax.transform.FuseOps(), relax.transform.FuseTIR()]
    if ours:
        seq = S.legalize_prelude(target, blocked_layout=blocked) + seq + \
            S.schedule_passes(target)
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(seq)(mod)


def _run(mod, x):
    ex = tvm.compile(mod, tvm.target.Target(TARGET))
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tensor(x)).numpy()


def _call_tir_callees(mod) -> list[str]:
    names = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir":
                names.append(b.value.args[0].name_hint)
    return names


def test_conv_becomes_pack_plus_fused_kernel(rng):
    w = rng.integers(-128, 128, (32, 16, 3, 3)).astype("int8")
    mod = _graph((1, 16, 8, 8), "uint8", w, padding=1)
    out = S.BlockIntegerOps(S.strategy_for(tvm.target.Target(TARGET)))(mod)
    assert_well_formed(out)
    assert _call_tir_callees(out) == ["tvmq_pack_act", "tvmq_kernel1"]
    assert all("conv2d" not in str(b.value.op) for blk in out["main"].body.blocks
               for b in blk.bindings if isinstance(b.value, relax.Call))
    lowered = _lower(mod, True)
    callees = _call_tir_callees(lowered)
    assert len(callees) == 2 and callees[1].startswith("fused_tvmq_kernel1")  # requant fused
    assert all(lowered[gv].attrs.get("tirx.is_scheduled") for gv in lowered.functions
               if gv.name_hint != "main")


def _requantized(bb, acc, o):
    """int32 ``acc`` with ``o`` channels -> requantized uint8, like tvmq.passes emit."""
    m, n = qref.quantize_multiplier(np.linspace(3e-4, 9e-4, o))
    prod = bb.emit(relax.op.multiply(relax.op.astype(acc, "int64"),
                                     relax.const(m.reshape(1, o, 1, 1), "int64")))
    y = bb.emit(relax.op.right_shift(prod, relax.const(n.reshape(1, o, 1, 1), "int64")))
    y = bb.emit(relax.op.minimum(relax.op.maximum(y, relax.const(0, "int64")),
                                 relax.const(255, "int64")))
    return bb.emit(relax.op.astype(y, "uint8"))


def _conv_requantized(bb, data, w, **conv):
    """``conv2d(data, w)`` (int32) requantized to uint8."""
    acc = bb.emit(relax.op.nn.conv2d(data, relax.const(w), out_dtype="int32", **conv))
    return _requantized(bb, acc, w.shape[0])


def _chain(x_shape, convs):
    """``x -> (conv2d(int32) -> requantize(max/min) -> uint8)*`` like tvmq.passes emit."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            data = x
            for w, conv in convs:
                data = _conv_requantized(bb, data, w, **conv)
            out = bb.emit_output(data)
        bb.emit_func_output(out)
    return bb.get()


def test_blocked_layout_transforms_only_at_the_edges(rng):
    """conv 3x3 -> depthwise stride 2 -> conv 1x1 -> conv with 24 outputs (padded to 32,
    sliced back at the output): activations stay NCHW16c between the edges, exact."""
    convs = [(rng.integers(-128, 128, (32, 16, 3, 3)).astype("int8"), {"padding": 1}),
             (rng.integers(-128, 128, (32, 1, 3, 3)).astype("int8"),
              {"groups": 32, "padding": 1, "strides": 2}),
             (rng.integers(-128, 128, (48, 32, 1, 1)).astype("int8"), {}),
             (rng.integers(-128, 128, (24, 48, 1, 1)).astype("int8"), {})]
    mod = _chain((1, 16, 12, 12), convs)
    lowered = _lower(mod, True, blocked=True)
    callees = _call_tir_callees(lowered)
    transforms = [c for c in callees if "layout_transform" in c]
    # in (x -> NCHW16c) and out (after the last conv): nothing in between
    assert len(transforms) == 2, callees
    assert sum("tvmq_kernel" in c for c in callees) == 4
    x = rng.integers(0, 256, (1, 16, 12, 12)).astype("uint8")
    np.testing.assert_array_equal(_run(lowered, x), _run(_lower(mod, False), x))
    nchw = _lower(mod, True, blocked=False)
    np.testing.assert_array_equal(_run(lowered, x), _run(nchw, x))


@pytest.mark.parametrize("bits", [8, 4])
def test_24_channel_stage_with_residual_add_stays_blocked(rng, bits):
    """MobileNetV2's 24-channel stage: conv 16->24, conv 24->24, residual add, conv 24->32.
    The 24-channel tensors are padded to 32 (zero weights on the extra channels, per-channel
    constants padded), so no layout transform sits inside the graph; exact. int4 weights
    (stored packed) are padded through their unpacking chain and stay packed."""
    lo = -(1 << (bits - 1))
    w1, w2, w3 = (rng.integers(lo, -lo, s).astype("int8")
                  for s in ((24, 16, 1, 1), (24, 24, 3, 3), (32, 24, 1, 1)))
    bias = rng.integers(-500, 500, (1, 24, 1, 1)).astype("int32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 12, 12), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = _conv_requantized(bb, x, w1)
            acc = bb.emit(relax.op.nn.conv2d(a, relax.const(w2), padding=1, out_dtype="int32"))
            b = _requantized(bb, bb.emit(relax.op.add(acc, relax.const(bias))), 24)
            total = bb.emit(relax.op.add(relax.op.astype(a, "int32"), relax.op.astype(b, "int32")))
            c = bb.emit(relax.op.astype(relax.op.minimum(total, relax.const(255, "int32")),
                                        "uint8"))
            out = bb.emit_output(_conv_requantized(bb, c, w3))
        bb.emit_func_output(out)
    mod = bb.get()
    if bits < 8:
        mod = PackSubByteWeights(max_bits=bits, min_elements=64)(mod)
    lowered = _lower(mod, True, blocked=True)
    callees = _call_tir_callees(lowered)
    assert sum("layout_transform" in c for c in callees) == 2, callees  # input and output
    assert sum("tvmq_kernel" in c for c in callees) == 3
    if bits < 8:  # 2 weights a byte: [O/16, C/4, KH, KW, 8, 4], 24 channels padded to 32
        assert "T.int64(2), T.int64(8), T.int64(3), T.int64(3), T.int64(8), T.int64(4)" in \
            lowered.script(), "the padded 3x3 weight is not stored packed"
    x = rng.integers(0, 256, (1, 16, 12, 12)).astype("uint8")
    np.testing.assert_array_equal(_run(lowered, x), _run(_lower(mod, False), x))


def test_padded_channels_are_sliced_before_other_consumers(rng):
    """A 24-channel conv output that leaves the graph (or meets an op the padding does not
    pass through) has its real 24 channels sliced back: shapes and values unchanged."""
    w = rng.integers(-128, 128, (24, 16, 1, 1)).astype("int8")
    mod = _chain((1, 16, 12, 12), [(w, {})])
    lowered = _lower(mod, True, blocked=True)
    x = rng.integers(0, 256, (1, 16, 12, 12)).astype("uint8")
    got, ref = _run(lowered, x), _run(_lower(mod, False), x)
    assert got.shape == (1, 24, 12, 12)
    np.testing.assert_array_equal(got, ref)


def test_padded_channels_sliced_inside_a_tuple(rng):
    """A padded tensor that reaches a concat (through its tuple argument) is sliced back to
    its real channels first: 24 + 16 channels out, exact."""
    w = rng.integers(-128, 128, (24, 16, 1, 1)).astype("int8")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 12, 12), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = _conv_requantized(bb, x, w)
            out = bb.emit_output(relax.op.concat([a, x], axis=1))
        bb.emit_func_output(out)
    mod = bb.get()
    xv = rng.integers(0, 256, (1, 16, 12, 12)).astype("uint8")
    got = _run(_lower(mod, True, blocked=True), xv)
    assert got.shape == (1, 40, 12, 12)
    np.testing.assert_array_equal(got, _run(_lower(mod, False), xv))


def test_rgb_stem_joins_the_blocked_layout(rng):
    """A 3-channel stem (7x7 stride 2) is padded to one block for the layout pass, then
    packed from its NCHW input over 4 channels only: no layout transform before or after
    it, exact."""
    convs = [(rng.integers(-128, 128, (32, 3, 7, 7)).astype("int8"),
              {"padding": 3, "strides": 2}),
             (rng.integers(-128, 128, (16, 32, 3, 3)).astype("int8"), {"padding": 1})]
    mod = _chain((1, 3, 24, 24), convs)
    lowered = _lower(mod, True, blocked=True)
    callees = _call_tir_callees(lowered)
    assert sum("layout_transform" in c for c in callees) == 1, callees  # the output only
    assert "layout_transform" in callees[-1]
    stem = lowered[[gv for gv in lowered.functions if "kernel1" in gv.name_hint][0]]
    # packed weights of the stem: [O/16, C/4 = 1, 7, 7, 16, 4]: 3 channels -> one group of 4
    assert "T.int64(2), T.int64(1), T.int64(7), T.int64(7), T.int64(16), T.int64(4)" \
        in stem.script()
    x = rng.integers(0, 256, (1, 3, 24, 24)).astype("uint8")
    np.testing.assert_array_equal(_run(lowered, x), _run(_lower(mod, False), x))


def test_non_constant_weight_is_left_alone(rng):
    x = relax.Var("x", relax.TensorType((1, 4, 5, 5), "uint8"))
    w = relax.Var("w", relax.TensorType((8, 4, 1, 1), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, w, out_dtype="int32"))
        bb.emit_func_output(out)
    mod = bb.get()
    out = S.BlockIntegerOps(S.strategy_for(tvm.target.Target(TARGET)))(mod)
    tvm.ir.assert_structural_equal(out["main"], mod["main"])


@pytest.mark.parametrize("x_shape,in_dtype,w_shape,conv,pad_value", [
    ((1, 16, 10, 10), "uint8", (32, 16, 3, 3), dict(padding=1), None),
    ((2, 5, 9, 9), "int8", (17, 5, 3, 3), dict(strides=2, padding=1), None),
    ((1, 8, 7, 7), "uint8", (24, 8, 1, 1), {}, None),
    ((1, 12, 8, 8), "uint8", (12, 1, 3, 3), dict(groups=12), 128.0),   # depthwise, zp pad
    ((1, 16, 6, 6), "uint8", (16, 16, 3, 3), {}, 128.0),               # absorbed zp pad
    ((1, 16, 6, 6), "int8", (8, 16, 3, 3), {}, -3.0),
])
def test_conv_graph_exact(rng, x_shape, in_dtype, w_shape, conv, pad_value):
    w = rng.integers(-128, 128, w_shape).astype("int8")
    mod = _graph(x_shape, in_dtype, w, pad_value=pad_value, **conv)
    lo, hi = qref.dtype_range(in_dtype)
    x = rng.integers(lo, hi + 1, x_shape).astype(in_dtype)
    ours, ref = _lower(mod, True), _lower(mod, False)
    assert "tvmq_kernel1" in " ".join(gv.name_hint for gv in ours.functions)
    np.testing.assert_array_equal(_run(ours, x), _run(ref, x))


def test_matmul_graph_exact(rng):
    w = rng.integers(-128, 128, (50, 24)).astype("int8")
    mod = _graph((3, 50), "int8", w, dense=True)
    x = rng.integers(-128, 128, (3, 50)).astype("int8")
    np.testing.assert_array_equal(_run(_lower(mod, True), x), _run(_lower(mod, False), x))


@pytest.mark.parametrize("bits", [4, 2, 3, 6])
def test_encoded_weight_runs_on_blocked_kernel(rng, bits):
    """A ``packed`` weight (the mark, :func:`tvmq.ir.encode_weight`) is read by the kernel
    rewrite: the decode function is gone, the kernel stores the weight ``bits`` wide."""
    from tvmq.ir import encode_weight, get_codec

    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = rng.integers(lo, hi + 1, (20, 7, 3, 3)).astype("int8")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 7, 6, 6), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            wexpr = bb.emit(encode_weight(bb, get_codec("packed", bits), w))
            out = bb.emit_output(relax.op.nn.conv2d(x, wexpr, padding=1, out_dtype="int32"))
        bb.emit_func_output(out)
    mod = bb.get()
    xin = rng.integers(0, 256, (1, 7, 6, 6)).astype("uint8")
    ours = _lower(mod, True)
    names = " ".join(gv.name_hint for gv in ours.functions)
    assert "tvmq_kernel1" in names and "tvmq_decode" not in names, names
    # blocked [O/16 = 2, C/4 = 2, 3, 3, 16, 4] int8 weights, stored bits / 8 as large
    dense_bytes = 2 * 2 * 3 * 3 * 16 * 4
    consts = [c for c in constants(ours, all_functions=True) if c.dtype == np.int8 and c.size > 64]
    assert [c.nbytes for c in consts] == [dense_bytes * bits // 8], [c.shape for c in consts]
    np.testing.assert_array_equal(_run(ours, xin), qref.conv2d_int(xin, w, padding=(1,) * 4))


@pytest.mark.parametrize("hw,parallel", [(96, True), (20, False)])
def test_pack_after_an_input_quantize_is_parallel_and_vectorized(hw, parallel):
    """The model input's quantize fused with its pack (no kernel in the function): both
    blocks run parallel and vectorized (the pack ran on one thread, scalar: 2x slower);
    a small one (1,600 bytes) on one thread: waking the pool costs more than it saves."""
    from tvmq._tvm import s_tir, te
    from tvmq.schedules import blocked as B
    from tvmq.schedules.schedule_integer_kernels import schedule_func

    x = te.placeholder(B.i64((1, 3, hw, hw)), "float32", "x")
    q = te.compute(x.shape, lambda *i: (x(*i) * 8.0).astype("uint8"), name="quantized")
    packed = B.pack_activation(q, 4, (1, 1, 1, 1), "uint8")
    func = te.create_prim_func([x, packed])
    sch = s_tir().Schedule(schedule_func(func, S.strategy_for(tvm.target.Target(TARGET))))
    for name in ("quantized", B.BLOCK_PACK):
        kinds = {int(sch.get(lp).kind) for lp in sch.get_loops(sch.get_sblock(name))}
        assert 2 in kinds, name  # ForKind.VECTORIZED
        assert (1 in kinds) == parallel, name  # ForKind.PARALLEL


def _legalized_op(make, *arg_types):
    """``main(args) = make(*args)`` legalized: the module and the op's PrimFunc's GlobalVar."""
    bb = relax.BlockBuilder()
    args = [relax.Var(f"a{i}", relax.TensorType(*t)) for i, t in enumerate(arg_types)]
    with bb.function("main", args):
        bb.emit_func_output(bb.emit(make(*args)))
    mod = relax.transform.LegalizeOps()(bb.get())
    return mod, [g for g in mod.functions if g.name_hint != "main"][0]


@pytest.mark.parametrize("layout,shape,parallel", [("NCHW16c", (1, 2, 63, 63, 16), True),
                                                   ("NHWC", (1, 64, 64, 8), True),
                                                   ("NCHW16c", (1, 2, 13, 13, 16), False)])
def test_max_pool_is_parallel_vectorized_and_exact(rng, layout, shape, parallel):
    """Pools over channels-last layouts get a schedule of their own (they ran on one thread,
    left to LLVM); small ones (under ``POOL_PARALLEL_MIN`` window reads) stay on one
    thread, vectorized."""
    from tvmq._tvm import s_tir
    from tvmq.schedules.schedule_integer_kernels import schedule_func

    mod, gv = _legalized_op(
        lambda x: relax.op.nn.max_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1), layout=layout),
        (shape, "uint8"))
    func = schedule_func(mod[gv], S.strategy_for(tvm.target.Target(TARGET)))
    sch = s_tir().Schedule(func)
    red = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
           if any(int(iv.iter_type) for iv in sch.get(b).iter_vars)][0]
    kinds = {int(sch.get(lp).kind) for lp in sch.get_loops(red)}  # 1 parallel, 2 vectorized
    assert 2 in kinds and (1 in kinds) == parallel
    mod[gv] = func
    ex = tvm.compile(mod, target=tvm.target.Target(TARGET))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    a = rng.integers(0, 256, shape).astype("uint8")
    got = vm["main"](tensor(a)).numpy()
    nchw = (a.transpose(0, 3, 1, 2) if layout == "NHWC"
            else a.transpose(0, 1, 4, 2, 3).reshape(1, -1, *shape[2:4]))
    p = np.pad(nchw, ((0, 0), (0, 0), (1, 1), (1, 1)))  # 0 pads: the smallest uint8
    oh = (nchw.shape[2] - 1) // 2 + 1
    ref = np.max([p[:, :, i:i + 2 * oh:2, j:j + 2 * oh:2] for i in range(3) for j in range(3)], 0)
    ref = ref.transpose(0, 2, 3, 1) if layout == "NHWC" else to_blocked(ref, 16)
    np.testing.assert_array_equal(got, ref)


def test_nchw_pool_is_left_to_llvm():
    """NCHW's last loop is W, read with the pool's stride: vectorizing it would gather."""
    from tvmq.schedules.schedule_integer_kernels import _schedule_window_reduction

    mod, gv = _legalized_op(lambda x: relax.op.nn.max_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1)),
                            ((1, 8, 64, 64), "uint8"))
    assert _schedule_window_reduction(mod[gv]) is None


def test_conv_is_not_scheduled_as_a_pool():
    """A float conv is a window reduction too, but over two inputs: left alone."""
    from tvmq.schedules.schedule_integer_kernels import _schedule_window_reduction

    mod, gv = _legalized_op(lambda x, w: relax.op.nn.conv2d(x, w, padding=1),
                            ((1, 4, 8, 8), "float32"), ((4, 4, 3, 3), "float32"))
    assert _schedule_window_reduction(mod[gv]) is None
