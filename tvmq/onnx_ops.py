"""ONNX op converters tvmq adds to Relax's ONNX frontend.

``EXTRA_CONVERTERS`` maps an ONNX op type to an ``OnnxOpConverter`` subclass. They are
registered only inside :func:`registered`, so importing tvmq never changes TVM globally.
"""
from __future__ import annotations

import contextlib

EXTRA_CONVERTERS: dict[str, type] = {}


@contextlib.contextmanager
def registered():
    """Make ``EXTRA_CONVERTERS`` visible to ``from_onnx`` for the duration of the block."""
    from tvm.relax.frontend.onnx import onnx_frontend as frontend

    original = frontend._get_convert_map

    def _patched():
        table = dict(original())
        table.update(EXTRA_CONVERTERS)
        return table

    frontend._get_convert_map = _patched
    try:
        yield
    finally:
        frontend._get_convert_map = original
