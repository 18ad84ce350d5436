"""Per-(layer, bits) latency, measured on a board through the device harness.

For each uniform bit choice ``(w, a)`` the model is quantized (PTQ: timing does not depend
on the values), exported, compiled for the board, and timed layer by layer with
``tvmq bench --per-layer`` (:meth:`tvmq.device.Remote.bench`, locally or over RPC); each
compiled layer's time is filed under its PyTorch module name (``meta.json`` ``layers``), so
a plan's latency is predicted as the sum of its layers' times at their bits plus what the
model spends outside the layers (``overhead_ms``: the whole model's median minus its
layers', the median over the bit choices measured). Each choice is timed ``rounds`` times,
alternating between choices, and the table keeps each layer's fastest round (each round is
itself a median): other processes only ever add time, and on the 2 shared cores this was
measured to matter: a parallel kernel waiting on a descheduled worker thread took ~330 us
instead of ~65 us in about half of the rounds, whatever its bits.

The table is cached as JSON keyed by board (and its CPU), model and TVM version; a table from
another board, CPU, model or TVM version is refused with the reason.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from tvmq.errors import ConfigError

FORMAT = 1


def _key(w: int, a: int) -> str:
    return f"w{w}a{a}"


def model_key(model: nn.Module, name: str) -> str:
    """``name:hash`` of the model's conv/linear layer names and weight shapes."""
    from tvmq.quant.api import quantizable_layers

    sig = [(n, tuple(model.get_submodule(n).weight.shape)) for n in quantizable_layers(model)]
    return f"{name}:{hashlib.sha1(repr(sig).encode()).hexdigest()[:12]}"


def board_cpu(board: str) -> str:
    """The board's target CPU (``mcpu``): for ``host``, this machine's."""
    from tvmq.boards import get_board

    return str(get_board(board).target.get("mcpu", ""))


@dataclasses.dataclass
class LatencyTable:
    """Milliseconds per layer and bit choice on one board.

    ``entries[layer]["w4a8"]`` is the layer's median time; ``totals["w4a8"]`` the whole
    model's median (``total_ms``) and its layers' sum (``layers_ms``) at that uniform choice.
    """

    board: str
    cpu: str
    model: str
    tvm_version: str
    device: str
    entries: dict[str, dict[str, float]]
    totals: dict[str, dict[str, float]]
    layer_method: str = ""
    format_version: int = FORMAT

    @property
    def overhead_ms(self) -> float:
        """Time outside the layers (other kernels, VM): median over the choices measured."""
        if not self.totals:
            return 0.0
        return statistics.median(t["total_ms"] - t["layers_ms"] for t in self.totals.values())

    def ms(self, layer: str, w: int, a: int) -> float:
        try:
            return self.entries[layer][_key(w, a)]
        except KeyError:
            raise ConfigError(f"the latency table of {self.model} on {self.board} has no "
                              f"{layer!r} at W{w}A{a}",
                              "measure it: tvmq.mixed.latency_table(..., weight_bits=..., "
                              "act_bits=...) with these bits") from None

    def predict(self, bits: Mapping[str, tuple[int, int]]) -> float:
        """Predicted model latency (ms) of a plan's ``name -> (w, a)``."""
        return sum(self.ms(n, w, a) for n, (w, a) in bits.items()) + self.overhead_ms

    def check(self, board: str, model: str, tvm_version: str | None = None,
              cpu: str | None = None) -> "LatencyTable":
        """Refuse the table (ConfigError with the reason) unless it was measured for this
        board, CPU, model and TVM version. Returns the table."""
        from tvmq._tvm import TVM_VERSION

        want = {"board": board, "cpu": board_cpu(board) if cpu is None else cpu,
                "model": model, "tvm_version": tvm_version or TVM_VERSION}
        for field, value in want.items():
            have = getattr(self, field)
            if have != value:
                raise ConfigError(f"the latency table was measured for {field} {have!r}, "
                                  f"not {value!r}",
                                  f"measure a table for {board} (tvmq search-bits --latency-ms "
                                  f"... --board {board}, or tvmq.mixed.latency_table)")
        return self

    def save(self, path: str | os.PathLike) -> Path:
        from tvmq.artifact import atomic_write

        text = json.dumps(dataclasses.asdict(self), indent=1).encode()
        return atomic_write(path, lambda f: f.write(text))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"latency table {path} not found", "check the path") from err
        except json.JSONDecodeError as err:
            raise ConfigError(f"latency table {path} is not JSON ({err})",
                              "delete it; it is measured again") from err
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or raw.get("format_version") != FORMAT or \
                not {"board", "model", "entries"} <= set(raw):
            raise ConfigError(f"{path} is not a tvmq latency table (format {FORMAT})",
                              "delete it; it is measured again")
        return cls(**{k: v for k, v in raw.items() if k in fields})


def default_cache(board: str, model: str) -> Path:
    """``~/.cache/tvmq/latency/<board>-<cpu>-<model>-tvm<version>.json``."""
    from tvmq._tvm import TVM_VERSION

    root = Path(os.environ.get("TVMQ_CACHE", Path.home() / ".cache" / "tvmq"))
    safe = model.replace(":", "-").replace("/", "_")
    return root / "latency" / f"{board}-{board_cpu(board) or 'cpu'}-{safe}-tvm{TVM_VERSION}.json"


def _uniform_artifact(model, base, w, a, data, board, workdir: Path) -> Path:
    """PTQ every layer at (w, a), export, compile for ``board``; the artifact's directory."""
    import tvmq
    import tvmq.quant as tq
    from tvmq.mixed.plans import layer_config
    from tvmq.quant.observers import MinMaxObserver

    fast = dataclasses.replace(base, weight_observer=MinMaxObserver(),
                               act_observer=MinMaxObserver())  # values do not change timing
    cfg = layer_config(fast, w, a)
    q = copy.deepcopy(model).eval()
    plan = {n: cfg for n in tq.quantizable_layers(q)}
    tq.quantize_(q, tq.PTQConfig(cfg, calibration=data, overrides=plan, max_batches=1,
                                 progress=False))
    example = torch.as_tensor(data.x[:1])
    onnx_path = tq.export(q, example, workdir / f"{_key(w, a)}.onnx")
    art = tvmq.compile(onnx_path, board=board, input_shapes={"input": tuple(example.shape)})
    return art.save(workdir / _key(w, a))


def _measure(art_dir: Path, device: str, cross: bool, number: int, repeat: int):
    """One timing of an artifact: (layer -> median ms, whole-model median, method, where)."""
    from tvmq import device as dev

    with dev.connect(device) as remote:
        result = remote.bench(art_dir, per_layer=True, number=number, repeat=repeat,
                              check=not cross)
    layers = {r["layer"]: r["median_ms"] for r in result.layers or () if r.get("layer")}
    return layers, result.median_ms, result.layer_method, result.device_description


def _timed_rounds(arts: dict[str, Path], device, cross, number, repeat, rounds, progress):
    """Time every artifact ``rounds`` times, alternating (a load spike on a shared machine
    then hits one round of a choice, not all of it); per choice the fastest round of each
    layer's and of the whole model's median."""
    runs: dict[str, list] = {k: [] for k in arts}
    steps = [(r, k) for r in range(rounds) for k in arts]
    for _, k in tqdm(steps, desc="latency table: timing", disable=not progress, leave=False):
        runs[k].append(_measure(arts[k], device, cross, number, repeat))
    out = {}
    for k, measured in runs.items():
        layers = {n: min(m[0][n] for m in measured) for n in measured[0][0]}
        total = min(m[1] for m in measured)
        out[k] = (layers, total, measured[0][2], measured[0][3])
    return out


def latency_table(model: nn.Module, data, name: str, *, board: str = "host",
                  device: str = "local", weight_bits: Sequence[int] = (2, 3, 4, 5, 6, 8),
                  act_bits: Sequence[int] = (8,), method=None, cache: str | os.PathLike |
                  None = None, number: int = 10, repeat: int = 5, rounds: int = 5,
                  progress: bool = True) -> LatencyTable:
    """Measure (or load from the cache) the per-layer latency of ``model`` on ``board``.

    Parameters
    ----------
    model : nn.Module
        The float model (not modified).
    data : tvmq.data.Dataset
        One batch calibrates the PTQ models; ``data.x[:1]`` is the example input.
    name : str
        The model's name in the table's key (a hash of its layers is added).
    board : str
        Board the artifacts are compiled for (``tvmq boards``).
    device : str
        ``local`` or ``rpc://HOST:PORT/KEY`` (``tvmq bench --device``).
    weight_bits, act_bits : sequence of int
        The uniform choices to time; the table covers their product.
    method : MethodConfig, optional
        The plan's method (default ``get_preset("w8a8")``).
    cache : path, optional
        JSON file (default :func:`default_cache`); choices already in it are not measured
        again; a table in it for another board/model/TVM is refused.
    number, repeat : int
        ``tvmq bench`` settings of one timing.
    rounds : int
        Timings of each choice, alternating between choices; the table keeps the fastest.
    """
    from tvmq._tvm import TVM_VERSION
    from tvmq.boards import get_board
    from tvmq.quant.presets import get_preset

    base = method or get_preset("w8a8")
    key = model_key(model, name)
    path = Path(cache) if cache is not None else default_cache(board, key)
    cross = get_board(board).arch != get_board("host").arch
    if path.is_file():
        table = LatencyTable.load(path).check(board, key)
    else:
        table = LatencyTable(board, board_cpu(board), key, TVM_VERSION, device, {}, {})
    todo = [(w, a) for w in sorted(set(weight_bits)) for a in sorted(set(act_bits))
            if _key(w, a) not in table.totals]
    if not todo:
        return table
    with tempfile.TemporaryDirectory() as tmp:
        arts = {_key(w, a): _uniform_artifact(model, base, w, a, data, board, Path(tmp))
                for w, a in tqdm(todo, desc="latency table: compile", disable=not progress,
                                 leave=False)}
        timed = _timed_rounds(arts, device, cross, number, repeat, max(rounds, 1), progress)
    for k, (layers, total, method_, where) in timed.items():
        for layer, ms in layers.items():
            table.entries.setdefault(layer, {})[k] = ms
        table.totals[k] = {"total_ms": total, "layers_ms": sum(layers.values())}
        table.layer_method, table.device = method_, where
    table.save(path)
    return table
