"""Run under mpirun by tests/test_distributed.py: the collectives on each kind of array.

Writes OUT/rank<r>.npz with the results and the error messages it caught."""
import sys

import numpy as np

import needle as ndl
import needle.distributed as dist
from needle.backend_ndarray import NDArray

out = sys.argv[1]
dist.init()
dist.init()  # twice is fine
r, w = dist.rank(), dist.world_size()
res = {}
base = np.arange(12, dtype=np.float32).reshape(3, 4) * (r + 1)

t = ndl.Tensor(base)
arr_before = t.cached_data
ptr_before = t.cached_data._handle.ptr()
dist.all_reduce(t)
res["sum_tensor"] = t.numpy()
res["in_place"] = t.cached_data is arr_before and t.cached_data._handle.ptr() == ptr_before

nd = ndl.backend_ndarray.array(base)
dist.all_reduce(nd, op="mean")
res["mean_ndarray"] = nd.numpy()

a64 = base.astype(np.float64) - 5 * r
dist.all_reduce(a64, op="max")
res["max_numpy64"] = a64
i32 = np.array([r + 1, 10 * (r + 1)], dtype=np.int32)
dist.all_reduce(i32, op="min")
res["min_int32"] = i32

tr = ndl.Tensor(base).transpose()            # a non-compact view: compacted, then reduced
dist.all_reduce(tr)
res["sum_transposed"] = tr.numpy()

b = ndl.Tensor(base + 100)
dist.broadcast(b, src=w - 1)
res["bcast"] = b.numpy()

g = dist.all_gather(ndl.Tensor(base[r]))
res["gather"] = g.numpy()
res["gather_is_tensor"] = isinstance(g, ndl.Tensor)
gn = dist.all_gather(ndl.backend_ndarray.array(base[:, r]))
res["gather_nd"] = gn.numpy()
res["gather_nd_is_ndarray"] = isinstance(gn, NDArray)

errors = []
try:  # different shapes on the ranks: the same clear error everywhere, no hang
    dist.all_reduce(ndl.Tensor(np.zeros(3 + r, np.float32)))
except ValueError as e:
    errors.append(str(e))
try:
    dist.all_reduce(ndl.Tensor(base), op="prod")
except ValueError as e:
    errors.append(str(e))
try:
    dist.broadcast(ndl.Tensor(base), src=w)
except ValueError as e:
    errors.append(str(e))
res["errors"] = np.array(errors)
dist.barrier()
np.savez(f"{out}/rank{r}.npz", **res)
