"""Dataset and DataLoader (API.md 8.1).

A DataLoader cuts the dataset's indices into groups of ``batch_size`` (the last
group may be short), fetches each group and collates it into a tuple of
Tensors, one per field of the dataset's items:

>>> import numpy as np
>>> import needle as ndl
>>> ds = ndl.data.NDArrayDataset(np.zeros((5, 3), np.float32), np.arange(5))
>>> [(x.shape, y.shape) for x, y in ndl.data.DataLoader(ds, batch_size=2)]
[((2, 3), (2,)), ((2, 3), (2,)), ((1, 3), (1,))]

Random draws (API.md 10.19): when shuffling, exactly one
``np.random.permutation(N)`` per ``__iter__``; none in the constructor or in
``__next__``. Seeded runs therefore reproduce the course.
"""
from __future__ import annotations

import operator
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..autograd import Tensor
from .data_transforms import apply_transforms_batch

__all__ = ["Dataset", "DataLoader"]


class Dataset:
    """An abstract dataset: subclasses define ``__getitem__`` and ``__len__``.

    ``transforms`` is a list of callables applied in order by
    ``apply_transforms`` (identity when None).

    >>> class Squares(Dataset):
    ...     def __len__(self):
    ...         return 4
    ...     def __getitem__(self, i):
    ...         return (np.float32(i * i),)
    >>> [b[0].numpy().tolist() for b in DataLoader(Squares(), batch_size=3)]
    [[0.0, 1.0, 4.0], [9.0]]
    """

    def __init__(self, transforms: Optional[List] = None):
        self.transforms = transforms

    def __getitem__(self, index) -> object:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def apply_transforms(self, x):
        if self.transforms is not None:
            for tform in self.transforms:
                x = tform(x)
        return x

    def apply_transforms_batch(self, xs):
        """``apply_transforms`` of each item of ``xs`` (axis 0), in order, stacked (EXT).

        The same random draws in the same order as the per-item calls; the
        built-in transforms run on the whole batch at once (see
        ``data_transforms.apply_transforms_batch``). ``xs`` itself when there
        are no transforms or no items.
        """
        if not self.transforms or len(xs) == 0:
            return xs
        if type(self).apply_transforms is not Dataset.apply_transforms:
            return np.stack([np.asarray(self.apply_transforms(x)) for x in xs])
        return apply_transforms_batch(self.transforms, xs)

    def _fetch_batch(self, indices: np.ndarray) -> Optional[Tuple[np.ndarray, ...]]:
        """Fields of the items at ``indices``, each stacked along axis 0, or None.

        None means "fetch item by item" (the default). Built-in datasets
        override this to index their arrays once per batch (and transform the
        batch with ``apply_transforms_batch``); the result, and the random
        draws made, must equal stacking ``self[i]`` for each ``i`` in ``indices``.
        """
        return None


def _collate(items: Sequence[Any]) -> Tuple[np.ndarray, ...]:
    """Stack each field of ``items`` along a new axis 0 (non-tuples are 1-tuples)."""
    rows = [item if isinstance(item, tuple) else (item,) for item in items]
    nfields = len(rows[0])
    for k, row in enumerate(rows):
        if len(row) != nfields:
            raise ValueError(
                f"DataLoader: dataset items have different numbers of fields "
                f"({nfields} in the first item of the batch, {len(row)} in item {k})")
    return tuple(np.stack([np.asarray(row[f]) for row in rows]) for f in range(nfields))


class DataLoader:
    """Iterate over ``dataset`` in batches of ``batch_size``, as tuples of Tensors.

    ``shuffle=True`` draws a new ``np.random.permutation(len(dataset))`` each
    time iteration starts; ``sampler`` (an iterable of indices with a length,
    such as ``needle.distributed.DistributedSampler``) gives the order instead,
    read anew each time iteration starts. Each batch field is ``Tensor(array)`` with the
    default device and dtype (float32 in nd mode).

    >>> loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(np.arange(6.0)),
    ...                              batch_size=4, shuffle=True)
    >>> [b[0].shape for b in loader]
    [(4,), (2,)]
    """

    def __init__(self, dataset: Dataset, batch_size: Optional[int] = 1,
                 shuffle: bool = False, sampler: Optional[Iterable[int]] = None):
        if isinstance(batch_size, bool):
            raise TypeError("DataLoader: batch_size must be an int, got bool")
        try:
            batch_size = operator.index(batch_size)
        except TypeError:
            raise TypeError(f"DataLoader: batch_size must be an int, got "
                            f"{type(batch_size).__name__}") from None
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle=True "
                             "(the sampler decides the order)")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.sampler = sampler
        self.ordering: Optional[List[np.ndarray]] = None
        self._ordering_key = None
        self._pos = 0
        if not self.shuffle and sampler is None:
            self._sequential_ordering()

    def _split(self, indices: np.ndarray) -> List[np.ndarray]:
        n = len(indices)
        if n == 0:
            return []
        return np.array_split(indices, range(self.batch_size, n, self.batch_size))

    def _sequential_ordering(self) -> None:
        n = len(self.dataset)
        key = (n, self.batch_size)
        if self.ordering is None or self._ordering_key != key:
            self.ordering = self._split(np.arange(n))
            self._ordering_key = key

    def __iter__(self) -> "DataLoader":
        if self.sampler is not None:
            # the sampler's indices for this epoch (e.g. needle.distributed.DistributedSampler)
            self.ordering = self._split(np.fromiter(iter(self.sampler), dtype=np.int64))
            self._ordering_key = None
        elif self.shuffle:
            # the one random draw of an epoch (API.md 10.19)
            self.ordering = self._split(np.random.permutation(len(self.dataset)))
            self._ordering_key = None
        else:
            self._sequential_ordering()
        self._pos = 0
        return self

    def __next__(self) -> Tuple[Tensor, ...]:
        if self.ordering is None or self._pos >= len(self.ordering):
            raise StopIteration
        group = self.ordering[self._pos]
        self._pos += 1
        fetch = getattr(self.dataset, "_fetch_batch", None)
        fields = fetch(group) if fetch is not None else None
        if fields is None:
            fields = _collate([self.dataset[i] for i in group])
        return tuple(Tensor(f) for f in fields)

    def __len__(self) -> int:
        """Number of batches per epoch (EXT)."""
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return (n + self.batch_size - 1) // self.batch_size


def _fields_at(arrays: Iterable[np.ndarray], indices: np.ndarray) -> Tuple[np.ndarray, ...]:
    """``a[indices]`` for each array; a contiguous ascending run becomes a slice view."""
    n = len(indices)
    if n and indices[-1] - indices[0] == n - 1 and (n == 1 or np.all(np.diff(indices) == 1)):
        sel = slice(int(indices[0]), int(indices[0]) + n)
        return tuple(a[sel] for a in arrays)
    return tuple(a[indices] for a in arrays)
