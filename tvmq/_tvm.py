"""The one place that imports TVM modules which moved between releases.

TVM 0.25-0.27 renamed many modules (``tvm.tir`` -> ``tvm.tirx``, ``tvm.meta_schedule`` ->
``tvm.s_tir.meta_schedule``, ``tvm.contrib.cc`` -> ``tvm.support.cc`` ...). Every other tvmq
module imports them from here, so the next TVM bump touches one file.
"""
from __future__ import annotations

import os

import tvm
from tvm import relax, te, topi
from tvm.relax.frontend import detach_params
from tvm.relax.frontend.torch import from_exported_program
from tvm.relax.frontend.onnx import from_onnx
from tvm.support import cc
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T
from tvm import tirx as tir

TVM_VERSION: str = tvm.__version__


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topo}/physical_package_id") as f1, open(f"{topo}/core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


# TVM's CPU thread pool assumes every x86 machine is hyper-threaded and starts half as many
# threads as there are logical CPUs unless told otherwise: on a 2-vCPU host without SMT that
# is one thread, and every compiled model ran at half speed (ResNet-18 int8: 6.4 vs 3.3 ms).
# The pool reads this variable when it starts (first parallel kernel), so setting it at
# import is enough; a user's own TVM_NUM_THREADS / OMP_NUM_THREADS wins.
if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["TVM_NUM_THREADS"] = str(physical_cores())

# Relax constants are ``tvm.ir.expr.Constant`` (``GenericConst``) in 0.27; ``relax.Constant``
# before.
Constant = getattr(relax, "Constant", None) or tvm.ir.expr.Constant

# A TIR buffer load is ``tvm.ir.TensorLoad`` (its buffer in ``.source``) in 0.27;
# ``tir.BufferLoad`` (``.buffer``) before.
TensorLoad = getattr(tvm.ir, "TensorLoad", None) or tir.BufferLoad

# ``tvm.ir.structural_hash`` moved to ``tvm_ffi`` in 0.27
structural_hash = getattr(tvm.ir, "structural_hash", None)
if structural_hash is None:
    from tvm_ffi import structural_hash


def loaded_buffer(load):
    """The buffer a :data:`TensorLoad` reads."""
    source = getattr(load, "source", None)  # an Expr: no truth value
    return load.buffer if source is None else source


def meta_schedule():
    """Return ``tvm.s_tir.meta_schedule`` (imported lazily: it is slow to import)."""
    from tvm.s_tir import meta_schedule as ms

    return ms


def derived_object(cls):
    """``tvm.ir.utils.derived_object`` (was ``meta_schedule.utils.derived_object``)."""
    from tvm.ir.utils import derived_object as _derived

    return _derived(cls)


def s_tir():
    """Return ``tvm.s_tir`` (scheduling TIR: ``Schedule``, dlight, tensor intrinsics)."""
    from tvm import s_tir as _s

    return _s


def rpc():
    """Return ``tvm.rpc``."""
    from tvm import rpc as _rpc

    return _rpc


def struct_shape(var) -> tuple[int, ...]:
    """Static shape of a Relax tensor var/expr (``var.ty`` in 0.27, ``struct_info`` before)."""
    ty = getattr(var, "ty", None) or var.struct_info
    return tuple(int(d) for d in ty.shape)


def struct_dtype(var) -> str:
    ty = getattr(var, "ty", None) or var.struct_info
    return str(ty.dtype)


def const_value(const) -> "tvm.runtime.Tensor":
    """The runtime tensor of a Relax constant (``.value`` in 0.27, ``.data`` before)."""
    return const.value if hasattr(const, "value") else const.data


def target_has_features(target, *features: str) -> bool:
    """Whether LLVM reports all ``features`` (``"avx512vnni"``, ``"dotprod"`` ...) for ``target``."""
    from tvm.target import codegen

    return bool(codegen.target_has_features(list(features), target))


def tensor(array, device=None):
    """Create a runtime tensor from a NumPy array."""
    return tvm.runtime.tensor(array, device=device or tvm.cpu())


__all__ = [
    "tvm", "relax", "te", "topi", "tir", "I", "R", "T", "cc", "detach_params",
    "from_exported_program", "from_onnx", "TVM_VERSION", "meta_schedule", "derived_object", "s_tir", "rpc",
    "struct_shape", "struct_dtype", "const_value", "tensor", "Constant",
    "target_has_features",
]
