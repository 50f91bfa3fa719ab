"""A dataset over in-memory arrays (API.md 8.3).

>>> import numpy as np
>>> ds = NDArrayDataset(np.zeros((4, 2)), np.arange(4))
>>> len(ds), int(ds[1][1]), ds[1:3][0].shape
(4, 1, (2, 2))
"""
from __future__ import annotations

import numpy as np

from ..data_basic import Dataset, _fields_at

__all__ = ["NDArrayDataset"]


class NDArrayDataset(Dataset):
    """Items are ``tuple(a[i] for a in arrays)``; ``len`` is ``arrays[0].shape[0]``.

    Indexing is NumPy's, so slices and index arrays work. All arrays must
    have the same first dimension.

    >>> import numpy as np, needle as ndl
    >>> ds = ndl.data.NDArrayDataset(np.arange(10.0).reshape(5, 2), np.arange(5))
    >>> x, y = ds[3]
    >>> len(ds), x.tolist(), int(y)
    (5, [6.0, 7.0], 3)
    """

    def __init__(self, *arrays):
        super().__init__(None)
        if not arrays:
            raise ValueError("NDArrayDataset needs at least one array")
        arrays = tuple(np.asarray(a) for a in arrays)
        for k, a in enumerate(arrays):
            if a.ndim == 0:
                raise ValueError(f"NDArrayDataset: array {k} is 0-d; every array needs "
                                 f"a first (sample) dimension")
            if a.shape[0] != arrays[0].shape[0]:
                raise ValueError(f"NDArrayDataset: array {k} has {a.shape[0]} rows but "
                                 f"array 0 has {arrays[0].shape[0]}")
        self.arrays = arrays

    def __len__(self) -> int:
        return self.arrays[0].shape[0]

    def __getitem__(self, i):
        return tuple(a[i] for a in self.arrays)

    def _fetch_batch(self, indices: np.ndarray):
        if (type(self).__getitem__ is not NDArrayDataset.__getitem__
                or getattr(self, "transforms", None)):
            return None
        return _fields_at(self.arrays, indices)
