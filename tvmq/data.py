"""Data sets: the embedded digits set (8x8, or upsampled), and loaders for users' own data.

All loaders return :class:`Dataset` with float32 NCHW images and int64 labels.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from tvmq.errors import ConfigError, TvmqError

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclasses.dataclass
class Dataset:
    """Images ``x`` (N, C, H, W) float32 and labels ``y`` (N,) int64."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.x)

    def loader(self, batch_size: int = 64, shuffle: bool = False, seed: int = 0):
        """A ``torch.utils.data.DataLoader`` over this data set."""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        ds = TensorDataset(torch.from_numpy(self.x), torch.from_numpy(self.y))
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


# Normalization constants of the digits training split (pixels scaled to [0, 1] first).
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.25


def digits(size: int = 8) -> tuple[Dataset, Dataset]:
    """The digits set (1,797 images), fixed 75/25 stratified split, normalized by train stats.

    Parameters
    ----------
    size : int
        Image side. 8 (default) is the original 8x8 set; a larger size upsamples the same
        normalized images bilinearly (``torch.nn.functional.interpolate``,
        ``align_corners=False``), so every size has the same split, labels and value units,
        e.g. ``digits(size=32)`` for CIFAR-style networks such as ``resnet20_digits``.

    Returns
    -------
    (train, test) : tuple of Dataset
        ``x`` has shape (N, 1, size, size).

    Raises
    ------
    ConfigError
        ``size`` is not an int >= 8.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_digits_size(size)
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=_DIGITS_TEST_FRACTION, random_state=_DIGITS_SPLIT_SEED, stratify=y)
    mean, std = x_tr.mean(), x_tr.std()
    classes = [str(i) for i in range(10)]
    norm = lambda a: _upsample(((a - mean) / std).astype(np.float32), size)  # noqa: E731
    return Dataset(norm(x_tr), y_tr, classes), Dataset(norm(x_te), y_te, classes)


def _check_digits_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ConfigError(f"digits(size={size!r}): size must be an int >= 8 (the images are 8x8)",
                          "call digits() for 8x8 or e.g. digits(size=32) for 32x32")


def _upsample(x: np.ndarray, size: int) -> np.ndarray:
    if size == x.shape[-1]:
        return x
    import torch

    out = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size),
                                          mode="bilinear", align_corners=False)
    return out.numpy().astype(np.float32)


def load_npz(path: str | os.PathLike, x_key: str = "x", y_key: str = "y") -> Dataset:
    """Load ``x`` (N, C, H, W) and ``y`` (N,) arrays from an ``.npz`` file."""
    path = Path(path)
    if not path.is_file():
        raise TvmqError(f"data file {path} not found", "pass an existing .npz with arrays x and y")
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise TvmqError(f"cannot read {path}: {err}", "save it with numpy.savez(path, x=..., y=...)")
    if x_key not in arrays:
        raise TvmqError(f"{path} has no array {x_key!r} (has {sorted(arrays)})",
                        f"save images under the key {x_key!r}")
    x = arrays[x_key].astype(np.float32)
    y = arrays.get(y_key, np.zeros(len(x))).astype(np.int64)
    if x.ndim == 3:
        x = x[:, None]
    n_cls = int(y.max()) + 1 if len(y) else 0
    return Dataset(x, y, [str(i) for i in range(n_cls)])


def load_image_folder(path: str | os.PathLike, size: tuple[int, int] | None = None,
                      grayscale: bool = False) -> Dataset:
    """Load ``root/<class name>/<image>`` files; classes sorted by name, pixels scaled to [0, 1]."""
    from PIL import Image

    root = Path(path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise TvmqError(f"{root} has no class subfolders",
                        "lay images out as ROOT/<class name>/<image>.png")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for file in sorted((root / cls).iterdir()):
            if file.suffix.lower() not in _IMAGE_EXTS:
                continue
            img = Image.open(file).convert("L" if grayscale else "RGB")
            if size is not None:
                img = img.resize((size[1], size[0]))
            arr = np.asarray(img, dtype=np.float32) / 255.0
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise TvmqError(f"no images under {root}", f"use files ending in {sorted(_IMAGE_EXTS)}")
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise TvmqError(f"images under {root} have different sizes {sorted(shapes)[:3]}",
                        "pass size=(H, W) to resize them")
    return Dataset(np.stack(xs), np.asarray(ys, dtype=np.int64), classes)


def load_array(path: str | os.PathLike) -> np.ndarray:
    """One NumPy array from an ``.npy`` file, never unpickling (a model input or a reference).

    Raises
    ------
    InputMismatchError
        The file is missing, is not ``.npy`` (garbage, ``.npz``, pickle) or holds objects.
    """
    from tvmq.errors import InputMismatchError

    path = Path(path)
    fix = "save a numeric array with numpy.save(path, x)"
    if not path.is_file():
        raise InputMismatchError(f"input file {path} not found", fix)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays and non-.npy bytes both end up here
        what = "holds Python objects" if "bject arrays" in str(err) else "is not a .npy file"
        raise InputMismatchError(f"{path} {what}", fix) from err
    except (OSError, EOFError) as err:
        raise InputMismatchError(f"cannot read {path}: {err}", fix) from err
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise InputMismatchError(f"{path} is an .npz archive, not one array",
                                 "pass each array as its own .npy file")
    if arr.dtype.kind == "V":  # e.g. an ml_dtypes int4 array: numpy.save keeps raw bytes
        raise InputMismatchError(f"{path} holds raw {arr.dtype.itemsize}-byte records (dtype "
                                 f"{arr.dtype.str}), not numbers; an ml_dtypes int4/uint4 "
                                 "array saves this way", "save x.astype(numpy.int8) (or "
                                 "numpy.uint8 for unsigned) instead")
    return arr
