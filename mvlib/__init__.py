"""Helpers for the MobileViT-on-TensorRT study; the notebooks import everything from here.

Serves: notebooks 01 to 06 and the driver.
"""
__version__ = "0.1.0"
