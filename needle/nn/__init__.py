"""needle.nn: modules (API.md 6). Convolution, sequence and Transformer
modules join here with their issues (nn_conv, nn_sequence, nn_transformer)."""
from .nn_basic import *  # noqa: F401,F403
