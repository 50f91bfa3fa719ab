"""needle.nn: modules (API.md 6). Convolution and Transformer modules join
here with their issues (nn_conv, nn_transformer)."""
from .nn_basic import *  # noqa: F401,F403
from .nn_sequence import *  # noqa: F401,F403
