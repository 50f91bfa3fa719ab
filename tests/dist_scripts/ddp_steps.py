"""Run under mpirun by tests/test_distributed.py: DDP in float64, a few SGD steps.

Each rank starts from its own random parameters (DDP must broadcast rank 0's),
takes its half of a fixed global batch per step, and writes OUT/rank<r>.npz:
the parameters after the broadcast, the gradients of the first step, the
parameters after every step, bucket counts, and BatchNorm running statistics
with and without sync_bn.
"""
import sys

import numpy as np

import needle as ndl
import needle.distributed as dist
import needle.nn as nn

out, overlap = sys.argv[1], sys.argv[2] == "overlap"
dist.init(world_size=2)
r, w = dist.rank(), dist.world_size()
np.random.seed(100 + r)  # different initial weights on each rank
model = nn.Sequential(nn.Linear(6, 16, dtype="float64"), nn.ReLU(),
                      nn.Linear(16, 16, dtype="float64"), nn.Tanh(),
                      nn.Linear(16, 3, dtype="float64"))
# tiny buckets: several buckets, several parameters per bucket
ddp = dist.DistributedDataParallel(model, bucket_mb=1500 / 2**20, first_bucket_mb=300 / 2**20,
                                   overlap=overlap)
res = {f"init_{i}": p.numpy() for i, p in enumerate(model.parameters())}
data = np.random.RandomState(7)
X = data.randn(4, 8, 6)          # 4 steps of a global batch of 8
y = data.randint(0, 3, (4, 8))
opt = ndl.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.SoftmaxLoss()
for step in range(4):
    xs = ndl.Tensor(X[step, r::w], dtype="float64", requires_grad=False)
    ys = ndl.Tensor(y[step, r::w], requires_grad=False)
    opt.reset_grad()
    loss_fn(ddp(xs), ys).backward()
    if step == 0:
        res.update({f"grad_{i}": p.grad.numpy() for i, p in enumerate(model.parameters())})
        res["launched_early"] = ddp.launched_early
    opt.step()
    res.update({f"step{step}_{i}": p.numpy() for i, p in enumerate(model.parameters())})
res["num_buckets"] = ddp.num_buckets

for sync in (False, True):
    bn = nn.BatchNorm1d(6, dtype="float64")
    bddp = dist.DistributedDataParallel(bn, sync_bn=sync)
    bddp(ndl.Tensor(X[0, r::w], dtype="float64", requires_grad=False))
    res[f"running_mean_sync{int(sync)}"] = bn.running_mean.numpy()
    res[f"running_var_sync{int(sync)}"] = bn.running_var.numpy()
np.savez(f"{out}/rank{r}.npz", **res)

# a DDP that is gone takes the backward hook with it
del ddp, bddp
import gc  # noqa: E402

gc.collect()
from needle import _C  # noqa: E402

assert _C.set_grad_ready_hook(None) is None, "the grad-ready hook outlived every DDP"
