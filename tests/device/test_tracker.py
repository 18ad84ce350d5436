"""Address parsing, bytecode/signature parsing, and tracker errors (no board needed)."""
from __future__ import annotations

import time

import pytest

from tvmq.device import layers, processes, tracker
from tvmq.errors import DeviceError


def test_parse_device():
    assert tracker.parse_device("local") is None
    addr, key = tracker.parse_device("rpc://10.0.0.2:9000/rasp4b")
    assert (addr.host, addr.port, key) == ("10.0.0.2", 9000, "rasp4b")


def test_parse_device_defaults_from_env(monkeypatch):
    monkeypatch.setenv("TVM_TRACKER_HOST", "192.168.1.5")
    monkeypatch.setenv("TVM_TRACKER_PORT", "9300")
    monkeypatch.setenv("TVM_TRACKER_KEY", "rpi5")
    addr, key = tracker.parse_device("rpc://")
    assert (addr.host, addr.port, key) == ("192.168.1.5", 9300, "rpi5")


@pytest.mark.parametrize("url", ["ssh://x/y", "rpc://127.0.0.1:9190"])
def test_parse_device_rejects(url, monkeypatch):
    monkeypatch.delenv("TVM_TRACKER_KEY", raising=False)
    with pytest.raises(DeviceError, match="fix:"):
        tracker.parse_device(url)


def test_tracker_unreachable_is_a_device_error():
    port = processes.free_port()
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=r"cannot reach the RPC tracker.*tvmq device up"):
        tracker.request(tracker.TrackerAddress("127.0.0.1", port), "host", timeout=2)
    assert time.monotonic() - t0 < 10, "bounded backoff, not TVM's 60 s retry"


def test_called_primfuncs_and_signature():
    text = ("@main:\n  call  vm.builtin.alloc_tensor in: %1, i0, c[5], c[0] dst: %2\n"
            "  call  fused_conv2d_add_relu in: %0, c[6], c[7], %2 dst: %void\n"
            "  ret   %10\n\n@fused_conv2d_add_relu packed_func;\n")
    assert layers.called_primfuncs(text) == ["fused_conv2d_add_relu"]
    msg = ("Expected 2 arguments when calling:\n  `mean(lv: Tensor([T.int64(1), T.int64(32)], "
           "int8), out: Tensor([T.int64(10)], float32))`")
    assert layers.parse_signature(msg) == [((1, 32), "int8"), ((10,), "float32")]
    assert layers.parse_signature("f(n: int64)") is None
