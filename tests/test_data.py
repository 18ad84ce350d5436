"""Data loaders: digits split, .npz files, image folders."""
from __future__ import annotations

import numpy as np
import pytest

from tvmq import data
from tvmq.errors import TvmqError


def test_digits_split(digits_data):
    tr, te = digits_data
    assert tr.x.shape == (1347, 1, 8, 8) and te.x.shape == (450, 1, 8, 8)
    assert tr.x.dtype == np.float32 and tr.y.dtype == np.int64
    assert abs(float(tr.x.mean())) < 1e-5 and abs(float(tr.x.std()) - 1) < 1e-4
    np.testing.assert_array_equal(data.digits()[1].y, te.y)  # fixed split


def test_npz(tmp_path, rng):
    x = rng.standard_normal((5, 3, 4, 4)).astype("float32")
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    ds = data.load_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(ds.x, x)
    with pytest.raises(TvmqError, match="no array 'images'"):
        data.load_npz(tmp_path / "d.npz", x_key="images")
    with pytest.raises(TvmqError, match="not found"):
        data.load_npz(tmp_path / "missing.npz")


def test_image_folder(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 5, 3), value, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = data.load_image_folder(tmp_path)
    assert ds.classes == ["cat", "dog"] and ds.x.shape == (4, 3, 6, 5)
    np.testing.assert_array_equal(ds.y, [0, 0, 1, 1])
    assert abs(float(ds.x[-1].max()) - 200 / 255) < 1e-6
    with pytest.raises(TvmqError, match="no class subfolders"):
        data.load_image_folder(tmp_path / "cat")
