"""needle.nn: modules (API.md 6). Transformer modules join here with their
issue (nn_transformer)."""
from .nn_basic import *  # noqa: F401,F403
from .nn_conv import *  # noqa: F401,F403
from .nn_sequence import *  # noqa: F401,F403
