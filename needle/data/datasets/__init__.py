"""Built-in datasets (API.md 8.3); each submodule is importable by its dotted path."""
from .mnist_dataset import *  # noqa: F401,F403
from .ndarray_dataset import *  # noqa: F401,F403
from .cifar10_dataset import *  # noqa: F401,F403
from .ptb_dataset import *  # noqa: F401,F403
from . import cifar10_dataset, mnist_dataset, ndarray_dataset, ptb_dataset  # noqa: F401
