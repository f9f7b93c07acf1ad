"""distill: distil vision foundation models into the Y-MAP-Net multi-task student."""

from distill.errors import DistillError

__all__ = ["DistillError", "__version__"]

__version__ = "0.1.0"
