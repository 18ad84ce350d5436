"""Run armv7 kernels under ``qemu-arm`` user-mode emulation, without a TVM runtime for armv7.

No TVM runtime wheel exists for 32-bit Arm, so a compiled kernel (one TIR function, exported
as a shared library with ``arm-linux-gnueabihf-gcc``) is called from a small C harness
instead: it ``dlopen``s the library, fills the library's context symbols
(``__TVMBackendParallelLaunch`` runs the parallel tasks one after another,
``__TVMBackendAllocWorkspace`` is ``posix_memalign``), provides the error setter the
generated code calls, passes every argument as a ``DLTensor*`` through the TVM FFI packed-call
ABI (``TVMFFIAny``; the installed ``tvm_ffi`` headers, so the layout is the one the kernel was
compiled against) and reads inputs from / writes outputs to raw files. The harness is built
once per source and header version and cached under ``~/.cache/tvmq/qemu-arm``.

>>> from tvmq.device import qemu_arm
>>> if qemu_arm.unavailable() is None:
...     out, = qemu_arm.run_kernel(lib, [x, wp, np.zeros(shape, "int32")], outputs=[2])

Emulated timing says nothing about a Cortex core: this is for bit-exactness only.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

CROSS = "arm-linux-gnueabihf-gcc"
QEMU = "qemu-arm-static"
SYSROOT = Path("/usr/arm-linux-gnueabihf")
CACHE = Path(os.environ.get("TVMQ_CACHE", Path.home() / ".cache/tvmq")) / "qemu-arm"

_HARNESS_C = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>

typedef struct { void* sync_handle; int32_t num_task; } ParallelEnv;
typedef int (*ParallelLambda)(int task_id, ParallelEnv* penv, void* cdata);

static int parallel_launch(ParallelLambda f, void* cdata, int num_task) {
  ParallelEnv env = {NULL, num_task > 0 ? num_task : 1};
  for (int i = 0; i < env.num_task; ++i)
    if (f(i, &env, cdata) != 0) return -1;
  return 0;
}
static int parallel_barrier(int task_id, ParallelEnv* penv) { return 0; }
static void* alloc_workspace(int dev_type, int dev_id, uint64_t nbytes, int code, int bits) {
  void* p = NULL;
  return posix_memalign(&p, 64, nbytes ? (size_t)nbytes : 1) ? NULL : p;
}
static int free_workspace(int dev_type, int dev_id, void* ptr) { free(ptr); return 0; }

/* called by the generated code when an argument check fails */
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  fprintf(stderr, "%s: ", kind);
  for (int i = 0; i < n; ++i) if (parts[i]) fputs(parts[i], stderr);
  fputc('\n', stderr);
}
void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* msg) {
  fprintf(stderr, "%s: %s\n", kind, msg);
}

static int fail(const char* what, const char* path) {
  fprintf(stderr, "%s %s\n", what, path);
  return 2;
}

static void set_ctx(void* lib, const char* name, void* value) {
  void** slot = (void**)dlsym(lib, name);
  if (slot) *slot = value;
}

/* usage: harness LIB SYMBOL SPEC; SPEC lines: "in|out code bits ndim d0 .. dn-1 path" */
int main(int argc, char** argv) {
  if (argc != 4) { fprintf(stderr, "usage: %s LIB SYMBOL SPEC\n", argv[0]); return 2; }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
  set_ctx(lib, "__TVMBackendParallelLaunch", (void*)parallel_launch);
  set_ctx(lib, "__TVMBackendParallelBarrier", (void*)parallel_barrier);
  set_ctx(lib, "__TVMBackendAllocWorkspace", (void*)alloc_workspace);
  set_ctx(lib, "__TVMBackendFreeWorkspace", (void*)free_workspace);
  TVMFFISafeCallType fn = (TVMFFISafeCallType)dlsym(lib, argv[2]);
  if (!fn) { fprintf(stderr, "no symbol %s\n", argv[2]); return 2; }
  FILE* spec = fopen(argv[3], "r");
  if (!spec) { perror(argv[3]); return 2; }
  DLTensor t[16]; int64_t shapes[16][8]; char paths[16][512]; int is_out[16];
  TVMFFIAny args[16];
  int n = 0;
  char kind[8];
  unsigned code, bits;
  int ndim;
  while (n < 16 && fscanf(spec, "%7s %u %u %d", kind, &code, &bits, &ndim) == 4) {
    size_t bytes = (bits + 7) / 8;
    if (ndim < 0 || ndim > 8) return 2;
    for (int d = 0; d < ndim; ++d) {
      long long v;
      if (fscanf(spec, "%lld", &v) != 1) return 2;
      shapes[n][d] = v;
      bytes *= (size_t)v;
    }
    if (fscanf(spec, "%511s", paths[n]) != 1) return 2;
    is_out[n] = strcmp(kind, "out") == 0;
    void* data = NULL;
    if (posix_memalign(&data, 64, bytes ? bytes : 1)) return 2;
    memset(data, 0, bytes);
    FILE* f = fopen(paths[n], "rb");
    if (!f || fread(data, 1, bytes, f) != bytes) return fail("cannot read", paths[n]);
    fclose(f);
    memset(&t[n], 0, sizeof(DLTensor));
    t[n].data = data;
    t[n].device.device_type = kDLCPU;
    t[n].ndim = ndim;
    t[n].dtype.code = (uint8_t)code;
    t[n].dtype.bits = (uint8_t)bits;
    t[n].dtype.lanes = 1;
    t[n].shape = shapes[n];
    memset(&args[n], 0, sizeof(TVMFFIAny));
    args[n].type_index = kTVMFFIDLTensorPtr;
    args[n].v_ptr = &t[n];
    ++n;
  }
  fclose(spec);
  TVMFFIAny result;
  memset(&result, 0, sizeof(result));
  int rc = fn(NULL, args, n, &result);
  if (rc != 0) { fprintf(stderr, "kernel returned %d\n", rc); return 1; }
  for (int i = 0; i < n; ++i) {
    if (!is_out[i]) continue;
    size_t bytes = (t[i].dtype.bits + 7) / 8;
    for (int d = 0; d < t[i].ndim; ++d) bytes *= (size_t)t[i].shape[d];
    FILE* f = fopen(paths[i], "wb");
    if (!f || fwrite(t[i].data, 1, bytes, f) != bytes) return fail("cannot write", paths[i]);
    fclose(f);
  }
  return 0;
}
"""

_DL_CODE = {"i": 0, "u": 1, "f": 2}


def unavailable() -> str | None:
    """Why armv7 kernels cannot run here (a missing tool, with the fix), or None."""
    if shutil.which(CROSS) is None:
        return f"{CROSS} not installed (fix: apt-get install gcc-arm-linux-gnueabihf)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} not installed (fix: apt-get install qemu-user-static)"
    if not (SYSROOT / "lib" / "ld-linux-armhf.so.3").exists():
        return f"no armhf C library under {SYSROOT} (fix: apt-get install libc6-armhf-cross)"
    return None


def _ffi_include() -> Path:
    import tvm_ffi

    return Path(tvm_ffi.__file__).parent / "include"


def harness() -> Path:
    """The harness executable (built with ``arm-linux-gnueabihf-gcc`` once, cached)."""
    inc = _ffi_include()
    key = hashlib.sha256(_HARNESS_C.encode() + (inc / "tvm/ffi/c_api.h").read_bytes()
                         + (inc / "dlpack/dlpack.h").read_bytes()).hexdigest()[:16]
    exe = CACHE / f"harness-{key}"
    if exe.exists():
        return exe
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        src = Path(tmp) / "harness.c"
        src.write_text(_HARNESS_C)
        # -rdynamic: the kernel library resolves the error setters against the executable
        subprocess.run([CROSS, "-O1", "-std=c11", "-D_POSIX_C_SOURCE=200809L", f"-I{inc}",
                        "-rdynamic", "-o", f"{tmp}/harness", str(src), "-ldl"],
                       check=True, capture_output=True, text=True)
        os.replace(f"{tmp}/harness", exe)  # atomic: concurrent builders agree
    return exe


def export(lib, path: str | os.PathLike) -> Path:
    """Write ``lib`` (a TIR build for an armv7 target) as a shared library for the harness."""
    from tvmq._tvm import cc

    lib.export_library(str(path), fcompile=cc.cross_compiler(CROSS))
    return Path(path)


def run_kernel(lib, args: list[np.ndarray], outputs: list[int], symbol: str = "__tvm_ffi_main",
               timeout: float = 300.0) -> list[np.ndarray]:
    """Call a compiled armv7 kernel under ``qemu-arm`` with ``args`` (C-contiguous arrays).

    ``lib`` is a TIR build (``tvm.compile`` of a PrimFunc module) or the path of one already
    exported with :func:`export`; ``outputs`` are the indices of the arguments the kernel
    writes, returned in that order.
    """
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot run armv7 kernels: {reason}")
    exe = harness()
    with tempfile.TemporaryDirectory(prefix="tvmq-qemu-arm-") as tmp:
        so = Path(lib) if isinstance(lib, (str, os.PathLike)) else export(lib, Path(tmp) / "k.so")
        lines = []
        for i, a in enumerate(args):
            a = np.ascontiguousarray(a)
            path = Path(tmp) / f"arg{i}.bin"
            path.write_bytes(a.tobytes())
            dims = " ".join(str(d) for d in a.shape)
            lines.append(f"{'out' if i in outputs else 'in'} {_DL_CODE[a.dtype.kind]} "
                         f"{a.dtype.itemsize * 8} {a.ndim} {dims} {path}")
        (Path(tmp) / "spec.txt").write_text("\n".join(lines) + "\n")
        proc = subprocess.run([QEMU, "-L", str(SYSROOT), str(exe), str(so), symbol,
                               str(Path(tmp) / "spec.txt")],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"armv7 kernel failed under {QEMU} (exit {proc.returncode}): "
                               f"{proc.stderr.strip()[-2000:]}")
        return [np.frombuffer((Path(tmp) / f"arg{i}.bin").read_bytes(), args[i].dtype)
                .reshape(args[i].shape).copy() for i in outputs]
