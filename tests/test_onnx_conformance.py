"""ONNX's own quantization node tests through tvmq's import + compile path, compared exactly.

Cases come from ``onnx.backend.test.case.node.collect_testcases`` (the generators ship with
the ``onnx`` wheel). tvmq compiles *static* quantization: every input but the first (scales,
zero points, weights, bias) is frozen into an initializer before compiling; the first input
stays a runtime input. Sub-byte tensors travel in int8/uint8 containers (see
``tvmq.onnx_ops.canonicalize``), so outputs are compared by value. Run with ``-s`` to see the
pass/skip list.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

PREFIXES = ("test_quantizelinear", "test_dequantizelinear", "test_dynamicquantizelinear",
            "test_qlinearconv", "test_qlinearmatmul", "test_convinteger", "test_matmulinteger")
# Cases outside the <= 8-bit integer scope, with the reason.
SKIP = {
    "float8": "float8 quantization (not an integer type)",
    "float4": "float4 quantization (not an integer type)",
    "e4m3": "float8 quantization", "e5m2": "float8 quantization",
    "int16": "16-bit integers (scope is <= 8 bits)",
    "uint16": "16-bit integers (scope is <= 8 bits)",
}

# Known failures, with the reason (kept visible as xfail, not hidden).
XFAIL: dict[str, str] = {
}


def _cases():
    from onnx.backend.test.case.node import collect_testcases

    return sorted((c for c in collect_testcases(None) if c.name.startswith(PREFIXES)),
                  key=lambda c: c.name)


def _skip_reason(case) -> str | None:
    for key, why in SKIP.items():
        if key in case.name:
            return why
    return None


def _freeze(model, inputs):
    """Turn every graph input but the first into an initializer holding its test value."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph_inputs = list(model.graph.input)
    for inp, value in list(zip(graph_inputs, inputs))[1:]:
        if isinstance(value, onnx.TensorProto):
            tensor = onnx.TensorProto.FromString(value.SerializeToString())
            tensor.name = inp.name
        else:
            tensor = numpy_helper.from_array(np.asarray(value), inp.name)
        model.graph.initializer.append(tensor)
        model.graph.input.remove(inp)
    return model


def _array(value):
    import onnx
    from onnx import numpy_helper

    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else \
        np.asarray(value)


def run_case(case) -> tuple[bool, str]:
    import tvmq

    inputs, expected = case.data_sets[0] if case.data_sets else (None, None)
    model = _freeze(case.model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        art = tvmq.compile(model)
    x = _array(inputs[0])
    if x.dtype.name in ("int4", "uint4", "int2", "uint2"):
        x = x.astype(np.int8 if x.dtype.name.startswith("int") else np.uint8)
    got = art.run([x])
    for g, e in zip(got, expected):
        e = _array(e)
        if e.dtype.kind in "iuV" or e.dtype.name in ("int4", "uint4", "int2", "uint2"):
            e = e.astype(np.int64)
            ok = np.array_equal(np.asarray(g).astype(np.int64), e)
        else:
            ok = np.array_equal(np.asarray(g), e)
        if not ok:
            return False, f"mismatch: got {np.asarray(g).ravel()[:6]} expected {e.ravel()[:6]}"
    return True, "exact"


CASES = _cases()


@pytest.mark.build
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance(case):
    why = _skip_reason(case)
    if why:
        pytest.skip(why)
    if case.name in XFAIL:
        pytest.xfail(XFAIL[case.name])
    ok, detail = run_case(case)
    assert ok, f"{case.name}: {detail}"


if __name__ == "__main__":  # python tests/test_onnx_conformance.py: the pass/skip list
    for case in CASES:
        why = _skip_reason(case)
        if why:
            print(f"SKIP {case.name}: {why}")
            continue
        try:
            ok, detail = run_case(case)
        except Exception as err:  # the report lists every failure kind
            ok, detail = False, f"{type(err).__name__}: {str(err).splitlines()[0][:150]}"
        tag = "PASS" if ok else ("XFAIL" if case.name in XFAIL else "FAIL")
        print(f"{tag} {case.name}: {detail}")
