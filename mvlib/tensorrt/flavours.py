"""The two TensorRT flavours, and the one decision a run makes: which flavour, which target, does it run here.

Full TensorRT 10/11 (module `tensorrt`, from NVIDIA's index or an SDK/container) builds for the GPU it runs on
and runs on compute capability 7.5 and newer. TensorRT-RTX (module `tensorrt_rtx`, PyPI) builds ahead of time
for a named compute capability on any machine, GPU or not, and runs on the GPUs of its support matrix.
Everything that differs between them is a property of `Flavour`. The driver calls `decide()` once per run
and hands its concrete `trt_flavour` / `trt_target` to every notebook; `mvlib.tiers` asks the same decision.

Serves: notebooks 03 to 06 and the driver (one flavour and target decision per run).
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from mvlib import env
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cudainfo

FLAVOUR_NAMES = ("tensorrt", "tensorrt_rtx")  # preference order of trt_flavour='auto'
DEFAULT_TARGET = "sm86"  # the seed's A10: where no GPU here runs the flavour, engines are built for it
# TensorRT-RTX's support matrices, "Supported Compute Capability per Platform", Linux x86-64
# (docs.nvidia.com/deeplearning/tensorrt-rtx, getting-started/support-matrix-1/1.0 ... 1.5): 7.5, 8.6, 8.9 and
# 12.0; 1.5 adds 12.1 (GB10). 8.0 (A100) is not listed, although the builder has an SM80 target. Where the
# runtime can judge a plan (Runtime.get_engine_validity), runner.runnable asks it instead of this table.
RTX_MATRIX = {(1, 0): ("7.5", "8.6", "8.9", "12.0"), (1, 5): ("7.5", "8.6", "8.9", "12.0", "12.1")}
FULL_MIN_CAPABILITY = (7, 5)  # TensorRT 10/11 support matrices: Turing and newer
# The oldest driver each wheel's CUDA major runs on: (its cuDriverGetVersion, the release). TensorRT's prerequisites:
# CUDA 12 wheels need R535 (CUDA 12.2), not R525 (12.0); CUDA 13 wheels need R580.
MIN_DRIVER = {12: (12020, 535), 13: (13000, 580)}
RTX_INSTALL = "pip install tensorrt-rtx-cu13 (tensorrt-rtx-cu12 for a driver older than R580; `make env` picks)"


class NoBuilder(StageSkipped):
    """No TensorRT builder of the requested flavour is installed (or it cannot build here)."""
    no_builder = True


def rtx_matrix(version: str) -> tuple[str, ...]:
    """The compute capabilities TensorRT-RTX `version` documents (the newest matrix at or below it)."""
    major_minor = tuple(int(x) for x in version.split(".")[:2])
    known = [k for k in sorted(RTX_MATRIX) if k <= major_minor]
    return RTX_MATRIX[known[-1] if known else min(RTX_MATRIX)]


@dataclass(frozen=True)
class Flavour:
    """One installed TensorRT flavour and everything that differs between the two."""
    name: str      # module name: tensorrt or tensorrt_rtx
    version: str

    @property
    def label(self) -> str:
        """Product name with version."""
        return f"{'TensorRT-RTX' if self.rtx else 'TensorRT'} {self.version}"

    @property
    def rtx(self) -> bool:
        """Whether this is TensorRT-RTX."""
        return self.name == "tensorrt_rtx"

    @property
    def abi_major(self) -> int:
        """The TensorRT major whose headers a plugin for this runtime must be compiled against (RTX follows 11)."""
        return 11 if self.rtx else int(self.version.split(".")[0])

    @property
    def targets(self) -> tuple[str, ...]:
        """Compute capabilities a build can name ahead of time (full TensorRT builds for its own GPU only)."""
        if not self.rtx:
            return ()
        return tuple(n.lower() for n in self.module().ComputeCapability.__members__ if n.startswith("SM"))

    @property
    def timing_cache(self) -> bool:
        """Whether builds share a tactic timing cache (full TensorRT times tactics on the GPU; RTX does not)."""
        return not self.rtx

    def module(self):
        """The imported Python module."""
        return importlib.import_module(self.name)

    def lib_dir(self) -> Path | None:
        """The folder of the pip wheel's shared libraries (None for a system or container install)."""
        spec = importlib.util.find_spec("tensorrt_rtx_libs" if self.rtx else "tensorrt_libs")
        return Path(spec.origin).parent if spec and spec.origin else None

    def runtime_library(self) -> Path | None:
        """The wheel's core library (libtensorrt_rtx.so.1, libnvinfer.so.N), which a plugin may link against."""
        d = self.lib_dir()
        if d is None:
            return None
        found = sorted(d.glob("libtensorrt_rtx.so.*" if self.rtx else "libnvinfer.so.*"))
        return found[0] if found else None

    def wheel(self) -> tuple[str, int] | None:
        """The pip distribution of this flavour and the CUDA major it was built for (None: not a pip wheel)."""
        base = "tensorrt-rtx" if self.rtx else "tensorrt"
        for major in (13, 12, 11):
            dist = f"{base}-cu{major}"
            for candidate in (dist, dist + "-libs"):
                try:
                    importlib.metadata.version(candidate)
                    return dist, major
                except importlib.metadata.PackageNotFoundError:
                    continue
        return None

    def supports(self, capability: str) -> tuple[bool, str]:
        """Whether the documented support matrix of this version lists compute capability `capability`."""
        major, minor = (int(x) for x in capability.split("."))
        if self.rtx:
            listed = rtx_matrix(self.version)
            ok = capability in listed
            return ok, "" if ok else (f"{self.label} runs on compute capability {', '.join(listed)} (its support "
                                      f"matrix); this GPU has {capability}")
        ok = (major, minor) >= FULL_MIN_CAPABILITY
        return ok, "" if ok else f"{self.label} needs compute capability 7.5 or newer; this GPU has {capability}"

    def driver_problem(self, driver: int | None) -> str:
        """Why this machine's driver cannot run this wheel (a CUDA 13 wheel on a CUDA 12 driver), else ''."""
        wheel = self.wheel()
        if driver is None or wheel is None:
            return ""
        dist, major = wheel
        oldest, release = MIN_DRIVER.get(major, (major * 1000, None))
        if driver >= oldest:
            return ""
        needs = f"CUDA {major} needs R{release} or newer" if release else f"CUDA {major} needs a newer driver"
        if driver // 1000 >= major:  # the wheel the driver's major asks for, on too old a driver of that major
            return (f"{self.label} is installed as {dist} (CUDA {major}), and this driver supports CUDA "
                    f"{cudainfo.version_text(driver)}: update the driver ({needs}, TensorRT's prerequisites)")
        # `make env` picks either flavour's wheel by the driver (extras rtx-cuNN / trt-cuNN); full TensorRT's
        # package is named too, since its bare `tensorrt` installs the CUDA 13 variant whatever the driver
        extra = cudainfo.extra_for(driver, "rtx" if self.rtx else "trt")
        package = "" if self.rtx else f": tensorrt-cu{cudainfo.cuda_major_for(driver)}"
        fix = f"reinstall with `make env` (it installs the [{extra}] extra for this driver{package})"
        return (f"{self.label} is installed as {dist} (CUDA {major}), and this driver supports CUDA "
                f"{cudainfo.version_text(driver)}: {fix} or update the driver ({needs})")

    def runs_on(self, capability: str | None, driver: int | None = None) -> tuple[bool, str]:
        """Whether this flavour's runtime runs engines on a GPU of `capability` ('8.6') with a driver of CUDA
        version `driver` (12020), and why not: the support matrix and the wheel's CUDA major."""
        if not capability:
            return False, f"{self.label} runs engines only on an NVIDIA GPU; this machine has none visible"
        ok, why = self.supports(capability)
        if not ok:
            return False, why
        why = self.driver_problem(driver)
        return not why, why

    def runs_here(self) -> tuple[bool, str]:
        """Whether engines of this flavour run on this machine's GPU, and why not."""
        return self.runs_on(capability_here(), cudainfo.driver_version()[0])

    def resolve_target(self, target: str = "auto") -> str:
        """The concrete build target: 'auto' is this GPU where the flavour runs on it, else sm86 (RTX only)."""
        cap = capability_here()
        here = f"sm{cap.replace('.', '')}" if cap else None
        if self.rtx:
            if target == "auto":
                return here if here in self.targets and self.runs_here()[0] else DEFAULT_TARGET
            if target not in self.targets:
                raise ValueError(f"trt_target={target!r}: {self.label} builds for {', '.join(self.targets)} "
                                 "(or 'auto')")
            return target
        if here is None:
            raise NoBuilder(f"{self.label} builds engines only for the GPU of the machine it runs on, and this machine "
                            f"has none; install TensorRT-RTX ({RTX_INSTALL}) to build ahead of time")
        if target not in ("auto", here):
            raise ValueError(f"trt_target={target!r}: {self.label} builds only for this GPU ({here}); use 'auto', or "
                             "trt_flavour='tensorrt_rtx' to build ahead of time for another GPU")
        return here

    def configure(self, config, target: str) -> None:
        """Apply the flavour's own builder settings: RTX names the target compute capability."""
        if self.rtx:
            trt = self.module()
            config.num_compute_capabilities = 1
            config.set_compute_capability(getattr(trt.ComputeCapability, target.upper()), 0)


@functools.cache
def capability_here() -> str | None:
    """This machine's GPU compute capability: cuda-python's driver API, else PyTorch's view, else None."""
    return cudainfo.device_capability() or env.gpu_info().get("capability")


def check_name(trt_flavour: str | None) -> None:
    """A ValueError naming the choices for an unknown flavour name."""
    if trt_flavour not in ("auto", None, *FLAVOUR_NAMES):
        raise ValueError(f"trt_flavour={trt_flavour!r}: choose auto, {' or '.join(FLAVOUR_NAMES)}")


@functools.cache
def installed(name: str) -> tuple[Flavour | None, str]:
    """The flavour `name` if its builder imports here, else None and why not."""
    check_name(name)
    label = "TensorRT-RTX" if name == "tensorrt_rtx" else "TensorRT"
    hint = RTX_INSTALL if name == "tensorrt_rtx" else "install TensorRT 10/11 from NVIDIA"
    if importlib.util.find_spec(name) is None:
        return None, f"{label} not installed ({hint})"
    try:
        mod = importlib.import_module(name)
    except Exception as err:  # PyPI's `tensorrt` stub raises at import when the real wheel is missing
        return None, f"{label} not installed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if not hasattr(mod, "Builder"):
        return None, f"{label} {getattr(mod, '__version__', '')} has only the lean runtime, which cannot build engines"
    return Flavour(name, mod.__version__), ""


def versions() -> dict[str, str | None]:
    """The version of each flavour that really imports here (PyPI's `tensorrt` stub does not), else None."""
    return {name: (found.version if found else None) for name, (found, _) in
            ((n, installed(n)) for n in FLAVOUR_NAMES)}


def select(trt_flavour: str | None = "auto") -> Flavour:
    """The flavour to work with: 'auto' is full TensorRT where installed, else TensorRT-RTX; NoBuilder if none
    (None, what `decide` gives where no builder is usable, names every flavour's reason)."""
    check_name(trt_flavour)
    names = FLAVOUR_NAMES if trt_flavour in ("auto", None) else (trt_flavour,)
    reasons = []
    for name in names:
        found, why = installed(name)
        if found:
            return found
        reasons.append(why)
    raise NoBuilder("no TensorRT builder: " + "; ".join(reasons))


def builder_status(trt_flavour: str | None = "auto") -> tuple[bool, str]:
    """Whether a builder of this flavour is installed, and which (or why not)."""
    try:
        return True, select(trt_flavour).label
    except NoBuilder as why:
        return False, str(why)


def _candidates(trt_flavour: str, trt_target: str) -> tuple[list[tuple[Flavour, str]], list[str]]:
    """Installed flavours that can build `trt_target` here, with the concrete target; reasons for the others."""
    found, reasons, bad_target = [], [], None
    for name in FLAVOUR_NAMES if trt_flavour == "auto" else (trt_flavour,):
        fl, why = installed(name)
        if fl is None:
            reasons.append(why)
            continue
        try:
            found.append((fl, fl.resolve_target(trt_target)))
        except NoBuilder as err:
            reasons.append(str(err))
        except ValueError as err:
            bad_target = bad_target or err
    if not found and bad_target is not None:
        raise bad_target
    return found, reasons


def decide(trt_flavour: str = "auto", trt_target: str = "auto") -> dict:
    """The run's TensorRT decision, made once: the concrete flavour and target, whether its engines run here.

    Returns {"trt_flavour": "tensorrt" | "tensorrt_rtx" | None, "trt_target": "sm86"... | None, "label":
    "TensorRT-RTX 1.7.1.116" | "", "runs_here": bool, "why": why engines do not build or run here ('' when
    they run)}. 'auto' prefers a flavour whose runtime runs on this GPU (full TensorRT first), else one that
    can build here. A bad flavour name or a target no installed flavour can build raises ValueError naming
    the fix. None as trt_flavour means no builder is usable; `select(None)` then raises NoBuilder with why.
    """
    check_name(trt_flavour)
    if trt_target != "auto" and not re.fullmatch(r"sm\d{2,3}", str(trt_target)):
        raise ValueError(f"trt_target={trt_target!r}: use 'auto' or a compute capability such as 'sm86'")
    found, reasons = _candidates(trt_flavour, trt_target)
    if not found:
        return {"trt_flavour": None, "trt_target": None, "label": "", "runs_here": False,
                "why": "no TensorRT builder: " + "; ".join(reasons)}
    running = [(fl, target) for fl, target in found if fl.runs_here()[0]]
    fl, target = (running or found)[0]
    runs, why = fl.runs_here()
    here = f"sm{capability_here().replace('.', '')}" if runs else None
    if runs and fl.rtx and target != here:  # an RTX engine built for one compute capability runs on that one only
        runs, why = False, (f"engines are built for {target} and this GPU is {here} (trt_target='auto' builds for "
                            "this GPU)")
    return {"trt_flavour": fl.name, "trt_target": target, "label": fl.label, "runs_here": runs, "why": why}
