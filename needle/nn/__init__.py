"""needle.nn: modules (API.md 6). Sequence and Transformer modules join here
with their issues (nn_sequence, nn_transformer)."""
from .nn_basic import *  # noqa: F401,F403
from .nn_conv import *  # noqa: F401,F403
