"""Write synthesized (or real) images as one PNG grid, to look at what calibration saw."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from tvmq.errors import ArtifactError, ConfigError

_MIN_SIDE = 32  # small images (8x8 digits) are enlarged to at least this many pixels


def save_grid(images, path: str | os.PathLike, columns: int | None = None,
              max_images: int = 100) -> Path:
    """Save the first ``max_images`` of ``images`` as a PNG grid; returns the path.

    Parameters
    ----------
    images : Dataset or array (N, C, H, W)
        One or three channels are shown as gray or RGB; otherwise the first channel.
    path : path of the .png file (its folder is created)
    columns : int or None
        Images per row (default: about square).
    max_images : int

    Pixels are scaled to [0, 255] over the whole grid from the 0.5th to the 99.5th
    percentile, so images keep their relative brightness; small images are enlarged by
    pixel repetition.
    """
    from PIL import Image

    x = np.asarray(getattr(images, "x", images), dtype=np.float32)[:max_images]
    if x.ndim != 4 or len(x) == 0:
        raise ConfigError(f"save_grid needs images of shape (N, C, H, W), got {x.shape}",
                          "pass a tvmq.data.Dataset or an array of NCHW images")
    tiles = _to_uint8(x if x.shape[1] in (1, 3) else x[:, :1])
    grid = _tile(tiles, columns or math.ceil(math.sqrt(len(tiles))))
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path, format="PNG")
    except OSError as err:
        raise ArtifactError(f"cannot write {path}: {err}", "choose a writable folder")
    return path


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """NCHW float -> NHWC uint8, enlarged to at least ``_MIN_SIDE`` pixels."""
    lo, hi = np.percentile(x, [0.5, 99.5])
    scaled = np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1) * 255
    rep = max(1, math.ceil(_MIN_SIDE / max(x.shape[2], x.shape[3])))
    scaled = scaled.repeat(rep, axis=2).repeat(rep, axis=3)
    return scaled.round().astype(np.uint8).transpose(0, 2, 3, 1)


def _tile(tiles: np.ndarray, columns: int, gap: int = 2) -> np.ndarray:
    n, h, w, c = tiles.shape
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, c), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, columns)
        grid[gap + r * (h + gap):gap + r * (h + gap) + h,
             gap + col * (w + gap):gap + col * (w + gap) + w] = tile
    return grid


def save_samples(dataset, folder: str | os.PathLike, name: str = "samples") -> tuple[Path, Path]:
    """Write ``dataset`` to ``folder`` as ``<name>.png`` (a grid, :func:`save_grid`) and
    ``<name>.npz`` (arrays ``x``, ``y``: :func:`tvmq.data.load_npz` reads it back)."""
    folder = Path(folder)
    png = save_grid(dataset, folder / f"{name}.png")
    npz = folder / f"{name}.npz"
    try:
        np.savez(npz, x=dataset.x, y=dataset.y)
    except OSError as err:
        raise ArtifactError(f"cannot write {npz}: {err}", "choose a writable folder")
    return png, npz
