"""The compiled artifact: a TVM shared library plus ``meta.json``.

Layout of an artifact directory::

    lib.so      Relax VM executable (weights embedded); loads with tvm.runtime.load_module
    meta.json   inputs, outputs, board, TVM version, per-layer report, sizes

The device needs only the TVM runtime::

    lib = tvm.runtime.load_module("artifact/lib.so")
    vm = tvm.relax.VirtualMachine(lib, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tvmq.errors import ArtifactError, InputMismatchError

LIB_NAME = "lib.so"
META_NAME = "meta.json"
FORMAT_VERSION = 1


class Artifact:
    """A compiled model: ``meta`` (JSON-able dict) and the TVM executable/library."""

    def __init__(self, executable, meta: dict[str, Any], lib_path: Path | None = None):
        self.executable = executable
        self.meta = meta
        self._lib_path = lib_path
        self._vm = None

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact directory atomically (a temp dir renamed into place)."""
        path = Path(path).absolute()
        parent = path.parent
        check_output_dir(path)
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
        except OSError as err:
            raise ArtifactError(f"cannot write artifact to {path}: {err.strerror}",
                                "choose a writable output directory with -o") from err
        try:
            self._export_library(tmp / LIB_NAME)
            self.meta["sizes"]["lib_bytes"] = (tmp / LIB_NAME).stat().st_size
            self.meta["lib_sha256"] = _sha256(tmp / LIB_NAME)
            (tmp / META_NAME).write_text(json.dumps(self.meta, indent=2, sort_keys=True))
            tmp.chmod(0o755)
            _replace_dir(tmp, path)
        except ArtifactError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as err:  # OSError, or the linker's error (it prints its command line)
            shutil.rmtree(tmp, ignore_errors=True)
            raise _write_error(path, err) from err
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._lib_path = path / LIB_NAME
        return path

    def _export_library(self, dest: Path) -> None:
        from tvmq._tvm import cc

        if self.executable is None:
            shutil.copyfile(self._lib_path, dest)
            return
        compiler = self.meta["board"].get("cross_compiler")
        # LLVM's DWARF location lists were ~11% of a MobileNetV2 int8 library (550 KB of
        # 5.1 MB) and grow with the epilogue's code; symbols (perf, gdb backtraces) stay
        if compiler:
            self.executable.export_library(str(dest), fcompile=cc.cross_compiler(compiler),
                                           options=STRIP_DEBUG)
        else:
            self.executable.export_library(str(dest), options=STRIP_DEBUG)

    # ---- execution ---------------------------------------------------------------------
    @property
    def input_specs(self) -> list[dict[str, Any]]:
        return self.meta["inputs"]

    def _vm_local(self):
        from tvmq._tvm import relax, tvm

        if self._vm is None:
            if self.meta["board"]["arch"] != _host_arch():
                raise ArtifactError(
                    f"artifact was built for {self.meta['board']['name']} "
                    f"({self.meta['board']['arch']}), this machine is {_host_arch()}",
                    "run it on the board: tvmq bench ARTIFACT --device rpc://HOST:PORT/KEY")
            lib = self.executable if self.executable is not None else \
                load_library(self.verified_lib_path())
            self._vm = relax.VirtualMachine(lib, tvm.cpu())
        return self._vm

    def verified_lib_path(self) -> Path:
        """``lib.so``'s path, once it is the library ``meta.json`` describes (size, SHA-256
        recorded at save) and this TVM can run it: ``dlopen`` of a truncated library dies
        with SIGBUS, and one from another TVM version may not match this runtime."""
        from tvmq._tvm import TVM_VERSION

        path = Path(self._lib_path)
        built = self.meta.get("tvm_version")
        if built != TVM_VERSION:
            raise ArtifactError(f"{path.parent} was built with TVM {built}, this is TVM "
                                f"{TVM_VERSION}", "recompile the model with this tvmq")
        size, want = path.stat().st_size, self.meta.get("sizes", {}).get("lib_bytes")
        digest = self.meta.get("lib_sha256")
        if (want is not None and size != want) or (digest and _sha256(path) != digest):
            what = f"{size} bytes, meta.json says {want}" if size != want else "its hash differs"
            raise ArtifactError(f"{path} is not the library meta.json describes ({what}): "
                                "truncated, corrupt or replaced", "recompile the model")
        _check_elf(path, self.meta["board"])
        return path

    def check_inputs(self, inputs) -> list[np.ndarray]:
        """Validate count, shape and dtype of ``inputs`` (array, list or name->array dict)."""
        specs = self.input_specs
        if isinstance(inputs, np.ndarray) or hasattr(inputs, "numpy"):
            inputs = [inputs]
        if isinstance(inputs, Mapping):
            missing = [s["name"] for s in specs if s["name"] not in inputs]
            if missing:
                raise InputMismatchError(f"missing input(s) {missing}",
                                         f"pass all of {[s['name'] for s in specs]}")
            inputs = [inputs[s["name"]] for s in specs]
        arrays = [_widen_sub_byte(np.asarray(x.numpy() if hasattr(x, "numpy") else x), spec)
                  for x, spec in zip(inputs, specs)] + \
            [np.asarray(x) for x in list(inputs)[len(specs):]]
        if len(arrays) != len(specs):
            raise InputMismatchError(f"expected {len(specs)} input(s), got {len(arrays)}",
                                     f"pass {[s['name'] for s in specs]}")
        for arr, spec in zip(arrays, specs):
            if list(arr.shape) != list(spec["shape"]):
                raise InputMismatchError(
                    f"input {spec['name']!r} has shape {list(arr.shape)}, expected {spec['shape']}",
                    "reshape the input or recompile with --input-shape")
            if arr.dtype.name != spec["dtype"]:
                raise InputMismatchError(
                    f"input {spec['name']!r} has dtype {arr.dtype.name}, expected {spec['dtype']}",
                    f"convert it: x.astype(np.{spec['dtype']})")
        # np.ascontiguousarray makes a 0-d array 1-d, which the VM rejects for a scalar input
        return [np.require(a, requirements="C") for a in arrays]

    def nonfinite_inputs(self, inputs) -> str | None:
        """A sentence naming the float inputs holding NaN or infinity, or ``None``."""
        bad = []
        for arr, spec in zip(self.check_inputs(inputs), self.input_specs):
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                n = int(arr.size - np.isfinite(arr).sum())
                bad.append(f"{spec['name']!r} ({n} of {arr.size} values)")
        return f"input {', '.join(bad)} holds NaN or infinity" if bad else None

    def run(self, inputs) -> list[np.ndarray]:
        """Run on the local CPU; returns the outputs as NumPy arrays."""
        from tvmq._tvm import tensor

        arrays = self.check_inputs(inputs)
        out = self._vm_local()["main"](*[tensor(a) for a in arrays])
        return _flatten_outputs(out)

    def __repr__(self) -> str:
        return (f"Artifact(board={self.meta['board']['name']!r}, "
                f"inputs={[(s['name'], s['shape']) for s in self.input_specs]})")


#: ml_dtypes sub-byte dtypes -> the 8-bit container the compiled model takes instead
_SUB_BYTE_CONTAINERS = {"int4": "int8", "int2": "int8", "uint4": "uint8", "uint2": "uint8"}


def _widen_sub_byte(arr: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """An ``ml_dtypes`` int4/uint4/int2/uint2 array given for an input that the compiled model
    takes in its 8-bit container (sub-byte ONNX inputs are widened at import)."""
    if _SUB_BYTE_CONTAINERS.get(arr.dtype.name) == spec["dtype"]:
        return arr.astype(spec["dtype"])
    return arr


#: linker options of every exported library: no debug sections
STRIP_DEBUG = ["-Wl,--strip-debug"]


def _flatten_outputs(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    result = []
    for item in out:
        result.extend(_flatten_outputs(item))
    return result


def _host_arch() -> str:
    import platform

    return platform.machine()


def check_output_dir(dest: str | os.PathLike) -> None:
    """Refuse an artifact destination that :meth:`Artifact.save` could not replace: a file,
    or a non-empty directory that is not an artifact (call it before a long compile)."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ArtifactError(f"{dest} exists and is a file, not an artifact directory",
                            "choose a new directory with -o (an artifact is a directory)")
    if dest.is_dir() and not (dest / META_NAME).exists() and any(dest.iterdir()):
        raise ArtifactError(f"{dest} exists and is not a tvmq artifact",
                            "choose a new or empty output directory")
    for parent in dest.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ArtifactError(f"cannot write to {dest}: {parent} is a file",
                                    "choose an output path under a directory")
            break


def _write_error(dest: Path, err: BaseException) -> ArtifactError:
    """One line for a failed write: the disk's state when it is full, else the cause's
    last line (a linker prints its whole command line first)."""
    free = shutil.disk_usage(dest.parent).free if dest.parent.exists() else None
    text = [err.strerror] if getattr(err, "strerror", None) else \
        (str(err).strip().splitlines()[-1:] or [type(err).__name__])
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or \
            "No space left" in str(err) or (free is not None and free < (1 << 20)):
        return ArtifactError(f"cannot write {dest}: no space left on the device "
                             f"({(free or 0) // 1024} KiB free)",
                             "free disk space or choose an output location on another disk")
    return ArtifactError(f"cannot write {dest}: {text[0]}", "choose a writable output location")


#: ELF e_machine -> board arch (``tvmq.boards``)
_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "armv7"}


def _check_elf(path: Path, board: Mapping[str, Any]) -> None:
    """``path`` is a shared library for the arch ``meta.json`` names (dlopen of another arch's
    library, or of a file that is no library, fails inside TVM with its own traceback)."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ArtifactError(f"{path} is not a shared library (no ELF header)",
                            "recompile the model; the file is corrupt or replaced")
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    arch = _ELF_MACHINES.get(machine, f"ELF machine {machine}")
    if arch != board.get("arch"):
        raise ArtifactError(f"{path} is a library for {arch}, but meta.json says "
                            f"{board.get('name')} ({board.get('arch')})",
                            "recompile the model for this board; lib.so and meta.json do not "
                            "belong together")


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` onto ``dest``; an existing artifact is swapped out, never half-overwritten."""
    check_output_dir(dest)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


#: path -> (inode, size, mtime) of each shared library this process has loaded
_LOADED: dict[str, tuple[int, int, int]] = {}


def load_library(path: str | os.PathLike):
    """``tvm.runtime.load_module(path)``, safe against a library replaced at the same path.

    ``dlopen`` hands back the library it already has for a path, so an artifact saved over
    another one's directory (``Artifact.save`` replaces it atomically) and loaded again in the
    same process would silently run the *old* code. A path whose file changed since this
    process loaded it is therefore loaded from a private copy instead.
    """
    from tvmq._tvm import tvm

    path = Path(path).absolute()
    st = path.stat()
    sig, key = (st.st_ino, st.st_size, st.st_mtime_ns), str(path)
    if _LOADED.setdefault(key, sig) == sig:
        return tvm.runtime.load_module(key)
    cache = Path(tempfile.gettempdir()) / f"tvmq-libs-{os.getpid()}"
    cache.mkdir(exist_ok=True)
    fd, copy = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    shutil.copyfile(path, copy)
    try:
        return tvm.runtime.load_module(copy)
    finally:
        os.unlink(copy)  # the loader keeps its mapping; nothing left on disk


def load(path: str | os.PathLike) -> Artifact:
    """Load an artifact directory written by :meth:`Artifact.save`."""
    path = Path(path)
    meta_file, lib_file = path / META_NAME, path / LIB_NAME
    if not meta_file.is_file() or not lib_file.is_file():
        raise ArtifactError(f"{path} is not a tvmq artifact (needs {META_NAME} and {LIB_NAME})",
                            "pass the directory written by `tvmq compile -o DIR`")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as err:
        raise ArtifactError(f"{meta_file} is corrupt: {err}", "recompile the model") from err
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ArtifactError(f"{path} has artifact format {version}, "
                            f"this tvmq reads {FORMAT_VERSION}", "recompile the model")
    missing = [k for k in _REQUIRED_META if k not in meta]
    missing += [f"board.{k}" for k in ("name", "arch") if k not in meta.get("board", {})]
    if missing:
        raise ArtifactError(f"{meta_file} lacks {', '.join(missing)}", "recompile the model")
    return Artifact(None, meta, lib_file)


_REQUIRED_META = ("inputs", "outputs", "board", "tvm_version", "sizes")


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path``, then rename it into place."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"cannot write {path}: it is a directory",
                            f"name a file, e.g. {path / 'out.npy'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:
        raise ArtifactError(f"cannot write {path}: {err.strerror}",
                            "choose a writable output location") from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a written file is not private
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
