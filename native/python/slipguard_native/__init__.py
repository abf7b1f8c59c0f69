"""slipguard's native record path: the compiled module `_native` (built with maturin from
native/), and nothing else. streams/join/native.py is its Python side."""

from slipguard_native._native import *  # noqa: F403
from slipguard_native._native import __version__  # noqa: F401
