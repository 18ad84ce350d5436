"""QDQ ONNX models produced by third-party quantizers (NNCF and Brevitas), for tvmq tests.

Two small float PyTorch architectures are defined here, written the way people usually write
them (layers as attributes, an explicit ``forward``):

* :class:`ResNetAttr` -- a two-block ResNet (the second block strided, with a 1x1 downsample);
* :class:`BranchyNet` -- depthwise conv + BN, Hardswish, a pointwise conv, two branches joined
  with ``torch.cat``.

and two producers turn them into quantized ONNX files:

* :func:`nncf_qdq` exports the float model to ONNX and runs NNCF's post-training quantization
  on the ONNX model (NNCF's ONNX backend): ``QuantizeLinear -> DequantizeLinear`` pairs;
* :func:`brevitas_qdq` rebuilds the same architecture from Brevitas QAT layers, initialises the
  quantizers with a few train-mode forwards, and exports with ``export_onnx_qcdq`` through
  either of Brevitas' two ONNX paths (TorchScript or ``torch.export``/dynamo):
  ``QuantizeLinear -> [Clip] -> DequantizeLinear`` chains.

The module has no pytest dependence. ``python -m tests.thirdparty_models OUT_DIR`` writes every
combination and runs each file in onnxruntime (all graph optimizations off).

What each Brevitas export path emits (brevitas 0.13.4, torch 2.13, observed here):

* ``export="torchscript"`` (``StdQCDQONNXManager``, ``dynamo=False``): weights are exported as
  *integer* initializers (``export_weight_q_node=False`` is the default), so a weight reads
  ``int8 initializer -> [Clip] -> DequantizeLinear -> Conv``; Brevitas forces
  ``keep_initializers_as_inputs=True`` unless told otherwise, so every initializer is also
  listed as a graph input. The result goes through onnxoptimizer's
  ``extract_constant_to_initializer`` and ``eliminate_unused_initializer`` passes.
* ``export="dynamo"`` (``StdQCDQONNXDynamoManager``, ``dynamo=True``): integer weight export
  relies on ``data_ptr()``, which FakeTensors lack, so this path requires (and defaults to)
  ``export_weight_q_node=True``: a weight reads
  ``float initializer -> QuantizeLinear -> [Clip] -> DequantizeLinear -> Conv``. No
  onnxoptimizer pass is run; ``keep_initializers_as_inputs=True`` is forced here too, and
  torch's dynamo exporter honours it, so *all* initializers (weights, scales, zero points,
  Clip bounds) are graph inputs as well. The graph is opset 18 (see :data:`OPSET_DYNAMO`),
  with ``ReduceMean`` + ``Reshape`` where TorchScript writes ``GlobalAveragePool`` + ``Flatten``.

``Clip`` appears wherever the integer range is narrower than the int8/uint8 container: every
weight (Brevitas' default weight quantizers are narrow-range, e.g. [-127, 127]) and every
activation below 8 bits (e.g. [0, 15] for a 4-bit ReLU).
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

INPUT_NAME = "x"
OUTPUT_NAME = "y"
INPUT_SHAPE = (1, 3, 32, 32)
OPSET = 17
#: opset asked of Brevitas' dynamo path. torch's dynamo exporter builds opset 18 graphs; asking
#: it for 17 makes it run onnx's version converter, which fails on the ReduceMean (axes given as
#: an input) that AdaptiveAvgPool2d lowers to, logs the traceback and leaves the file at 18.
OPSET_DYNAMO = 18
NUM_CLASSES = 10

#: bits spec -> (weight bit width, activation bit width)
BITS: Dict[str, Tuple[int, int]] = {"w8a8": (8, 8), "w4a8": (4, 8), "w4a4": (4, 4)}
EXPORTS = ("dynamo", "torchscript")
NNCF_PRESETS = ("default", "mixed")
MODEL_NAMES = ("ResNetAttr", "BranchyNet")

#: op types reported in the summary line
SUMMARY_OPS = ("QuantizeLinear", "DequantizeLinear", "Clip", "Conv", "Gemm")


# ---------------------------------------------------------------------------------------------
# Float models
# ---------------------------------------------------------------------------------------------


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


class FloatLayers:
    """Layer factory of the float models (quantizers are identities)."""

    def conv(self, cin, cout, k, stride=1, pad=0, groups=1, bias=False) -> nn.Module:
        return nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=bias)

    def linear(self, cin, cout) -> nn.Module:
        return nn.Linear(cin, cout)

    def relu(self) -> nn.Module:
        return nn.ReLU()

    def quant(self, signed: bool = True) -> nn.Module:
        return nn.Identity()


class BrevitasLayers(FloatLayers):
    """Layer factory of the Brevitas models: QuantConv2d / QuantLinear at ``wbits``,
    QuantReLU / QuantIdentity at ``abits`` (BatchNorm stays a float ``nn.BatchNorm2d``,
    exported as ONNX ``BatchNormalization``). Holds plain ints only (models deep-copy)."""

    def __init__(self, wbits: int, abits: int):
        self.wbits, self.abits = wbits, abits

    def conv(self, cin, cout, k, stride=1, pad=0, groups=1, bias=False) -> nn.Module:
        import brevitas.nn as qnn

        return qnn.QuantConv2d(cin, cout, k, stride=stride, padding=pad, groups=groups,
                               bias=bias, weight_bit_width=self.wbits)

    def linear(self, cin, cout) -> nn.Module:
        import brevitas.nn as qnn

        return qnn.QuantLinear(cin, cout, bias=True, weight_bit_width=self.wbits)

    def relu(self) -> nn.Module:
        import brevitas.nn as qnn

        return qnn.QuantReLU(bit_width=self.abits, return_quant_tensor=False)

    def quant(self, signed: bool = True) -> nn.Module:
        import brevitas.nn as qnn

        if signed:
            return qnn.QuantIdentity(bit_width=self.abits, return_quant_tensor=False)
        return self.relu()


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + skip (identity or 1x1 conv+BN), then ReLU. Both addends
    pass one shared quantizer (Brevitas: a ``QuantIdentity``, so they share a scale)."""

    def __init__(self, cin: int, cout: int, stride: int, L: FloatLayers):
        super().__init__()
        self.conv1 = L.conv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = L.relu()
        self.conv2 = L.conv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample_conv: Optional[nn.Module] = None
        self.downsample_bn: Optional[nn.BatchNorm2d] = None
        if stride != 1 or cin != cout:
            self.downsample_conv = L.conv(cin, cout, 1, stride, 0)
            self.downsample_bn = nn.BatchNorm2d(cout)
        self.add_quant = L.quant(signed=True)
        self.relu2 = L.relu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample_conv is not None:
            identity = self.downsample_bn(self.downsample_conv(x))
        return self.relu2(self.add_quant(out) + self.add_quant(identity))


class _Net(nn.Module):
    """Shared frame of the two nets: seeded init, an input quantizer, a global-pool +
    quantized Linear head, BatchNorm statistics randomized, eval mode."""

    def __init__(self, seed: int, layers: Optional[FloatLayers]):
        super().__init__()
        _seeded(seed)
        self.L = layers or FloatLayers()
        self.input_quant = self.L.quant(signed=True)

    def _head(self, features: int, num_classes: int) -> None:
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc_quant = self.L.quant(signed=False)
        self.fc = self.L.linear(features, num_classes)
        _randomize_bn(self)
        self.eval()

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc_quant(torch.flatten(self.avgpool(x), 1)))


class ResNetAttr(_Net):
    """Small ResNet: stem conv3x3(3->16)+BN+ReLU, maxpool, two basic blocks (the second with
    stride 2 and a 1x1 downsample), global average pool, Linear(->10). Input 1x3x32x32."""

    def __init__(self, seed: int = 0, num_classes: int = NUM_CLASSES,
                 layers: Optional[FloatLayers] = None):
        super().__init__(seed, layers)
        L = self.L
        self.conv1 = L.conv(3, 16, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = L.relu()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(16, 16, 1, L)
        self.layer2 = BasicBlock(16, 32, 2, L)
        self._head(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.input_quant(x)))))
        return self.classify(self.layer2(self.layer1(x)))


class BranchyNet(_Net):
    """Stem conv, depthwise conv (groups=C)+BN, Hardswish, 1x1 pointwise conv, two branches
    (3x3 conv / 1x1 conv) concatenated on channels, global average pool, Linear. Input
    1x3x32x32. Brevitas: Hardswish stays float, followed by a ``QuantIdentity``; the
    concatenation joins two ``QuantReLU`` outputs and is re-quantized."""

    def __init__(self, seed: int = 0, num_classes: int = NUM_CLASSES,
                 layers: Optional[FloatLayers] = None):
        super().__init__(seed, layers)
        L = self.L
        self.stem = L.conv(3, 16, 3, 2, 1)
        self.stem_bn = nn.BatchNorm2d(16)
        self.stem_relu = L.relu()
        self.dw = L.conv(16, 16, 3, 1, 1, groups=16)
        self.dw_bn = nn.BatchNorm2d(16)
        self.hswish = nn.Hardswish()
        self.hswish_quant = L.quant(signed=True)
        self.pw = L.conv(16, 24, 1, bias=True)
        self.pw_relu = L.relu()
        self.branch_a = L.conv(24, 16, 3, 1, 1, bias=True)
        self.branch_a_relu = L.relu()
        self.branch_b = L.conv(24, 8, 1, bias=True)
        self.branch_b_relu = L.relu()
        self.cat_quant = L.quant(signed=False)
        self._head(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_relu(self.stem_bn(self.stem(self.input_quant(x))))
        x = self.hswish_quant(self.hswish(self.dw_bn(self.dw(x))))
        x = self.pw_relu(self.pw(x))
        a = self.branch_a_relu(self.branch_a(x))
        b = self.branch_b_relu(self.branch_b(x))
        return self.classify(self.cat_quant(torch.cat([a, b], dim=1)))


def _randomize_bn(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial (but deterministic, from the current torch seed)
    statistics and affine parameters, so BN folding is actually exercised."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)


FLOAT_MODELS: Dict[str, Callable[..., nn.Module]] = {
    "ResNetAttr": ResNetAttr,
    "BranchyNet": BranchyNet,
}


def float_model(name: str, seed: int = 0) -> nn.Module:
    """The float model called ``name`` ("ResNetAttr" or "BranchyNet"), in eval mode."""
    return FLOAT_MODELS[name](seed=seed)


# ---------------------------------------------------------------------------------------------
# NNCF (post-training quantization on the ONNX model)
# ---------------------------------------------------------------------------------------------


def export_float_onnx(model: nn.Module, shape: Sequence[int], path) -> Path:
    """Export a float model with the TorchScript exporter (opset 17, input "x")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.randn(*shape),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
        )
    return path


def calibration_inputs(shape: Sequence[int], n: int = 4, seed: int = 0) -> List[np.ndarray]:
    """``n`` random normal float32 inputs from ``numpy.random.RandomState(seed)``."""
    rs = np.random.RandomState(seed)
    return [rs.randn(*shape).astype(np.float32) for _ in range(n)]


def nncf_qdq(model: nn.Module, shape: Sequence[int], path, preset: str = "default",
             seed: int = 0, n_calib: int = 4) -> Path:
    """Quantize ``model`` with NNCF's ONNX backend and save the QDQ model to ``path``.

    ``preset`` "default" -> ``QuantizationPreset.PERFORMANCE`` (symmetric activations),
    "mixed" -> ``QuantizationPreset.MIXED`` (asymmetric activations, symmetric weights).
    """
    import nncf
    import onnx

    presets = {"default": nncf.QuantizationPreset.PERFORMANCE,
               "mixed": nncf.QuantizationPreset.MIXED}
    if preset not in presets:
        raise ValueError(f"unknown NNCF preset {preset!r}, expected one of {sorted(presets)}")
    path = Path(path)
    float_path = path.with_name(path.stem + ".float.onnx")
    export_float_onnx(model, shape, float_path)
    float_onnx = onnx.load(str(float_path))
    float_path.unlink()

    data = calibration_inputs(shape, n=n_calib, seed=seed)
    dataset = nncf.Dataset(data, lambda a: {INPUT_NAME: a})
    quantized = nncf.quantize(float_onnx, dataset, preset=presets[preset], subset_size=n_calib)
    onnx.save(quantized, str(path))
    return path


# ---------------------------------------------------------------------------------------------
# Brevitas (QAT layers, exported through export_onnx_qcdq)
# ---------------------------------------------------------------------------------------------


def brevitas_model(model_name: str, bits: str = "w8a8", seed: int = 0,
                   shape: Sequence[int] = INPUT_SHAPE, n_init: int = 2) -> nn.Module:
    """A Brevitas model with initialised quantizers, in eval mode.

    The float weights come from :func:`float_model` (same ``seed``), so the Brevitas model
    approximates the float one. ``n_init`` train-mode forwards on random normal batches
    initialise the activation scales (no training happens: no optimizer step)."""
    if bits not in BITS:
        raise ValueError(f"unknown bits {bits!r}, expected one of {sorted(BITS)}")
    wbits, abits = BITS[bits]
    ref = float_model(model_name, seed=seed)
    model = FLOAT_MODELS[model_name](seed=seed, layers=BrevitasLayers(wbits, abits))
    model.load_state_dict(ref.state_dict(), strict=False)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(n_init):
            model(torch.randn(4, *shape[1:], generator=gen))
    return model.eval()


def brevitas_export_kwargs(export: str) -> dict:
    """Keyword arguments given to ``brevitas.export.export_onnx_qcdq`` for each path.

    ``dynamo=True`` routes to ``StdQCDQONNXDynamoManager`` (torch.export; weights exported as
    float + QuantizeLinear, ``export_weight_q_node=True`` being its default and its only
    supported value); ``dynamo=False`` routes to ``StdQCDQONNXManager`` (TorchScript tracer;
    integer weights). Brevitas picks dynamo by default on torch >= 2.9, so the flag is always
    passed explicitly."""
    common = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    if export == "dynamo":
        return dict(common, dynamo=True, optimize=True, opset_version=OPSET_DYNAMO)
    if export == "torchscript":
        return dict(common, dynamo=False, opset_version=OPSET)
    raise ValueError(f"unknown export path {export!r}, expected one of {EXPORTS}")


def brevitas_qdq(model_name: str, bits: str = "w8a8", path=None, export: str = "dynamo",
                 seed: int = 0, shape: Sequence[int] = INPUT_SHAPE) -> Path:
    """Build ``model_name`` from Brevitas QAT layers at ``bits`` ("w8a8", "w4a8", "w4a4"),
    initialise its quantizers and export it as a QCDQ ONNX model to ``path`` through the
    ``export`` path ("dynamo" or "torchscript")."""
    from brevitas.export import export_onnx_qcdq

    if path is None:
        raise ValueError("brevitas_qdq needs an output path")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = brevitas_model(model_name, bits, seed=seed, shape=shape)
    gen = torch.Generator().manual_seed(seed + 1)
    example = torch.randn(*shape, generator=gen)
    export_onnx_qcdq(model, args=example, export_path=str(path), **brevitas_export_kwargs(export))
    return path


# ---------------------------------------------------------------------------------------------
# Inspection / running
# ---------------------------------------------------------------------------------------------


def op_counts(model) -> collections.Counter:
    """Op-type counts of the main graph (and of any local functions)."""
    counts = collections.Counter(n.op_type for n in model.graph.node)
    for fn in model.functions:
        counts.update(n.op_type for n in fn.node)
    return counts


def initializers_as_inputs(model) -> int:
    """How many initializers are also listed as graph inputs."""
    inits = {t.name for t in model.graph.initializer}
    return sum(1 for i in model.graph.input if i.name in inits)


def weight_chain(model, op_type: str = "Conv") -> str:
    """The producer chain of the first ``op_type`` node's weight (input 1), e.g.
    ``"int8 initializer -> Clip -> DequantizeLinear"``."""
    import onnx

    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    node = next((n for n in model.graph.node if n.op_type == op_type), None)
    if node is None or len(node.input) < 2:
        return "-"
    chain: List[str] = []
    name = node.input[1]
    while name in producers:
        prod = producers[name]
        chain.append(prod.op_type)
        if prod.op_type == "Constant":
            break
        name = prod.input[0]
    if name in inits:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inits[name].data_type).name
        chain.append(f"{dtype} initializer")
    elif chain and chain[-1] == "Constant":
        pass
    else:
        chain.append(f"graph input {name}")
    return " -> ".join(reversed(chain))


def run_onnxruntime(path, shape: Sequence[int] = INPUT_SHAPE, seed: int = 0) -> np.ndarray:
    """Run the model at ``path`` once in onnxruntime, graph optimizations disabled."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # no "initializer appears in graph inputs" warnings
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.RandomState(seed).randn(*shape).astype(np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def brevitas_reference(model_name: str, bits: str = "w8a8", seed: int = 0,
                       shape: Sequence[int] = INPUT_SHAPE, input_seed: int = 0) -> np.ndarray:
    """The Brevitas model's own (PyTorch) output on the input :func:`run_onnxruntime` uses;
    the model is rebuilt deterministically from ``seed`` as in :func:`brevitas_qdq`."""
    model = brevitas_model(model_name, bits, seed=seed, shape=shape)
    x = np.random.RandomState(input_seed).randn(*shape).astype(np.float32)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def summarize(path, reference: Optional[np.ndarray] = None) -> str:
    """One line: path, op counts, conv weight chain, initializers-as-inputs, ort ok/failed
    (and the max abs difference to ``reference``, when given)."""
    import onnx

    model = onnx.load(str(path))
    counts = op_counts(model)
    ops = " ".join(f"{op}={counts.get(op, 0)}" for op in SUMMARY_OPS)
    try:
        out = run_onnxruntime(path)
        status = f"ok out{list(out.shape)}"
        if reference is not None:
            status += f" max|ort-torch|={float(np.abs(out - reference).max()):.2e}"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return (f"{path} | {ops} | conv weight: {weight_chain(model)} | "
            f"init-as-input={initializers_as_inputs(model)}/{len(model.graph.initializer)} | "
            f"{status}")


# ---------------------------------------------------------------------------------------------
# Writing every combination
# ---------------------------------------------------------------------------------------------


Job = Tuple[Path, Callable[[], Path], Optional[Callable[[], np.ndarray]]]


def all_jobs(out_dir: Path) -> List[Job]:
    """(path, builder, reference-output builder or None) for every NNCF and Brevitas
    combination."""
    jobs: List[Job] = []
    for name in MODEL_NAMES:
        for preset in NNCF_PRESETS:
            path = out_dir / f"nncf_{name}_{preset}.onnx"
            jobs.append((path, lambda n=name, p=preset, f=path:
                         nncf_qdq(float_model(n), INPUT_SHAPE, f, preset=p), None))
    for name in MODEL_NAMES:
        for bits in BITS:
            for export in EXPORTS:
                path = out_dir / f"brevitas_{name}_{bits}_{export}.onnx"
                jobs.append((path, lambda n=name, b=bits, e=export, f=path:
                             brevitas_qdq(n, b, f, export=e),
                             lambda n=name, b=bits: brevitas_reference(n, b)))
    return jobs


def main(argv: Sequence[str]) -> int:
    """Write every combination into ``argv[1]`` (default /tmp/thirdparty) and summarise."""
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    out_dir = Path(argv[1] if len(argv) > 1 else "/tmp/thirdparty")
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path, build, reference in all_jobs(out_dir):
        try:
            build()
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            failures += 1
            msg = str(exc).strip().splitlines()
            print(f"{path} | export failed: {type(exc).__name__}: {msg[0] if msg else ''}")
            continue
        line = summarize(path, reference() if reference is not None else None)
        failures += "failed:" in line
        print(line, flush=True)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
