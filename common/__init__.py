"""The lowest layer: the one error base every package derives from, and logging setup."""

from common.errors import DistilleryError
from common.logs import configure_logging

__all__ = ["DistilleryError", "configure_logging"]
