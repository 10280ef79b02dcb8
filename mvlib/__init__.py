"""Helpers for the MobileViT-on-TensorRT study; the notebooks import everything from here.

Serves: notebooks 01 to 06 and the driver (importing mvlib applies _compat first).
"""
from mvlib import _compat  # noqa: F401  (must run before anything imports timm)

__version__ = "0.1.0"
