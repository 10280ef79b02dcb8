"""The tier a machine reaches (cpu < gpu < trt) and why not a higher one (README, "The tiers").

Above both `env` (the GPU, nvcc) and `mvlib.tensorrt.flavours` (whether the run's TensorRT flavour runs on that
GPU), so neither of them imports the other's callers. The trt tier asks the run's own TensorRT decision
(`flavours.decide`, the same one the driver hands every notebook), never "any installed flavour": with
trt_flavour='tensorrt_rtx' on an H200 that also has full TensorRT, the tier is gpu, because RTX does not run there.

Serves: notebooks 01 to 06 through run (which stages a machine reaches) and the driver (the tier check).
"""
import functools

from mvlib import env
from mvlib.tensorrt import flavours

TIERS = ("cpu", "gpu", "trt")
# A capability beside the tiers: a stage of this "tier" runs wherever a TensorRT builder is installed (engines are
# built, run or not), whatever the machine's tier; skipped there for any reason the machine does not excuse
# (MACHINE_LACKS), it fails the run.
BUILDER = "build"
# What a skip may say the machine lacks (the marks StageSkipped subclasses carry: flavours.NoBuilder, the SiLU
# plugin's NoCompiler, fp8.NoFP8). The run's tier is still reached: such a skip is the machine's, not a failure.
MACHINE_LACKS = ("no_builder", "no_compiler", "no_fp8_hardware")


def rank(tier: str) -> int:
    """Order of a tier name: cpu < gpu < trt."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    return TIERS.index(tier)


@functools.cache
def runtime_status(trt_flavour: str | None = "auto", trt_target: str = "auto") -> tuple[bool, str]:
    """Whether the run's TensorRT flavour (as `flavours.decide` resolves it) runs engines here, and why not."""
    decision = flavours.decide(trt_flavour or "auto", trt_target or "auto")
    if decision["runs_here"]:
        return True, decision["label"]
    return False, "no TensorRT runtime for this machine: " + decision["why"]


@functools.cache
def detect(trt_flavour: str | None = "auto", trt_target: str = "auto") -> str:
    """The highest tier this machine reaches with that TensorRT decision."""
    if not env.cuda_status()[0] or env.nvcc_path() is None:
        return "cpu"
    return "trt" if runtime_status(trt_flavour, trt_target)[0] else "gpu"


def missing_for(tier: str, trt_flavour: str | None = "auto", trt_target: str = "auto") -> str:
    """Why this machine does not reach `tier` (empty if it does)."""
    if rank(detect(trt_flavour, trt_target)) >= rank(tier):
        return ""
    reasons = []
    if tier == "trt" and not runtime_status(trt_flavour, trt_target)[0]:
        reasons.append(runtime_status(trt_flavour, trt_target)[1])
    if not env.cuda_status()[0]:
        reasons.append(env.cuda_status()[1])
    elif env.nvcc_path() is None:
        reasons.append("nvcc not found")
    return "; ".join(reasons)


def limits(trt_flavour: str | None = "auto", trt_target: str = "auto") -> dict[str, str]:
    """Why this machine does not reach each tier ('' where it does): a run manifest's `tier_limits`."""
    return {t: missing_for(t, trt_flavour, trt_target) for t in TIERS}
