"""needle's array backend: the strided NDArray and its devices (API.md 2).

>>> import needle.backend_ndarray as nd
>>> a = nd.array([[1, 2, 3], [4, 5, 6]])
>>> (a.permute((1, 0)) @ a).shape
(3, 3)
"""
from .ndarray import *  # noqa: F401,F403
from .ndarray import __all__  # noqa: F401
