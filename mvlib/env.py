"""What this machine has: the GPU and PyTorch's view of it, nvcc, the network, library versions.

mvlib.tiers ranks them.

Serves: notebooks 01 to 06 and the driver, through run, tiers and the TensorRT package.
"""
import functools
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import threading
from pathlib import Path

PACKAGES = ("torch", "timm", "onnx", "onnxruntime", "onnxruntime-extensions", "onnx-graphsurgeon",
            "nvidia-modelopt", "polygraphy", "papermill", "numpy")


@functools.cache
def cuda_status() -> tuple[bool, str]:
    """Whether PyTorch sees an NVIDIA GPU, and why not."""
    try:
        import torch
    except ImportError:
        return False, "PyTorch not installed"
    if not torch.cuda.is_available():
        return False, f"no CUDA GPU visible to PyTorch {torch.__version__}"
    return True, torch.cuda.get_device_name(0)


def nvcc_path() -> str | None:
    """Path of nvcc, if any (PATH first, then the usual CUDA prefix)."""
    found = shutil.which("nvcc")
    if found:
        return found
    for cand in ("/usr/local/cuda/bin/nvcc",):
        if shutil.which(cand):
            return cand
    return None


# Other distributions that install the same module (tried before scanning every distribution's files).
ALSO = {"onnxruntime": ("onnxruntime-gpu",)}
# The module each package is imported as, where the names differ.
MODULES = {"onnxruntime-extensions": "onnxruntime_extensions", "onnx-graphsurgeon": "onnx_graphsurgeon",
           "nvidia-modelopt": "modelopt"}


def provider(module: str, *names: str) -> importlib.metadata.Distribution | None:
    """The installed distribution whose files this process imports `module` from, None where it does not import
    (the distributions `names` are tried first).

    Not the distribution named like the module: `onnxruntime` and `onnxruntime-gpu` install the same module, and
    where both are (an image's CPU build, the GPU build ahead of it on PYTHONPATH), the one first on sys.path is
    the one a run uses; `make` installs one only, and then `onnxruntime-gpu` alone holds the module.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    origin = Path(spec.origin).resolve()

    def holding(name: str) -> importlib.metadata.Distribution | None:
        """The distribution `name` first on sys.path, if the imported module is among its files."""
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return None
        site = Path(dist.locate_file("")).resolve()
        return dist if origin.is_relative_to(site / module) or origin.parent == site else None

    for name in [*names, module.replace("_", "-"), *ALSO.get(module, ())]:
        if dist := holding(name):
            return dist
    for name in importlib.metadata.packages_distributions().get(module, ()):  # reads every distribution: seconds
        if dist := holding(name):
            return dist
    return None


def versions() -> dict[str, str | None]:
    """The version of each package a run depends on, read off the distribution its module imports from (None where
    it does not import), and which distribution holds ONNX Runtime (`onnxruntime-dist`: its CPU or GPU build)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        dist = provider(MODULES.get(name, name), name)
        out[name] = dist.version if dist else None
        if name == "onnxruntime":
            out["onnxruntime-dist"] = dist.metadata["Name"] if dist else None
    return out


def gpu_info() -> dict:
    """GPU name, driver, CUDA runtime and compute capability (empty values on the CPU)."""
    info: dict = {"gpu": None, "driver": None, "cuda": None, "capability": None}
    ok, name = cuda_status()
    if ok:
        import torch
        info.update(gpu=name, cuda=torch.version.cuda,
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


def machine() -> dict:
    """A short description of the host."""
    return {"host_cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(), "nvcc": nvcc_path()}


def offline() -> str:
    """Why network access is switched off (MVLIB_OFFLINE / HF_HUB_OFFLINE), or an empty string."""
    if os.environ.get("MVLIB_OFFLINE") or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return "offline mode is set (MVLIB_OFFLINE / HF_HUB_OFFLINE)"
    return ""


def reachable(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """Whether `host` accepts a TCP connection within `timeout` seconds, DNS included, and why not."""
    if offline():
        return False, offline()
    result: list = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append((True, "reachable"))
        except OSError as err:
            result.append((False, f"{host} unreachable ({err})"))

    thread = threading.Thread(target=probe, daemon=True)  # DNS lookups ignore socket timeouts
    thread.start()
    thread.join(timeout)
    return result[0] if result else (False, f"{host} did not answer within {timeout:.0f} s")
