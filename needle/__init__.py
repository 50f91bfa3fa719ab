"""needle: a small deep learning library with a PyTorch-like API and a C core.

>>> import needle as ndl
>>> ndl.cpu()
cpu()
"""
from . import backend_ndarray
from .backend_selection import *  # noqa: F401,F403
