"""What this machine can do: the tier (cpu, gpu, trt), the GPU, and library versions."""
import functools
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import threading

TIERS = ("cpu", "gpu", "trt")
PACKAGES = ("torch", "timm", "onnx", "onnxruntime", "onnxruntime-extensions", "onnx-graphsurgeon",
            "nvidia-modelopt", "polygraphy", "papermill", "numpy")


def tier_rank(tier: str) -> int:
    """Order of a tier name: cpu < gpu < trt."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    return TIERS.index(tier)


@functools.lru_cache(maxsize=None)
def tensorrt_status() -> tuple[bool, str]:
    """Whether an installed TensorRT flavour runs engines on this GPU (the trt tier), and why not."""
    from mvlib import trt  # trt imports env: import here, not at the top
    reasons = []
    for name in trt.FLAVOUR_NAMES:
        flavour, why = trt.installed(name)
        if flavour is not None:
            runs, why = flavour.runs_here()
            if runs:
                return True, flavour.label
        reasons.append(why)
    return False, "no TensorRT runtime for this machine: " + "; ".join(reasons)


@functools.lru_cache(maxsize=None)
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


@functools.lru_cache(maxsize=None)
def detect_tier() -> str:
    """The highest tier this machine reaches (README, "The tiers")."""
    if not cuda_status()[0] or nvcc_path() is None:
        return "cpu"
    return "trt" if tensorrt_status()[0] else "gpu"


def missing_for(tier: str) -> str:
    """Why this machine does not reach `tier` (empty if it does)."""
    have = detect_tier()
    if tier_rank(have) >= tier_rank(tier):
        return ""
    reasons = []
    if tier == "trt" and not tensorrt_status()[0]:
        reasons.append(tensorrt_status()[1])
    if not cuda_status()[0]:
        reasons.append(cuda_status()[1])
    elif nvcc_path() is None:
        reasons.append("nvcc not found")
    return "; ".join(reasons)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a run depends on (None where absent)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    from mvlib import trt
    for name in trt.FLAVOUR_NAMES:  # what imports, not what pip lists (PyPI's `tensorrt` is a stub)
        flavour, _ = trt.installed(name)
        out[name] = flavour.version if flavour else None
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
