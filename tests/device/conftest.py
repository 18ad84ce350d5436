"""Fixtures for device tests: a real tracker + host RPC servers on free loopback ports.

One tracker and two host servers (``host``, and ``victim`` which a test kills) start once per
session through :func:`tvmq.device.up` / the process helpers, with the state file in a temp dir
so a developer's own ``tvmq device up`` is never touched.
"""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session")
def device_state(tmp_path_factory):
    path = tmp_path_factory.mktemp("device") / "state.json"
    old = os.environ.get("TVMQ_DEVICE_STATE")
    os.environ["TVMQ_DEVICE_STATE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TVMQ_DEVICE_STATE", None)
    else:
        os.environ["TVMQ_DEVICE_STATE"] = old


@pytest.fixture(scope="session")
def rpc_tracker(device_state):
    """``(TrackerAddress, started process entries)`` of a fresh tracker + host servers."""
    from tvmq import device
    from tvmq.device import processes

    port = processes.free_port()
    info = device.up(port=port, host_server=False)
    assert info["started"] == ["tracker"]
    addr = device.TrackerAddress("127.0.0.1", port)
    servers = [processes.spawn_server(addr, key) for key in ("host", "victim")]
    processes.record(servers)  # recorded first: down() stops them even if the wait fails
    processes.wait_registered(addr, servers)
    entries = processes.recorded()
    yield addr, entries
    stopped = device.down()
    assert not processes.recorded()
    assert all(not processes._alive(e["pid"]) for e in entries), stopped


@pytest.fixture(scope="session")
def digits_artifacts(tmp_path_factory):
    """digits_cnn compiled for the host and for arm64-emu (cross), saved."""
    import tvmq
    from tvmq.errors import TvmqError
    from tvmq import models

    root = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    net, x = models.create("digits_cnn").eval(), torch.randn(1, 1, 8, 8)
    host = tvmq.compile(net, x, board="host").save(root / "host")
    try:
        arm = tvmq.compile(net, x, board="arm64-emu").save(root / "arm")
    except TvmqError as err:  # no cross compiler on this machine
        arm = None
        print(f"no arm64 artifact: {err}")
    return host, arm
