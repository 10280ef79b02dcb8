"""Import-time fixes for environment quirks, applied once when mvlib is imported.

They are quiet when they work: the details go to the `mvlib` logger at DEBUG level. Set
MVLIB_VERBOSE=1 to see them as warnings.

Serves: notebooks 01 to 06 and the driver (applied on `import mvlib`).
"""
import logging
import os
import re
import sys
import warnings

import torch

log = logging.getLogger("mvlib")


def verbose() -> bool:
    """Whether MVLIB_VERBOSE asks for the environment notes as warnings."""
    return os.environ.get("MVLIB_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


def _import_torchvision_without_ops() -> None:
    """Import torchvision even when its C++ ops cannot load (CUDA wheel on a CPU-only torch).

    PyPI's torchvision wheels link against CUDA torch; with a CPU-only torch their
    `_C` extension fails to load, and torchvision then dies at import because it
    registers fake kernels for ops that were never defined. timm imports
    torchvision but MobileViT needs none of those ops (nms, roi_align, ...), so we
    define placeholder schemas for them and let the import finish. Calling one of
    those ops still fails, loudly.
    """
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    lib = torch.library.Library("torchvision", "DEF")
    defined = []
    for _ in range(64):
        try:
            import torchvision  # noqa: F401,F811
            break
        except RuntimeError as err:
            match = re.search(r"operator torchvision::(\w+) does not exist", str(err))
            if not match:
                raise
            lib.define(f"{match.group(1)}(Tensor[] args) -> Tensor")
            defined.append(match.group(1))
            for name in [m for m in sys.modules if m.startswith("torchvision")]:
                del sys.modules[name]
    sys.modules["torchvision"]._mvlib_placeholder_ops = tuple(defined)  # type: ignore[attr-defined]
    _KEEP.append(lib)  # the Library object must outlive this function
    note = ("torchvision's C++ ops could not load (a CUDA torchvision wheel on a CPU-only torch); "
            f"placeholder schemas were defined for {len(defined)} ops that MobileViT does not use "
            f"({', '.join(defined)}); calling one of them raises")
    if verbose():
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    else:  # the normal case on a CPU machine: nothing the user has to act on
        log.debug(note)


_KEEP: list = []
_import_torchvision_without_ops()
