"""Course-compatible module path: every op lives in needle.ops."""
from . import *  # noqa: F401,F403
