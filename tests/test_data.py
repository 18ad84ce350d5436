"""Data loaders: digits split, .npz files, image folders."""
from __future__ import annotations

import numpy as np
import pytest

from tvmq import data
from tvmq.errors import ConfigError, TvmqError


def test_digits_split(digits_data):
    tr, te = digits_data
    assert tr.x.shape == (1347, 1, 8, 8) and te.x.shape == (450, 1, 8, 8)
    assert tr.x.dtype == np.float32 and tr.y.dtype == np.int64
    assert abs(float(tr.x.mean())) < 1e-5 and abs(float(tr.x.std()) - 1) < 1e-4
    np.testing.assert_array_equal(data.digits()[1].y, te.y)  # fixed split


def _smooth_121(x: np.ndarray) -> np.ndarray:
    """Per-axis [1, 14, 1] / 16 filter, edge-replicated: what bilinear x4 up then down does."""
    k = np.array([1, 14, 1], np.float32) / 16
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (1, 1)
        p = np.pad(x, pad, mode="edge")
        n = x.shape[axis]
        x = sum(k[i] * np.take(p, range(i, i + n), axis=axis) for i in range(3))
    return x


def test_digits_upsampled_keeps_split_and_recovers_8x8(digits_data):
    import torch
    from torch.nn.functional import interpolate

    tr8, te8 = digits_data
    tr, te = data.digits(size=32)
    assert tr.x.shape == (1347, 1, 32, 32) and te.x.shape == (450, 1, 32, 32)
    assert tr.x.dtype == np.float32
    np.testing.assert_array_equal(tr.y, tr8.y)
    np.testing.assert_array_equal(te.y, te8.y)
    down = interpolate(torch.from_numpy(te.x), size=(8, 8), mode="bilinear",
                       align_corners=False).numpy()
    # Bilinear down after bilinear up is a [1, 14, 1] / 16 smoothing of the 8x8 images: exact
    # up to float32 rounding (measured 3.6e-7), and 3.6% of the value range off on average.
    np.testing.assert_allclose(down, _smooth_121(te8.x), atol=1e-5)
    rel = float(np.abs(down - te8.x).mean() / np.ptp(te8.x))
    assert rel < 0.05, f"32x32 -> 8x8 is {rel:.1%} of the value range off the 8x8 images"


@pytest.mark.parametrize("size", [4, 0, 16.0, True, "32"])
def test_digits_rejects_bad_size(size):
    with pytest.raises(ConfigError, match="size must be an int >= 8"):
        data.digits(size=size)


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
