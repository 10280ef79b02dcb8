"""What this machine has: the GPU and PyTorch's view of it, nvcc, the network, library versions.

mvlib.tiers ranks them.

Serves: notebooks 01 to 06 and the driver, through run, tiers and the TensorRT package.
"""
import functools
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import threading

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


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a run depends on (None where absent)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
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
