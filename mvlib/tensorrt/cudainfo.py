"""CUDA facts behind the TensorRT decisions: the driver's CUDA version, a GPU's compute capability, the wheel.

NVIDIA's TensorRT and TensorRT-RTX Python samples talk to CUDA through cuda-python (`cuda.bindings`), and so
does this module: `cuDriverGetVersion` for the driver, `cuDeviceGetAttribute` for the compute capability.
Where cuda-python is not installed yet it falls back to the driver library itself (ctypes on libcuda.so.1,
the same call), then to `nvidia-smi`. Only the standard library is imported at module level, because the
Makefile runs this file as a script before anything is installed into the virtual environment:

    python mvlib/tensorrt/cudainfo.py extra     # rtx-cu12 or rtx-cu13: the pip extra for this driver
    python mvlib/tensorrt/cudainfo.py extra trt # trt-cu12 or trt-cu13: full TensorRT's, where a GPU is
    python mvlib/tensorrt/cudainfo.py extra ort # ort-cpu, ort-cu12 or ort-cu13: ONNX Runtime's build
    python mvlib/tensorrt/cudainfo.py unwanted ort # the ONNX Runtime package that must not be installed beside it

TensorRT-RTX 1.7 is on PyPI as a CUDA 12 and a CUDA 13 build; a CUDA 13 build needs a driver that supports
CUDA 13 (R580 or newer) and fails with cudaError 35 on an R535-R570 driver. Without a driver (a CPU machine
that only builds engines ahead of time) the CUDA 13 build is chosen: the builder needs no driver.

ONNX Runtime is one package or the other, never both (`onnxruntime` and `onnxruntime-gpu` install the same module):
the CPU build without a driver (or one older than CUDA 12, for which no current onnxruntime-gpu is built), else the GPU
build of the driver's CUDA major. PyPI's onnxruntime-gpu is a CUDA 12 build from 1.19 to 1.26 and a CUDA 13 build
from 1.27 on (its wheels' metadata: nvidia-*-cu12 against nvidia-*-cu13 / nvidia-* ~=13 requirements).

Serves: notebooks 03 to 06 through flavours, and `make env` (which CUDA extra to install).
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys

NEWEST_CUDA_MAJOR = 13  # the newest CUDA major TensorRT-RTX ships a wheel for (tensorrt-rtx-cu13)
OLDEST_CUDA_MAJOR = 12  # the oldest (tensorrt-rtx-cu12)


def _via_cuda_python() -> tuple[int | None, str]:
    """cuDriverGetVersion through cuda-python, as NVIDIA's samples call it; None and why where it cannot."""
    try:
        from cuda.bindings import driver
    except ImportError:
        return None, "cuda-python not installed"
    try:
        err, version = driver.cuDriverGetVersion()
    except Exception as exc:  # cuda.pathfinder's DynamicLibNotFoundError where no driver is installed
        return None, f"no NVIDIA driver ({type(exc).__name__})"
    if err != driver.CUresult.CUDA_SUCCESS:
        return None, f"cuDriverGetVersion: {err}"
    return int(version), "cuda-python cuDriverGetVersion"


def _via_libcuda() -> tuple[int | None, str]:
    """The same call on the driver library with ctypes (before cuda-python is installed)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None, "no NVIDIA driver (libcuda.so.1 not found)"
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None, "cuDriverGetVersion failed"
    return version.value, "libcuda.so.1 cuDriverGetVersion"


def parse_nvidia_smi(text: str) -> int | None:
    """The driver's CUDA version (12020 for 12.2) from nvidia-smi's banner ('CUDA Version: 12.2'), else None."""
    found = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", text)
    return int(found.group(1)) * 1000 + int(found.group(2)) * 10 if found else None


def _via_nvidia_smi() -> tuple[int | None, str]:
    """The CUDA version nvidia-smi's banner states."""
    if not shutil.which("nvidia-smi"):
        return None, "nvidia-smi not found"
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nvidia-smi failed ({type(exc).__name__})"
    version = parse_nvidia_smi(out)
    return (version, "nvidia-smi") if version else (None, "nvidia-smi printed no CUDA version")


def driver_version() -> tuple[int | None, str]:
    """The CUDA version the driver supports (cuDriverGetVersion: 12020 is 12.2) and how it was read, or None
    and why not (each way tried, in order)."""
    reasons = []
    for way in (_via_cuda_python, _via_libcuda, _via_nvidia_smi):
        version, how = way()
        if version:
            return version, how
        reasons.append(how)
    return None, "; ".join(reasons)


def version_text(version: int) -> str:
    """'12.2' for 12020."""
    return f"{version // 1000}.{version % 1000 // 10}"


def cuda_major_for(version: int | None) -> int:
    """The CUDA major of the TensorRT-RTX wheel a driver runs: its own major, within the majors NVIDIA ships;
    the newest where there is no driver (engines are then only built, which needs none)."""
    if version is None:
        return NEWEST_CUDA_MAJOR
    return max(OLDEST_CUDA_MAJOR, min(NEWEST_CUDA_MAJOR, version // 1000))


EXTRA_FLAVOURS = ("rtx", "trt", "ort")  # the project's extras per CUDA major: rtx-cu12/13, trt-cu12/13, ort-*
ORT_PACKAGES = {"ort-cpu": "onnxruntime", "ort-cu12": "onnxruntime-gpu", "ort-cu13": "onnxruntime-gpu"}


def extra_for(version: int | None, flavour: str = "rtx") -> str:
    """The pip extra of the project for this driver: rtx-cu12 or rtx-cu13 (TensorRT-RTX), trt-cu12 or trt-cu13
    (full TensorRT, whose bare `tensorrt` package would pull the CUDA 13 build whatever the driver), ort-cpu,
    ort-cu12 or ort-cu13 (ONNX Runtime: the CPU build where no driver of CUDA 12 or newer is)."""
    if flavour not in EXTRA_FLAVOURS:
        raise ValueError(f"flavour {flavour!r}: use 'rtx' (TensorRT-RTX), 'trt' (full TensorRT) or 'ort' "
                         "(ONNX Runtime)")
    if flavour == "ort" and (version is None or version // 1000 < OLDEST_CUDA_MAJOR):
        return "ort-cpu"
    return f"{flavour}-cu{cuda_major_for(version)}"


def unwanted_ort(extra: str) -> str:
    """The ONNX Runtime package that must not sit beside `extra`'s (both install the module `onnxruntime`)."""
    return "onnxruntime-gpu" if ORT_PACKAGES[extra] == "onnxruntime" else "onnxruntime"


def device_capability(ordinal: int = 0) -> str | None:
    """Compute capability of GPU `ordinal` ('8.6') through cuda-python's driver API; None where it cannot tell."""
    try:
        from cuda.bindings import driver
        ok = driver.CUresult.CUDA_SUCCESS
        if driver.cuInit(0)[0] != ok:
            return None
        err, dev = driver.cuDeviceGet(ordinal)
        if err != ok:
            return None
        attr = driver.CUdevice_attribute
        err1, major = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        err2, minor = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    except Exception:  # not installed, or no driver library: the caller falls back to PyTorch's view
        return None
    return f"{major}.{minor}" if err1 == ok and err2 == ok else None


def main(argv: list[str]) -> int:
    """`extra [rtx|trt|ort]`: print the pip extra for this driver; `unwanted ort`: the ONNX Runtime package that
    extra replaces; `driver`: print the driver's CUDA version and its source."""
    version, how = driver_version()
    flavour = argv[1] if len(argv) == 2 else "rtx"
    if argv[:1] == ["extra"] and len(argv) <= 2 and flavour in EXTRA_FLAVOURS:
        print(extra_for(version, flavour))
        return 0
    if argv == ["unwanted", "ort"]:
        print(unwanted_ort(extra_for(version, "ort")))
        return 0
    if argv == ["driver"]:
        print(f"{version_text(version)} ({how})" if version else f"none ({how})")
        return 0
    print("usage: python mvlib/tensorrt/cudainfo.py extra [rtx|trt|ort] | unwanted ort | driver", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
