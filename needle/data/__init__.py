"""needle.data (API.md 8): datasets, transforms and the DataLoader.

>>> import numpy as np
>>> import needle as ndl
>>> ds = ndl.data.NDArrayDataset(np.arange(10, dtype=np.float32).reshape(5, 2),
...                              np.arange(5))
>>> [x.shape for x, y in ndl.data.DataLoader(ds, batch_size=2)]
[(2, 2), (2, 2), (1, 2)]
"""
from .data_basic import *  # noqa: F401,F403
from .data_transforms import *  # noqa: F401,F403
from .datasets import *  # noqa: F401,F403
from . import datasets  # noqa: F401
