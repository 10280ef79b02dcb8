"""The tier a machine reaches (cpu < gpu < trt) and why not a higher one (README, "The tiers").

Above both `env` (the GPU, nvcc) and `trt` (whether an installed TensorRT flavour runs on that GPU), so
neither of them imports the other's callers.
"""
import functools

from mvlib import env, trt

TIERS = ("cpu", "gpu", "trt")


def rank(tier: str) -> int:
    """Order of a tier name: cpu < gpu < trt."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    return TIERS.index(tier)


@functools.cache
def runtime_status() -> tuple[bool, str]:
    """Whether an installed TensorRT flavour runs engines on this GPU (the trt tier), and why not."""
    reasons = []
    for name in trt.FLAVOUR_NAMES:
        flavour, why = trt.installed(name)
        if flavour is not None:
            runs, why = flavour.runs_here()
            if runs:
                return True, flavour.label
        reasons.append(why)
    return False, "no TensorRT runtime for this machine: " + "; ".join(reasons)


@functools.cache
def detect() -> str:
    """The highest tier this machine reaches."""
    if not env.cuda_status()[0] or env.nvcc_path() is None:
        return "cpu"
    return "trt" if runtime_status()[0] else "gpu"


def missing_for(tier: str) -> str:
    """Why this machine does not reach `tier` (empty if it does)."""
    if rank(detect()) >= rank(tier):
        return ""
    reasons = []
    if tier == "trt" and not runtime_status()[0]:
        reasons.append(runtime_status()[1])
    if not env.cuda_status()[0]:
        reasons.append(env.cuda_status()[1])
    elif env.nvcc_path() is None:
        reasons.append("nvcc not found")
    return "; ".join(reasons)
