"""``connect(device)`` -> :class:`Remote`; ``Remote.bench(artifact)`` checks outputs, then times.

The device runs the artifact with nothing but the TVM runtime: ``lib.so`` is uploaded,
``load_module``-ed and run by a ``relax.VirtualMachine`` on the remote CPU. Results use the
stateful VM API (``set_input`` / ``invoke_stateful`` / ``get_outputs``) because a tuple return
value cannot cross RPC otherwise.
"""
from __future__ import annotations

import gc
import os
import platform
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tvmq.artifact import Artifact, load as load_artifact, load_library
from tvmq.device import tracker as _tracker
from tvmq.device.layers import profile_layers
from tvmq.device.result import BenchResult
from tvmq.errors import DeviceError
from tvmq.layermap import label_rows


class OutputMismatchError(DeviceError):
    """The device computed something other than the host reference."""


def connect(device: str = "local", timeout: float = 60.0, session_timeout: float = 0.0
            ) -> "Remote":
    """Open a session on ``device``: ``"rpc://HOST:PORT/KEY"`` or ``"local"``.

    Parameters
    ----------
    device : str
        ``rpc://HOST:PORT/KEY`` (a tracker and the board key), or ``local``.
    timeout : float
        Seconds to wait for a free board under the key.
    session_timeout : float
        Seconds after which the server ends the session (0: never).
    """
    parsed = _tracker.parse_device(device)
    if parsed is None:
        return Remote(device, None, None)
    addr, key = parsed
    return Remote(device, (addr, key), _tracker.request(addr, key, timeout, session_timeout))


class Remote:
    """An open session on one board (or the local CPU)."""

    def __init__(self, url: str, where, session):
        self.url = url
        self._where = where
        self._session = session

    @property
    def is_local(self) -> bool:
        return self._where is None

    @property
    def key(self) -> str:
        return "local" if self.is_local else self._where[1]

    @property
    def arch(self) -> str | None:
        """The board's ELF machine when known (the local CPU, or a registry board's key)."""
        if self.is_local or self.key == "host":
            return platform.machine()
        from tvmq.boards import list_boards

        arches = {b.arch for b in list_boards() if b.rpc_key == self.key and b.name != "host"}
        return arches.pop() if len(arches) == 1 else None

    def describe(self) -> str:
        if self.is_local:
            return f"local {platform.machine()} CPU ({os.cpu_count()} cores)"
        from tvmq.boards import list_boards

        notes = [b.notes for b in list_boards() if b.rpc_key == self.key and b.notes]
        return f"board {self.key!r} via tracker {self._where[0]}" + (
            f" ({notes[0]})" if notes else "")

    def close(self) -> None:
        """End the session (the server then frees the board for the next request)."""
        self._session = None
        gc.collect()  # remote objects caught in reference cycles would keep the board busy

    def __enter__(self) -> "Remote":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- benchmark ---------------------------------------------------------------------
    def bench(self, artifact, inputs=None, *, reference=None, number: int = 10,
              repeat: int = 10, min_repeat_ms: int = 0, warmup: int = 3,
              per_layer: bool = False, rtol: float = 1e-5, atol: float = 1e-5,
              check: bool = True) -> BenchResult:
        """Check the artifact's outputs on this device, then time it end to end.

        Parameters
        ----------
        artifact : Artifact, str or os.PathLike
            An artifact (or its directory).
        inputs : array, list or dict, optional
            Inputs; default: seeded random inputs of the artifact's input specs.
        reference : list of arrays, Artifact or path, optional
            Expected outputs, or a host-arch artifact of the same model that computes them.
            Default: run ``artifact`` on the host (only possible for a host-arch artifact).
        number, repeat, min_repeat_ms : int
            ``time_evaluator`` settings: each of ``repeat`` samples averages ``number`` runs
            (more runs if one sample would take under ``min_repeat_ms``).
        warmup : int
            Untimed runs before timing.
        per_layer : bool
            Also time every compiled layer (see :mod:`tvmq.device.layers`).
        rtol, atol : float
            Tolerance of the float output check; integer outputs must match exactly.
        check : bool
            ``False`` skips the output check (the result says so).

        Returns
        -------
        BenchResult
        """
        try:
            return self._bench(artifact, inputs, reference, number, repeat, min_repeat_ms,
                               warmup, per_layer, rtol, atol, check)
        except BaseException as err:
            _drop_remote_refs(err)
            raise

    def _bench(self, artifact, inputs, reference, number, repeat, min_repeat_ms, warmup,
               per_layer, rtol, atol, check) -> BenchResult:
        if not self.is_local and self._session is None:
            raise DeviceError(f"the session on {self.url} is closed", "connect() again")
        art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
        self._check_arch(art)
        arrays = art.check_inputs(inputs if inputs is not None else _default_inputs(art))
        expected = _reference(art, arrays, reference) if check else None
        with _device_errors(self):
            vm, dev, root = self._load(art)
            outputs = self._run(vm, dev, arrays)
            max_err = _compare(outputs, expected, rtol, atol) if check else None
            samples = self._time(vm, dev, number, repeat, min_repeat_ms, warmup)
            layers, method = (profile_layers(self._session, root, dev, number, repeat,
                                             self._local_library(root)) if per_layer
                              else (None, None))
        label_rows(layers, art.meta.get("layers"))  # the user's layer names, bit widths
        return self._result(art, samples, number, repeat, min_repeat_ms, warmup, check,
                            max_err, layers, method)

    def _check_arch(self, art: Artifact) -> None:
        want, have = art.meta["board"]["arch"], self.arch
        if have is not None and want != have:
            raise DeviceError(
                f"artifact is built for {art.meta['board']['name']} ({want}) but device "
                f"{self.url!r} is {have}",
                f"recompile for this device (tvmq compile --board ...), or bench on a {want} "
                f"board: --device rpc://HOST:PORT/{art.meta['board']['name']}")

    def _load(self, art: Artifact):
        from tvmq._tvm import relax, tvm

        lib_path = _lib_path(art)
        if art.executable is None:
            art.verified_lib_path()
        if self.is_local:
            root = load_library(lib_path)
            dev = tvm.cpu()
        else:
            self._session.upload(str(lib_path), "tvmq_lib.so")
            try:
                root = self._session.load_module("tvmq_lib.so")
            except Exception as err:
                if _is_loader_error(err):
                    raise DeviceError(
                        f"the board cannot load the artifact built for "
                        f"{art.meta['board']['name']} ({art.meta['board']['arch']}): "
                        f"{_last_line(err)}",
                        "recompile for the board's architecture (tvmq compile --board ...)"
                    ) from err
                raise
            dev = self._session.cpu()
        return relax.VirtualMachine(root, dev), dev, root

    @staticmethod
    def _run(vm, dev, arrays) -> list[np.ndarray]:
        from tvmq._tvm import tvm
        from tvmq.artifact import _flatten_outputs

        vm.set_input("main", *[tvm.runtime.tensor(a, dev) for a in arrays])
        vm.invoke_stateful("main")
        return _flatten_outputs(vm.get_outputs("main"))

    @staticmethod
    def _time(vm, dev, number, repeat, min_repeat_ms, warmup) -> list[float]:
        for _ in range(warmup):
            vm.invoke_stateful("main")
        timer = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat,
                                  min_repeat_ms=min_repeat_ms)
        return [float(t) * 1e3 for t in timer("main").results]

    def _local_library(self, root):
        return root.imports[0] if self.is_local and len(root.imports) else None

    def _result(self, art, samples, number, repeat, min_repeat_ms, warmup, check, max_err,
                layers, method) -> BenchResult:
        from tvmq._tvm import TVM_VERSION

        notes = []
        if self.key == "arm64-emu" or "emulat" in self.describe():
            notes.append("emulated board (qemu-user on the host CPU): this latency is "
                         "emulation, not Cortex latency; use it for correctness only")
        if not check:
            notes.append("outputs were NOT checked against a reference")
        return BenchResult(
            artifact=str(getattr(art, "_lib_path", "") or ""), device=self.url,
            device_description=self.describe(), board=art.meta["board"]["name"],
            arch=art.meta["board"]["arch"], samples_ms=samples, number=number, repeat=repeat,
            min_repeat_ms=min_repeat_ms, warmup=warmup, validated=check, max_abs_error=max_err,
            layers=layers, layer_method=method, notes=notes, tvm_version=TVM_VERSION)


def _drop_remote_refs(err: BaseException) -> None:
    """Clear the locals of finished frames in ``err``'s tracebacks: a kept traceback (pytest,
    a REPL) would otherwise hold remote objects, keeping the session and the board busy."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if err.__traceback__ is not None:
            traceback.clear_frames(err.__traceback__.tb_next or err.__traceback__)
        err = err.__cause__ or err.__context__


def _lib_path(art: Artifact) -> Path:
    path = getattr(art, "_lib_path", None)
    if path is None:
        raise DeviceError("this artifact has not been saved yet",
                          "save it first: artifact.save(DIR), then bench DIR")
    return Path(path)


def _default_inputs(art: Artifact) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for spec in art.input_specs:
        dtype = np.dtype(spec["dtype"])
        if np.issubdtype(dtype, np.integer):
            out.append(rng.integers(0, 10, size=spec["shape"]).astype(dtype))
        else:
            out.append(rng.standard_normal(spec["shape"]).astype(dtype))
    return out


def _reference(art: Artifact, arrays, reference) -> list[np.ndarray]:
    if reference is None:
        if art.meta["board"]["arch"] != platform.machine():
            raise DeviceError(
                f"no host reference for a {art.meta['board']['arch']} artifact",
                "pass reference=<expected outputs> or a host artifact of the same model "
                "(tvmq bench --reference HOST_ARTIFACT_DIR), or check=False to skip the check")
        return art.run(arrays)
    if isinstance(reference, (str, os.PathLike, Artifact)):
        ref = reference if isinstance(reference, Artifact) else load_artifact(reference)
        return ref.run(arrays)
    if isinstance(reference, np.ndarray):
        return [reference]
    return [np.asarray(r) for r in reference]


def _compare(outputs: Sequence[np.ndarray], expected: Sequence[np.ndarray], rtol, atol) -> float:
    if len(outputs) != len(expected):
        raise OutputMismatchError(
            f"device returned {len(outputs)} output(s), the reference {len(expected)}",
            "pass the reference of the same model and inputs")
    worst = 0.0
    for i, (got, want) in enumerate(zip(outputs, expected)):
        if got.shape != want.shape:
            raise OutputMismatchError(f"output {i} has shape {got.shape} on the device, "
                                      f"{want.shape} in the reference",
                                      "pass the reference of the same model and inputs")
        err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0))
        exact = np.issubdtype(got.dtype, np.integer)
        ok = np.array_equal(got, want) if exact else np.allclose(got, want, rtol=rtol, atol=atol)
        if not ok:
            raise OutputMismatchError(
                f"output {i} differs from the host reference on {got.size} values: max |err| "
                f"{err:.3g} > {'0 (integer)' if exact else f'atol {atol:g} + rtol {rtol:g}'}",
                "the device computes something else: check the board's TVM version, the "
                "artifact's board, or the reference you passed; no timing was taken")
        worst = max(worst, err)
    return worst


def _is_loader_error(err: Exception) -> bool:
    text = str(err)
    return any(s in text for s in ("ELF", "wrong ELF class", "cannot open shared object",
                                   "Exec format error", "invalid ELF header"))


def _last_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


class _device_errors:
    """Turn RPC failures inside a bench into DeviceErrors that say what happened."""

    def __init__(self, remote: Remote):
        self.remote = remote

    def __enter__(self):
        return self

    def __exit__(self, etype, err, tb):
        if err is None or isinstance(err, (DeviceError, KeyboardInterrupt)):
            return False
        text = str(err)
        if self.remote.is_local:
            raise DeviceError(f"running the artifact failed: {_last_line(err)}",
                              "check the artifact with tvmq run") from err
        if "RPCSessionTimeoutError" in text:
            raise DeviceError(f"the RPC session on {self.remote.url} timed out",
                              "raise session_timeout (or fewer --number/--repeat)") from err
        raise DeviceError(
            f"lost the RPC session with {self.remote.url} mid-run "
            f"(server killed or crashed?): {_last_line(err)}",
            "restart the board's server (`tvmq device up`, or scripts/emulated-board.sh start) "
            "and run again") from err
