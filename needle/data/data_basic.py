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

Array-backed datasets (``MNISTDataset``, ``NDArrayDataset``, ``CIFAR10Dataset``)
fetch a batch with one NumPy fancy index per field (``_fetch_batch``), with no
Python work per sample; other datasets are read item by item and stacked.

``num_workers=N`` (EXT, PyTorch's meaning) fetches and collates the batches in
N worker processes (forked where the platform can), batch ``i`` in worker
``i % N``, at most ``2 * N`` batches ahead, and hands them out in order: the
same batches as ``num_workers=0``, and the main process's random stream is
left as it would be there. Random transforms in a worker draw from that
worker's own ``np.random``, seeded each epoch from the main generator's state
(read, not drawn from) and the worker's number, so they are reproducible for
a seed but differ from ``num_workers=0``'s, as in PyTorch. An exception in a
worker is raised in the main process with the worker's traceback; a worker
that dies makes ``__next__`` raise RuntimeError instead of waiting forever.
"""
from __future__ import annotations

import multiprocessing
import operator
import queue
import random
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

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
                 shuffle: bool = False, sampler: Optional[Iterable[int]] = None,
                 num_workers: int = 0,
                 worker_init_fn: Optional[Callable[[int], None]] = None):
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"DataLoader: num_workers must be an int >= 0, got {num_workers!r}")
        self.num_workers = num_workers
        self.worker_init_fn = worker_init_fn
        self._pool: Optional[_WorkerPool] = None
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
        self._shutdown_workers()
        if self.num_workers > 0 and self.ordering:
            self._pool = _WorkerPool(self.dataset, self.ordering, self.num_workers,
                                     self.worker_init_fn)
        return self

    def __next__(self) -> Tuple[Tensor, ...]:
        if self.ordering is None or self._pos >= len(self.ordering):
            self._shutdown_workers()
            raise StopIteration
        if self._pool is not None:
            fields = self._pool.get(self._pos)
        else:
            fields = _fetch(self.dataset, self.ordering[self._pos])
        self._pos += 1
        return tuple(Tensor(f) for f in fields)

    def _shutdown_workers(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __del__(self):
        try:
            self._shutdown_workers()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pool"] = None  # worker processes stay with the loader that started them
        return state

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


def _fetch(dataset: Dataset, group: np.ndarray) -> Tuple[np.ndarray, ...]:
    """The collated fields of the items at ``group``: ``_fetch_batch`` or item by item."""
    fetch = getattr(dataset, "_fetch_batch", None)
    fields = fetch(group) if fetch is not None else None
    if fields is None:
        fields = _collate([dataset[i] for i in group])
    return fields


def _worker_loop(dataset, tasks, results, seed: int, worker_id: int, init_fn) -> None:
    """A worker process: fetch the groups it is sent until it gets None."""
    # None comes after the main process has taken every batch it wants, so an
    # exit need not wait for unread batches to be flushed into the pipe
    results.cancel_join_thread()
    try:
        np.random.seed(seed)
        random.seed(seed)
        if init_fn is not None:
            init_fn(worker_id)
    except BaseException:  # noqa: BLE001 (reported to the main process)
        results.put((-1, None, f"worker {worker_id} start-up:\n{traceback.format_exc()}"))
        return
    while True:
        task = tasks.get()
        if task is None:
            return
        i, group = task
        try:
            results.put((i, tuple(np.asarray(f) for f in _fetch(dataset, group)), None))
        except BaseException:  # noqa: BLE001
            results.put((i, None, f"worker {worker_id}, batch {i}:\n{traceback.format_exc()}"))


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else methods[0])


class _WorkerPool:
    """The worker processes of one epoch of a DataLoader (module docstring)."""

    PREFETCH = 2  # batches in flight per worker
    POLL_S = 1.0  # how often a waiting __next__ checks that the workers live

    def __init__(self, dataset, ordering: List[np.ndarray], num_workers: int, init_fn):
        ctx = _mp_context()
        # the seeds come from the main generator's state without drawing from it
        entropy = [int(w) for w in np.random.get_state()[1]]
        seeds = np.random.SeedSequence(entropy).spawn(num_workers)
        self.ordering = ordering
        self.results = ctx.Queue()
        self.tasks = [ctx.SimpleQueue() for _ in range(num_workers)]
        self.workers = []
        for k in range(num_workers):
            seed = int(seeds[k].generate_state(1)[0])
            w = ctx.Process(target=_worker_loop, daemon=True,
                            args=(dataset, self.tasks[k], self.results, seed, k, init_fn))
            w.start()
            self.workers.append(w)
        self.sent = 0
        self.ready: Dict[int, Tuple[np.ndarray, ...]] = {}
        for _ in range(min(len(ordering), self.PREFETCH * num_workers)):
            self._send()

    def _send(self) -> None:
        i = self.sent
        self.tasks[i % len(self.workers)].put((i, self.ordering[i]))
        self.sent += 1

    def get(self, i: int) -> Tuple[np.ndarray, ...]:
        """The fields of batch i (batches are asked for in order)."""
        while i not in self.ready:
            try:
                j, fields, err = self.results.get(timeout=self.POLL_S)
            except queue.Empty:
                dead = [k for k, w in enumerate(self.workers) if not w.is_alive()]
                if dead:
                    codes = [self.workers[k].exitcode for k in dead]
                    self.close()
                    raise RuntimeError(f"DataLoader: worker(s) {dead} exited unexpectedly "
                                       f"(exit codes {codes}) while batch {i} was awaited"
                                       ) from None
                continue
            if err is not None:
                self.close()
                raise RuntimeError(f"DataLoader: exception in worker process {err}")
            self.ready[j] = fields
        if self.sent < len(self.ordering):
            self._send()
        return self.ready.pop(i)

    def close(self) -> None:
        for t, w in zip(self.tasks, self.workers):
            if w.is_alive():
                try:
                    t.put(None)
                except (OSError, ValueError):
                    pass
        for w in self.workers:
            w.join(timeout=5)
            if w.is_alive():
                w.terminate()
                w.join()
        self.workers = []
        self.results.close()
