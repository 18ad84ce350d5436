"""Per-layer plans: PyTorch module name -> method config (or ``None``: keep float).

A plan is the ``overrides`` of :class:`~tvmq.quant.QATConfig` / :class:`~tvmq.quant.PTQConfig`
and is applied exactly as written: a layer it names gets that config, bits included (a bit
allocation's 2-bit first layer stays 2-bit); ``first_last_bits`` only raises the first and last
layers that the plan does not name.

On disk a plan is JSON, one entry per layer: ``null`` (keep float), a preset name
(``"w8a8"``), or a config object::

    {"features.0": {"method": "LSQConfig",
                    "weight": {"bits": 2, "granularity": "per_channel", "symmetric": true},
                    "activation": {"bits": 8, "granularity": "per_tensor", "symmetric": true}},
     "classifier": null,
     "features.3": "w4a4"}

Fields left out of a config object take the method's defaults. Loading runs no code from the
file (plain JSON; method and observer names are looked up among tvmq's own classes).

>>> from tvmq.quant import save_plan, load_plan
>>> save_plan({"features.0": get_preset("w2a2"), "classifier": None}, "plan.json")
>>> QATConfig(get_preset("w4a4"), overrides=load_plan("plan.json"))
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from tvmq.errors import ConfigError
from tvmq.quant import config as C
from tvmq.quant import observers as O

_GRANULARITY = {"per_tensor": C.PerTensor, "per_channel": C.PerChannel}


def _methods() -> dict[str, type]:
    """Method config classes by name: every subclass of the method config base."""
    found, todo = {}, [C.MethodConfig]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            found[sub.__name__] = sub
            todo.append(sub)
    return found


def _observers() -> dict[str, type]:
    return {cls.__name__: cls for cls in vars(O).values()
            if isinstance(cls, type) and issubclass(cls, O.Observer) and cls is not O.Observer}


def _spec_to_json(spec: C.QuantSpec | None):
    if spec is None:
        return None
    gran = "per_channel" if isinstance(spec.granularity, C.PerChannel) else "per_tensor"
    return {"bits": spec.bits, "granularity": gran, "symmetric": spec.symmetric}


def config_to_json(cfg: C.MethodConfig | None) -> dict | None:
    """A method config as a JSON-ready dict (``None`` stays ``None``)."""
    if cfg is None:
        return None
    out: dict[str, Any] = {"method": type(cfg).__name__}
    for f in dataclasses.fields(cfg):
        val = getattr(cfg, f.name)
        if isinstance(val, C.QuantSpec) or (val is None and f.name in ("weight", "activation")):
            val = _spec_to_json(val)
        elif isinstance(val, O.Observer):
            val = {"type": type(val).__name__, **dataclasses.asdict(val)}
        elif isinstance(val, tuple):
            val = list(val)
        out[f.name] = val
    return out


def _spec_from_json(d, where: str):
    if d is None:
        return None
    if not isinstance(d, dict) or d.get("granularity", "per_tensor") not in _GRANULARITY:
        raise ConfigError(f"plan entry {where}: {d!r} is not a quant spec",
                          'write {"bits": 8, "granularity": "per_tensor", "symmetric": true}')
    return C.QuantSpec(int(d.get("bits", 8)), _GRANULARITY[d.get("granularity", "per_tensor")](),
                       bool(d.get("symmetric", True)))


def config_from_json(d, where: str = "") -> C.MethodConfig | None:
    """Inverse of :func:`config_to_json`; also accepts a preset name."""
    from tvmq.quant.presets import get_preset

    if d is None:
        return None
    if isinstance(d, str):
        return get_preset(d)
    methods, observers = _methods(), _observers()
    if not isinstance(d, dict) or d.get("method") not in methods:
        raise ConfigError(f"plan entry {where}: {d!r} names no method config",
                          "use null, a preset name, or "
                          f"{{\"method\": one of {sorted(methods)}, ...}}")
    cls = methods[d["method"]]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names - {"method"})
    if unknown:
        raise ConfigError(f"plan entry {where}: unknown fields {unknown}",
                          f"use fields of {cls.__name__}: {sorted(names)}")
    kw: dict[str, Any] = {}
    for key, val in d.items():
        if key in ("weight", "activation"):
            kw[key] = _spec_from_json(val, f"{where}.{key}")
        elif key.endswith("_observer"):
            if not isinstance(val, dict) or val.get("type") not in observers:
                raise ConfigError(f"plan entry {where}.{key}: {val!r} is not an observer",
                                  f"use {{\"type\": one of {sorted(observers)}}}")
            kw[key] = observers[val["type"]](**{k: v for k, v in val.items() if k != "type"})
        elif key in ("layer_types", "skip"):
            kw[key] = tuple(val)
        elif key != "method":
            kw[key] = val
    return cls(**kw)


def save_plan(plan: Mapping[str, C.MethodConfig | None], path: str | os.PathLike) -> Path:
    """Write ``plan`` as JSON at ``path`` (atomically); returns the path."""
    path = Path(path)
    text = json.dumps({name: config_to_json(cfg) for name, cfg in plan.items()}, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
    return path


def load_plan(path: str | os.PathLike) -> dict[str, C.MethodConfig | None]:
    """Read a plan written by :func:`save_plan` (or by hand, see the module docstring)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"plan file {path} not found", "check the path") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"plan file {path} is not JSON ({err})",
                          "write an object: module name -> null, preset name or config") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"plan file {path} holds a {type(raw).__name__}, not an object",
                          'write {"module.name": "w8a8", ...}')
    return {name: config_from_json(val, name) for name, val in raw.items()}
