"""Run under mpirun by tests/test_distributed.py: rank 1 raises while rank 0 waits in
an all-reduce that will never complete; the job must end, not hang."""
import numpy as np

import needle as ndl
import needle.distributed as dist

dist.init()
if dist.rank() == 1:
    raise RuntimeError("boom on rank 1")
dist.all_reduce(ndl.Tensor(np.ones(4, np.float32)))
print("rank 0 finished the all-reduce", flush=True)
