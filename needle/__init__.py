"""needle: a small deep learning library with a PyTorch-like API and a C core.

>>> import needle as ndl
>>> x = ndl.Tensor([[1.0, 2.0], [3.0, 4.0]])
>>> y = (x @ x).sum()
>>> y.backward()
>>> x.grad.shape
(2, 2)

Name resolution follows the course's __init__ (API.md 1.2): later wins.
"""
from . import ops
from .ops import *  # noqa: F401,F403
from .autograd import Tensor, all_devices, cpu, no_grad  # noqa: F401
from . import init
from .init import ones, ones_like, zeros, zeros_like  # noqa: F401
from . import data, nn, optim  # noqa: F401
from . import distributed  # noqa: F401
from .backend_selection import *  # noqa: F401,F403
from . import tools, viz  # noqa: F401,E402
from .tools import (detect_anomaly, get_printoptions, gradcheck, printoptions,  # noqa: F401,E402
                    profile, set_printoptions)
from .serialization import load, save  # noqa: F401
from . import interop  # noqa: F401
from .interop import from_dlpack  # noqa: F401
