"""Helpers for the MobileViT-on-TensorRT study; the notebooks import everything from here."""
from mvlib import _compat  # noqa: F401  (must run before anything imports timm)

__version__ = "0.1.0"
