"""MNIST-format datasets from IDX files (API.md 8.3).

The IDX format: a big-endian header (magic, then one uint32 per dimension)
followed by the unsigned bytes of the array, row-major. MNIST and
Fashion-MNIST ship an image file (magic 2051 = 0x00000803: ubyte, 3 dims N,
rows, cols) and a label file (magic 2049 = 0x00000801: ubyte, 1 dim N), each
usually gzipped. Both gzipped and plain files are read (detected from the
gzip signature, not the file name).

>>> ds = MNISTDataset("data/train-images-idx3-ubyte.gz",
...                   "data/train-labels-idx1-ubyte.gz")      # doctest: +SKIP
>>> x, y = ds[0]        # x: float32 (784,) in [0, 1]; y: uint8  # doctest: +SKIP
"""
from __future__ import annotations

import errno
import gzip
import os
import zlib
from typing import List, Optional, Tuple

import numpy as np

from ..data_basic import Dataset, _fields_at

__all__ = ["MNISTDataset"]

IMAGE_MAGIC = 2051  # 0x00000803
LABEL_MAGIC = 2049  # 0x00000801
_GZIP_SIGNATURE = b"\x1f\x8b"


def _read_file(path: str, kind: str) -> bytes:
    """All bytes of ``path``, gunzipped when it starts with the gzip signature."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"MNIST {kind} file not found", path) from None
    if raw[:2] != _GZIP_SIGNATURE:
        return raw
    try:
        return gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({e})") from None


def _parse_idx(buf: bytes, path: str, kind: str) -> np.ndarray:
    """The uint8 array of an MNIST IDX file's bytes; ``kind`` is 'image' or 'label'."""
    magic_expected, ndim = (IMAGE_MAGIC, 3) if kind == "image" else (LABEL_MAGIC, 1)
    header = 4 * (1 + ndim)
    if len(buf) < 4:
        raise ValueError(f"{path}: corrupt IDX header: file has {len(buf)} bytes, "
                         f"too short for the magic number")
    magic = int.from_bytes(buf[:4], "big")
    if magic != magic_expected:
        hint = ""
        if magic in (IMAGE_MAGIC, LABEL_MAGIC):
            other = "image" if magic == IMAGE_MAGIC else "label"
            hint = f" (that is an IDX {other} file; were the file names swapped?)"
        elif buf[:2] == _GZIP_SIGNATURE:
            hint = " (the data is gzipped twice?)"
        raise ValueError(f"{path}: corrupt IDX header: magic number {magic} (0x{magic:08x}), "
                         f"expected {magic_expected} (0x{magic_expected:08x}) for an MNIST "
                         f"{kind} file{hint}")
    if len(buf) < header:
        raise ValueError(f"{path}: corrupt IDX header: {len(buf)} bytes, an MNIST {kind} "
                         f"header needs {header}")
    dims = tuple(int.from_bytes(buf[4 * (1 + d):4 * (2 + d)], "big") for d in range(ndim))
    if kind == "image" and (dims[1] == 0 or dims[2] == 0):
        raise ValueError(f"{path}: corrupt IDX header: image size {dims[1]}x{dims[2]}")
    count = 1
    for d in dims:
        count *= d
    have = len(buf) - header
    what = (f"{dims[0]} images of {dims[1]}x{dims[2]} pixels" if kind == "image"
            else f"{dims[0]} labels")
    if have < count:
        raise ValueError(f"{path}: truncated data: the header announces {what} "
                         f"({count} bytes) but only {have} bytes follow it")
    if have > count:
        raise ValueError(f"{path}: {have - count} unexpected bytes after the {what} the "
                         f"header announces (corrupt header or concatenated files?)")
    return np.frombuffer(buf, dtype=np.uint8, count=count, offset=header).reshape(dims)


def _load(image_filename, label_filename) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int]]:
    """``parse_mnist`` plus the (rows, cols) of one image."""
    image_filename = os.fspath(image_filename)
    label_filename = os.fspath(label_filename)
    images = _parse_idx(_read_file(image_filename, "image"), image_filename, "image")
    labels = _parse_idx(_read_file(label_filename, "label"), label_filename, "label")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST image/label count mismatch: {image_filename} holds "
                         f"{images.shape[0]} images but {label_filename} holds "
                         f"{labels.shape[0]} labels")
    n, rows, cols = images.shape
    X = images.reshape(n, rows * cols).astype(np.float32)
    X /= np.float32(255.0)  # same float32 values as the course's astype(float32) / 255
    return X, labels.copy(), (rows, cols)


def parse_mnist(image_filename: str, label_filename: str) -> Tuple[np.ndarray, np.ndarray]:
    """Read an MNIST image/label file pair (gzipped or plain IDX).

    Returns ``(X, y)``: X float32 (N, rows*cols) = pixels / 255 in [0, 1], y uint8 (N,).
    Raises FileNotFoundError naming a missing file and ValueError naming the file
    and the problem for a corrupt header, truncated data or a count mismatch.
    """
    X, y, _ = _load(image_filename, label_filename)
    return X, y


class MNISTDataset(Dataset):
    """MNIST (or Fashion-MNIST) images and labels.

    ``X``: float32 (N, 784) in [0, 1]; ``y``: uint8 (N,). ``ds[i]`` is
    ``(X[i], y[i])``; slices and index arrays give (k, 784) and (k,). With
    transforms, each image is reshaped to (28, 28, 1), transformed, and
    flattened back.

    >>> train = MNISTDataset("train-images-idx3-ubyte.gz",
    ...                      "train-labels-idx1-ubyte.gz")   # doctest: +SKIP
    >>> len(train), train[0][0].shape                         # doctest: +SKIP
    (60000, (784,))
    """

    def __init__(self, image_filename: str, label_filename: str,
                 transforms: Optional[List] = None):
        super().__init__(transforms)
        self.X, self.y, (rows, cols) = _load(image_filename, label_filename)
        # shape an image takes while transformed (H, W, C); MNIST: (28, 28, 1)
        self.image_shape = (rows, cols, 1)

    def __len__(self) -> int:
        return self.X.shape[0]

    def _transform_flat(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.apply_transforms(x.reshape(self.image_shape))).reshape(-1)

    def _transform_rows(self, X: np.ndarray) -> np.ndarray:
        """(k, 784) -> (k, 784): ``_transform_flat`` of each row, with the same draws."""
        imgs = X.reshape((X.shape[0],) + self.image_shape)
        return np.asarray(self.apply_transforms_batch(imgs)).reshape(X.shape[0], -1)

    def __getitem__(self, index):
        X, y = self.X[index], self.y[index]
        if self.transforms:
            if X.ndim == 1:
                X = self._transform_flat(X)
            elif len(X):  # one draw sequence per image, in index order
                X = self._transform_rows(X)
        return X, y

    def _fetch_batch(self, indices: np.ndarray):
        if type(self).__getitem__ is not MNISTDataset.__getitem__:
            return None
        X, y = _fields_at((self.X, self.y), indices)
        if getattr(self, "transforms", None) and len(X):
            X = self._transform_rows(X)
        return X, y
