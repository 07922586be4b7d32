"""``fuzzcache.strategies`` is the top-level ``strategies`` package under the product's name."""

from strategies import *  # noqa: F401,F403
from strategies import __all__  # noqa: F401
