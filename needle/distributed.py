"""needle.distributed: data-parallel training over MPI (mpi4py), issue 15.

Launch one process per rank with MPI; every rank runs the same script:

    mpirun -np 2 python train.py            # root, 2 cores: --allow-run-as-root
                                            # --oversubscribe --bind-to none

>>> import needle as ndl, needle.distributed as dist
>>> dist.init()                      # a world of one when simply run with python
>>> model = dist.DistributedDataParallel(ndl.nn.Linear(4, 2))
>>> sampler = dist.DistributedSampler(dataset, shuffle=True, seed=0)
>>> loader = ndl.data.DataLoader(dataset, 32, sampler=sampler)
>>> for epoch in range(3):
...     sampler.set_epoch(epoch)
...     for X, y in loader:
...         opt.reset_grad(); loss_fn(model(X), y).backward(); opt.step()

Collectives (`all_reduce`, `broadcast`, `all_gather`) work in place on the
array buffer of a Tensor, an NDArray or a NumPy array (the NDArray exports the
buffer protocol, so MPI reads and writes needle's storage directly).

`DistributedDataParallel` broadcasts parameters and buffers from rank 0, then
after each backward averages the gradients over the ranks. Gradients go into
flat buckets (one dtype each; about 25 MB, the first 1 MB) in reverse parameter
order; the backward walk tells (`_C.set_grad_ready_hook`, Note [Grad-ready
hook] in csrc/autograd/backward.c) when a parameter's gradient is final, and a
bucket whose gradients are all final starts a non-blocking `Iallreduce` while
the walk goes on. When the walk ends, the remaining buckets are started, all
are waited for, and each parameter's `.grad` becomes a view of its bucket.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
import weakref
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from needle import _C
from needle.autograd import Tensor
from needle.backend_ndarray import NDArray
from needle.nn import Module, Parameter

__all__ = ["init", "is_initialized", "rank", "world_size", "get_rank", "get_world_size",
           "barrier", "all_reduce", "broadcast",
           "all_gather", "DistributedDataParallel", "DistributedSampler"]

_MPI: Any = None      # the mpi4py.MPI module once init() has run with mpi4py present
_comm: Any = None     # MPI.COMM_WORLD, or None in an MPI-less world of one
_initialized = False
_LAUNCH_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_MPIRUN_HINT = ("launch it with `mpirun -np {n} python ...` (as root add --allow-run-as-root; "
                "with fewer cores than ranks add --oversubscribe --bind-to none)")


def _launcher_world() -> int:
    """The world size an MPI launcher announced in the environment (1 when none did)."""
    for var in _LAUNCH_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def _abort_on_uncaught(exc_type, exc, tb) -> None:
    """sys.excepthook under MPI: print the traceback, then abort every rank.

    Without it a rank that raises exits while the others wait in a collective
    for it; MPI_Abort makes mpirun end them all at once."""
    sys.stderr.write(f"needle.distributed: uncaught exception on rank {rank()}; "
                     f"aborting all {world_size()} ranks\n")
    traceback.print_exception(exc_type, exc, tb)
    sys.stderr.flush()
    _comm.Abort(1)


def init(world_size: Optional[int] = None) -> None:
    """Join the MPI world (mpi4py's COMM_WORLD); safe to call more than once.

    Run with plain `python`, the world has one rank (mpi4py is then optional).
    `world_size`, if given, is the number of ranks the caller expects: a
    RuntimeError says how to launch when the world has another size.
    """
    global _MPI, _comm, _initialized
    if not _initialized:
        try:
            from mpi4py import MPI
        except ImportError as e:
            asked = max(_launcher_world(), world_size or 1)
            if asked > 1:
                raise RuntimeError(
                    f"needle.distributed: a world of {asked} ranks needs mpi4py and an MPI "
                    f"library: `pip install mpi4py` and `apt-get install openmpi-bin "
                    f"libopenmpi-dev` (or `make mpi`); import failed: {e}") from None
            MPI = None
        _MPI, _comm = MPI, (MPI.COMM_WORLD if MPI is not None else None)
        _initialized = True
        if _comm is not None and _comm.Get_size() > 1:
            sys.excepthook = _abort_on_uncaught
    size = _comm.Get_size() if _comm is not None else 1
    if world_size is not None and world_size != size:
        how = _MPIRUN_HINT.format(n=world_size)
        raise RuntimeError(f"needle.distributed.init: world_size={world_size} asked for, but "
                           f"this process runs in an MPI world of {size}: {how}")


def is_initialized() -> bool:
    return _initialized


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1 (calls init() if needed)."""
    init()
    return _comm.Get_rank() if _comm is not None else 0


def world_size() -> int:
    """The number of ranks (calls init() if needed)."""
    init()
    return _comm.Get_size() if _comm is not None else 1


get_rank, get_world_size = rank, world_size  # PyTorch's names


def barrier() -> None:
    """Wait until every rank has reached this call."""
    if world_size() > 1:
        _comm.Barrier()


# ---- buffers -----------------------------------------------------------------


def _array_of(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.realize_cached_data()
    if isinstance(x, (NDArray, np.ndarray)):
        return x
    raise TypeError(f"needle.distributed: expected a Tensor, NDArray or numpy.ndarray, "
                    f"got {type(x).__name__}")


def _buffer(x: Any, what: str) -> np.ndarray:
    """A C-contiguous NumPy view of x's storage (no copy) for MPI to read and write.

    A Tensor whose array is a non-compact view is first given a compact copy
    of its own (as an in-place op on it would); a bare non-compact array is
    refused, since writing through it cannot reach its owner."""
    arr = _array_of(x)
    view = np.asarray(arr)
    if view.flags.c_contiguous and view.flags.writeable:
        return view
    if isinstance(x, Tensor):
        x.cached_data = arr.compact() if isinstance(arr, NDArray) else np.ascontiguousarray(arr)
        return np.asarray(x.cached_data)
    raise ValueError(f"needle.distributed.{what}: needs a compact, writable array (shape "
                     f"{view.shape}, strides {view.strides}); pass a compact copy")


def _check_same(what: str, view: np.ndarray) -> None:
    """Raise the same ValueError on every rank when the ranks' arrays differ.

    One small all-reduce (the max of the shape and dtype codes and of their
    negatives: equal everywhere only if the ranks agree); the messages are
    gathered only to word the error."""
    meta = np.full(2 + 32, -1, np.int64)  # ndim, dtype, up to 32 dims (NumPy's limit)
    meta[0], meta[1] = view.ndim, view.dtype.num
    meta[2:2 + view.ndim] = view.shape
    both = np.concatenate([meta, -meta])
    _comm.Allreduce(_MPI.IN_PLACE, both, op=_MPI.MAX)
    if np.array_equal(both[:meta.size], meta) and np.array_equal(-both[meta.size:], meta):
        return
    metas = _comm.allgather((view.shape, view.dtype.name))
    if any(m != metas[0] for m in metas):
        held = ", ".join(f"rank {r} {s} {d}" for r, (s, d) in enumerate(metas))
        raise ValueError(f"needle.distributed.{what}: the ranks hold different arrays ({held})")


_REDUCE_OPS = ("sum", "mean", "max", "min")


def all_reduce(x: Any, op: str = "sum") -> Any:
    """Combine x over all ranks, in place on x's buffer; returns x.

    op: "sum", "mean", "max" or "min". x is a Tensor, an NDArray or a NumPy
    array of the same shape and dtype on every rank.

    >>> g = ndl.Tensor(np.full(3, dist.rank() + 1.0))
    >>> dist.all_reduce(g, op="mean")      # every rank: [1.5 1.5 1.5] with 2 ranks
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"needle.distributed.all_reduce: op must be one of {_REDUCE_OPS}, "
                         f"got {op!r}")
    view = _buffer(x, "all_reduce")
    n = world_size()
    if n == 1:
        return x
    _check_same("all_reduce", view)
    mpi_op = {"sum": _MPI.SUM, "mean": _MPI.SUM, "max": _MPI.MAX, "min": _MPI.MIN}[op]
    _comm.Allreduce(_MPI.IN_PLACE, view, op=mpi_op)
    if op == "mean":
        _scale(view, n)
    return x


def _scale(view: np.ndarray, n: int) -> None:
    if view.dtype.kind == "f":
        np.multiply(view, view.dtype.type(1.0 / n), out=view)
    else:
        np.floor_divide(view, n, out=view)


def broadcast(x: Any, src: int = 0) -> Any:
    """Overwrite x on every rank with rank src's x, in place; returns x."""
    n = world_size()
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < n:
        raise ValueError(f"needle.distributed.broadcast: src must be a rank in [0, {n}), "
                         f"got {src!r}")
    view = _buffer(x, "broadcast")
    if n > 1:
        _check_same("broadcast", view)
        _comm.Bcast(view, root=int(src))
    return x


def all_gather(x: Any) -> Any:
    """x of every rank stacked along a new axis 0, rank order: shape (world_size(), *x.shape).

    Returns the kind of x (a constant Tensor for a Tensor); the result's buffer
    is filled by MPI directly."""
    arr = _array_of(x)
    src = np.asarray(arr)
    if not src.flags.c_contiguous:
        src = np.ascontiguousarray(src)
    n = world_size()
    shape = (n,) + tuple(src.shape)
    if isinstance(arr, NDArray):
        out = arr.device.empty(shape, dtype=arr.dtype)
        dst = np.asarray(out)
    else:
        out = dst = np.empty(shape, dtype=src.dtype)
    if n > 1:
        _check_same("all_gather", src)
        _comm.Allgather(src, dst)
    else:
        dst[0] = src
    return Tensor.make_const(out) if isinstance(x, Tensor) else out


# ---- DistributedSampler ------------------------------------------------------


class DistributedSampler:
    """The indices of one rank's share of a dataset, for DataLoader(sampler=...).

    Every epoch the N indices (shuffled with a RandomState seeded by seed +
    epoch when shuffle is True: the same order on every rank, independent of
    NumPy's global random state) are padded by repeating from the start to a
    multiple of the world size, and rank r takes positions r, r + W, r + 2W,
    ... (drop_last=True drops the tail instead of padding). Call set_epoch(e)
    before each epoch for a new order.

    >>> s = DistributedSampler(range(5), num_replicas=2, rank=1, shuffle=False)
    >>> list(s)
    [1, 3, 0]
    """

    def __init__(self, dataset: Any, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        num_replicas = world_size() if num_replicas is None else num_replicas
        rank = get_rank() if rank is None else rank
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank must be in [0, num_replicas), got rank "
                             f"{rank} with num_replicas {num_replicas}")
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        n = len(dataset)
        if drop_last:
            self.num_samples = n // num_replicas
        else:
            self.num_samples = -(-n // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch (int64)."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.RandomState(self.seed + self.epoch).permutation(n)
        else:
            order = np.arange(n)
        if self.total_size > n:
            order = np.resize(order, self.total_size)  # repeats from the start
        return order[self.rank:self.total_size:self.num_replicas].astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


# ---- DistributedDataParallel -------------------------------------------------


class _Bucket:
    """Flat storage for the gradients of a few parameters of one dtype."""

    __slots__ = ("params", "flat", "view", "slots", "grads", "ready", "nready", "request")

    def __init__(self, params: List[Tensor]):
        self.params = params
        arr = params[0].realize_cached_data()
        size = sum(int(np.prod(p.shape)) for p in params)
        if isinstance(arr, NDArray):
            self.flat = arr.device.empty((size,), dtype=arr.dtype)
        else:
            self.flat = np.empty(size, dtype=arr.dtype)
        self.view = np.asarray(self.flat)
        self.slots: List[np.ndarray] = []   # NumPy views of each parameter's region
        self.grads: List[Any] = []          # the same regions as arrays of the backend
        off = 0
        for p in params:
            k = int(np.prod(p.shape))
            self.slots.append(self.view[off:off + k].reshape(p.shape))
            if isinstance(self.flat, NDArray):
                self.grads.append(NDArray.make(p.shape, device=self.flat.device,
                                               handle=self.flat._handle, offset=off,
                                               dtype=self.flat.dtype))
            else:
                self.grads.append(self.slots[-1])
            off += k
        self.ready = [False] * len(params)
        self.nready = 0
        self.request: Any = None


# id(parameter) -> (weak reference to a _DDPState, bucket index, slot index)
_slots: Dict[int, Tuple[Any, int, int]] = {}
_active: "weakref.WeakSet[_DDPState]" = weakref.WeakSet()


def _grad_ready(t: Optional[Tensor]) -> None:
    """The backward walk's grad-ready hook (Note [Grad-ready hook])."""
    if t is None:
        for state in list(_active):
            state.finish()
        return
    entry = _slots.get(id(t))
    if entry is None:
        return
    state = entry[0]()
    if state is not None and state.buckets[entry[1]].params[entry[2]] is t:
        state.ready(entry[1], entry[2], t)


class _DDPState:
    """The buckets of one DistributedDataParallel and the state of the current backward."""

    def __init__(self, params: List[Tensor], first_bytes: int, bucket_bytes: int,
                 overlap: bool):
        self.overlap = overlap
        self.buckets: List[_Bucket] = []
        group: List[Tensor] = []
        size, cap = 0, first_bytes
        for p in reversed(params):
            nbytes = int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize
            if group and (size + nbytes > cap or p.dtype != group[0].dtype):
                self.buckets.append(_Bucket(group))
                group, size, cap = [], 0, bucket_bytes
            group.append(p)
            size += nbytes
        if group:
            self.buckets.append(_Bucket(group))
        self.next_launch = 0
        self.launched_early = 0     # buckets started during the last walk (overlap)
        self.comm_wait_s = 0.0      # time finish() waited for the reductions, last backward
        self.finish_s = 0.0         # all of finish(), last backward

    def register(self) -> None:
        me = weakref.ref(self)
        for b, bucket in enumerate(self.buckets):
            for s, p in enumerate(bucket.params):
                _slots[id(p)] = (me, b, s)
        _C.set_grad_ready_hook(_grad_ready)

    def unregister(self) -> None:
        for bucket in self.buckets:
            for p in bucket.params:
                entry = _slots.get(id(p))
                if entry is not None and entry[0]() in (self, None):
                    del _slots[id(p)]
        _active.discard(self)
        if not _slots:  # no DDP left: backward walks no longer call into Python
            _C.set_grad_ready_hook(None)

    def ready(self, b: int, s: int, t: Tensor) -> None:
        bucket = self.buckets[b]
        if bucket.ready[s]:
            # a backward ended by an error left this one half done: start afresh
            self.reset()
        np.copyto(bucket.slots[s], np.asarray(t.grad.realize_cached_data()))
        bucket.ready[s] = True
        bucket.nready += 1
        _active.add(self)
        if self.overlap:
            self.launch(full_only=True)
            pending = [k.request for k in self.buckets if k.request is not None]
            if pending:
                _MPI.Request.Testall(pending)  # drive progress of the reductions in flight

    def launch(self, full_only: bool) -> None:
        """Start the reductions of the next buckets, in bucket order (the same on every rank)."""
        while self.next_launch < len(self.buckets):
            bucket = self.buckets[self.next_launch]
            if full_only and bucket.nready < len(bucket.params):
                return
            bucket.request = _comm.Iallreduce(_MPI.IN_PLACE, bucket.view, op=_MPI.SUM)
            self.next_launch += 1

    def finish(self) -> None:
        """End of the walk: reduce what is left, wait, average, set each .grad."""
        start = time.perf_counter()
        for bucket in self.buckets:
            if bucket.nready < len(bucket.params):
                # NOTE: a parameter without a gradient on this rank counts as zero here
                for s, done in enumerate(bucket.ready):
                    if not done:
                        bucket.slots[s][...] = 0
        self.launched_early = self.next_launch
        wait = time.perf_counter()
        # NOTE: what is left is started non-blocking too and all are waited for at once: one
        # blocking Allreduce per bucket would wait for the other rank once per bucket, which
        # on a loaded machine costs a scheduling delay each (bench_distributed.py: 2x to 10x
        # slower than Iallreduce + Waitall), though an idle machine reduces one large buffer
        # faster with the blocking algorithms than OpenMPI's non-blocking ones (libnbc).
        self.launch(full_only=False)
        _MPI.Request.Waitall([b.request for b in self.buckets])
        self.comm_wait_s = time.perf_counter() - wait
        n = _comm.Get_size()
        for bucket in self.buckets:
            _scale(bucket.view, n)
            for p, g in zip(bucket.params, bucket.grads):
                p.grad = Tensor.make_const(g)
        self.reset()
        self.finish_s = time.perf_counter() - start

    def reset(self) -> None:
        pending = [b.request for b in self.buckets if b.request is not None]
        if pending:
            _MPI.Request.Waitall(pending)
        for bucket in self.buckets:
            bucket.ready = [False] * len(bucket.params)
            bucket.nready = 0
            bucket.request = None
        self.next_launch = 0
        _active.discard(self)


def _buffers(module: Module) -> List[Tuple[Module, str]]:
    """(module, attribute) of every Tensor that is not a Parameter (running statistics)."""
    found = []
    for m in [module] + module._children():
        for name in sorted(vars(m)):
            v = getattr(m, name)
            if isinstance(v, Tensor) and not isinstance(v, Parameter):
                found.append((m, name))
    return found


class DistributedDataParallel(Module):
    """Wrap `module` for data-parallel training: gradients averaged over the ranks.

    At construction the parameters and buffers of rank 0 are broadcast to all
    ranks. After each backward every parameter's .grad is the mean over the
    ranks of its local gradient (a view of a flat bucket: it is overwritten by
    the next backward). Buckets: `first_bucket_mb` (1 MB) then `bucket_mb`
    (25 MB), filled in reverse parameter order; with overlap=True a bucket is
    reduced (non-blocking) as soon as its gradients are final, otherwise all
    after the walk. BatchNorm running statistics stay per rank unless
    sync_bn=True, which averages them over the ranks after every training
    forward (the normalisation itself uses each rank's own batch).

    `comm_wait_s` is the time the last backward waited for the reductions
    after the walk (communication not hidden behind it).
    """

    def __init__(self, module: Module, bucket_mb: float = 25.0, first_bucket_mb: float = 1.0,
                 sync_bn: bool = False, overlap: bool = True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel wraps a needle.nn.Module, got "
                            f"{type(module).__name__}")
        if bucket_mb <= 0 or first_bucket_mb <= 0:
            raise ValueError(f"DistributedDataParallel: bucket sizes must be > 0, got "
                             f"bucket_mb={bucket_mb}, first_bucket_mb={first_bucket_mb}")
        self.module = module
        self.sync_bn = sync_bn
        self.training = module.training
        unique: Dict[int, Tensor] = {}
        for p in module.parameters():
            unique.setdefault(id(p), p)
        params = list(unique.values())
        tensors = params + [getattr(m, name) for m, name in _buffers(module)]
        self._state: Optional[_DDPState] = None
        if world_size() == 1:
            return
        metas = [(tuple(t.shape), str(t.dtype)) for t in tensors]
        every = _comm.allgather(metas)
        for r, theirs in enumerate(every):
            if theirs != metas:
                raise ValueError(
                    f"DistributedDataParallel: rank {r} has a different model than rank "
                    f"{rank()}: {len(theirs)} vs {len(metas)} parameters and buffers, first "
                    f"difference {_first_difference(theirs, metas)}")
        for t in tensors:
            _comm.Bcast(_buffer(t, "DistributedDataParallel"), root=0)
        trainable = [p for p in params if p.requires_grad]
        self._state = _DDPState(trainable, int(first_bucket_mb * 2**20),
                                int(bucket_mb * 2**20), overlap)
        self._state.register()
        weakref.finalize(self, self._state.unregister)

    @property
    def comm_wait_s(self) -> float:
        return self._state.comm_wait_s if self._state is not None else 0.0

    @property
    def overlap(self) -> bool:
        """Reduce a bucket during the walk as soon as it is full (else all after the walk)."""
        return self._state.overlap if self._state is not None else False

    @overlap.setter
    def overlap(self, value: bool) -> None:
        if self._state is not None:
            self._state.overlap = bool(value)

    @property
    def launched_early(self) -> int:
        """Buckets whose reduction started before the last backward walk ended."""
        return self._state.launched_early if self._state is not None else 0

    @property
    def num_buckets(self) -> int:
        return len(self._state.buckets) if self._state is not None else 0

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        if self.sync_bn and self.training and world_size() > 1:
            for m, name in _buffers(self.module):
                all_reduce(getattr(m, name), op="mean")
        return out


def _first_difference(a: List, b: List) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"at #{i}: {x} vs {y}"
    return f"at #{min(len(a), len(b))} (one list is longer)"
