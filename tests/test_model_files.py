"""Loading a model file never runs code from it (``.pt2``: torch.export's pickle fallbacks)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile

import pytest
import torch

from tvmq.errors import ModelLoadError
from tvmq.frontend import _unpickling_refused, load_exported_program


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_pt2(path, marker):
    """A legacy-layout ``.pt2`` (still read by ``torch.export.load``) whose state dict is a
    pickle payload: torch tries ``weights_only=True``, then falls back to ``False``."""
    from torch._export.serde.schema import SCHEMA_VERSION
    from torch._export.serde.serialize import serialize

    art = serialize(torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)))
    payload = io.BytesIO()
    torch.save(_Evil(marker), payload)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        z.writestr("serialized_exported_program.json", art.exported_program)
        z.writestr("serialized_state_dict.pt", payload.getvalue())
        z.writestr("serialized_constants.pt", art.constants)
        z.writestr("serialized_example_inputs.pt", art.example_inputs)
    return path


def test_crafted_pt2_runs_no_code(tmp_path):
    marker = tmp_path / "PWNED"
    path = _crafted_pt2(tmp_path / "evil.pt2", marker)
    with pytest.raises(Exception):  # torch's own loader: the payload runs, then it fails
        torch.export.load(str(path))
    assert marker.exists(), "the crafted file must run code through torch for this to mean anything"
    marker.unlink()
    with pytest.raises(ModelLoadError, match="pickled Python objects"):
        load_exported_program(path)
    assert not marker.exists()


def test_cli_refuses_crafted_pt2_in_one_line(tmp_path):
    marker = tmp_path / "PWNED"
    path = _crafted_pt2(tmp_path / "evil.pt2", marker)
    proc = subprocess.run([sys.executable, "-m", "tvmq.cli", "compile", str(path), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pickled Python objects" in lines[0], proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_plain_pt2_still_loads(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    prog = load_exported_program(tmp_path / "m.pt2")
    torch.testing.assert_close(prog.module()(x), model(x), rtol=0, atol=0)
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_other_unpicklers_refuse_inside_the_guard(tmp_path):
    import pickle

    from torch.export.pt2_archive import _package

    data = pickle.dumps(_Evil(tmp_path / "PWNED"))
    with _unpickling_refused():
        with pytest.raises(pickle.UnpicklingError):
            _package.pickle.loads(data)
        with pytest.raises(pickle.UnpicklingError):
            torch._C._pickle_load_obj(data)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(io.BytesIO(data), weights_only=False)
    assert not (tmp_path / "PWNED").exists()
    assert _package.pickle is pickle
