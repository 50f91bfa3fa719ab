"""CIFAR-10 from the python-pickle batches (API.md 8.3).

``base_folder`` is the ``cifar-10-batches-py`` directory of the official
archive: ``data_batch_1`` ... ``data_batch_5`` (training) and ``test_batch``,
each a pickled dict with bytes keys ``b"data"`` (N x 3072 uint8, each row the
1024 red, then green, then blue pixels of a 32x32 image, row-major) and
``b"labels"`` (N ints in 0..9).

>>> train = CIFAR10Dataset("data/cifar-10-batches-py", train=True)  # doctest: +SKIP
>>> x, y = train[0]    # x: float32 (3, 32, 32) in [0, 1]     # doctest: +SKIP
"""
from __future__ import annotations

import os
import pickle
from typing import List, Optional

import numpy as np

from ..data_basic import Dataset, _fields_at

__all__ = ["CIFAR10Dataset"]

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)

# Globals a CIFAR batch pickle may name: what NumPy writes for an ndarray under
# every protocol, old (numpy.core) and new (numpy._core) module names, and
# _codecs.encode (protocol-2 pickles written by Python 3). Anything else is
# refused: unpickling a file may otherwise run arbitrary code.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a "
                                         f"CIFAR-10 batch file")
        return super().find_class(module, name)


def _field(batch: dict, key: str):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    return None


def _load_batch(path: str):
    """``(data uint8 (N, 3072), labels int64 (N,))`` of one CIFAR-10 batch file."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise FileNotFoundError(2, "CIFAR-10 batch file not found", path) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable CIFAR-10 batch pickle ({e})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data, labels = _field(batch, "data"), _field(batch, "labels")
    if data is None or labels is None:
        raise ValueError(f"{path}: missing key b'data' or b'labels' "
                         f"(keys: {sorted(map(repr, batch))})")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise ValueError(f"{path}: b'data' must be a uint8 array (N, 3072), got "
                         f"{data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got {labels.dtype}")
    return data, labels.astype(np.int64)


class CIFAR10Dataset(Dataset):
    """CIFAR-10 images and labels.

    ``X``: float32 (N, 3, 32, 32) = data / 255; ``y``: int64 (N,). ``ds[i]`` is
    ``(X[i], y[i])``. Transforms (API.md 8.2) work on H x W x C images, so
    each image is transposed to (32, 32, 3), transformed, and transposed back.
    ``p`` is accepted for the course's signature and unused.

    >>> import os, pickle, tempfile, numpy as np, needle as ndl
    >>> d = tempfile.mkdtemp()
    >>> for name in ["data_batch_%d" % k for k in range(1, 6)] + ["test_batch"]:
    ...     with open(os.path.join(d, name), "wb") as f:   # two tiny images per batch file
    ...         pickle.dump({b"data": np.full((2, 3072), 255, np.uint8), b"labels": [3, 7]}, f)
    >>> ds = ndl.data.CIFAR10Dataset(d, train=True)
    >>> len(ds), ds.X.shape, float(ds.X.max()), int(ds[1][1])
    (10, (10, 3, 32, 32), 1.0, 7)
    """

    def __init__(self, base_folder: str, train: bool, p: Optional[float] = 0.5,
                 transforms: Optional[List] = None):
        super().__init__(transforms)
        self.base_folder = os.fspath(base_folder)
        self.train = train
        self.p = p
        files = TRAIN_FILES if train else TEST_FILES
        parts = [_load_batch(os.path.join(self.base_folder, name)) for name in files]
        data = np.concatenate([d for d, _ in parts])
        self.X = data.reshape(-1, 3, 32, 32).astype(np.float32)
        self.X /= np.float32(255.0)
        self.y = np.concatenate([lab for _, lab in parts])

    def __len__(self) -> int:
        return self.X.shape[0]

    def _transform_chw(self, x: np.ndarray) -> np.ndarray:
        out = self.apply_transforms(x.transpose(1, 2, 0))
        return np.ascontiguousarray(np.asarray(out).transpose(2, 0, 1))

    def _transform_nchw(self, X: np.ndarray) -> np.ndarray:
        """(k, 3, 32, 32) -> same: ``_transform_chw`` of each image, with the same draws."""
        out = self.apply_transforms_batch(X.transpose(0, 2, 3, 1))
        return np.ascontiguousarray(np.asarray(out).transpose(0, 3, 1, 2))

    def __getitem__(self, index):
        X, y = self.X[index], self.y[index]
        if self.transforms:
            if X.ndim == 3:
                X = self._transform_chw(X)
            elif len(X):  # one draw sequence per image, in index order
                X = self._transform_nchw(X)
        return X, y

    def _fetch_batch(self, indices: np.ndarray):
        if type(self).__getitem__ is not CIFAR10Dataset.__getitem__:
            return None
        X, y = _fields_at((self.X, self.y), indices)
        if getattr(self, "transforms", None) and len(X):
            X = self._transform_nchw(X)
        return X, y
