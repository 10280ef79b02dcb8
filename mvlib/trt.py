"""TensorRT engines for both flavours, one code path: build, cache, load plugins, run, inspect, tabulate.

Two flavours share the `nvinfer1` API: full TensorRT 10/11 (module `tensorrt`, from NVIDIA's index or an
SDK/container) and TensorRT-RTX (module `tensorrt_rtx`, `pip install tensorrt-rtx-cu13` from PyPI). What
differs between them is decided in one place, the `Flavour` class: which targets a build can name, which
GPUs the runtime accepts, which plugin ABI it expects, whether a timing cache applies.

Precision is decided in the ONNX file (ModelOpt AutoCast for FP16, Q/DQ nodes for INT8): every network is
strongly typed and no precision flag is ever set, which TensorRT 10, TensorRT 11 and TensorRT-RTX all take.

Building is a capability of its own: TensorRT-RTX builds ahead of time for a named compute capability on a
machine without a GPU; running needs a GPU the flavour's runtime accepts. Each build runs in a child
process (`python -m mvlib.trt build`), so a crash inside the builder (a bad plugin, a library it cannot
dlopen) fails one engine with the builder's messages instead of killing the notebook's kernel, and the
child gets the library path TensorRT-RTX's ONNX parser needs (it dlopens the unversioned
`libtensorrt_rtx.so`, which the wheel does not ship; we link it under the build folder).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd

from mvlib import env, io, paths
from mvlib.progress import progress
from mvlib.skips import StageSkipped

RECIPE = 2  # bump when the build settings below change, so older engines are not reused
PLAN = "engine.plan"
BUILD_INFO = "build.json"
LAYERS = "layers.json"
TIMING_DIR = "timing"
FLAVOUR_NAMES = ("tensorrt", "tensorrt_rtx")
DEFAULT_TARGET = "sm86"  # the seed's A10: where no GPU here runs the flavour, engines are built for it
ENGINES_TABLE = "engines.csv"
ENGINE_COLUMNS = ["notebook", "engine", "onnx", "flavour", "flavour_version", "target", "status", "messages",
                  "build_seconds", "engine_bytes", "network_layers", "layers_by_type", "plugin_layers",
                  "plugin_nodes_in_onnx", "ran", "accuracy", "timing", "path"]
BUILT = ("built", "reused")  # the statuses of an engines-table row that holds a usable engine
PLAN_MAGIC = {"tensorrt": b"ftrt", "tensorrt_rtx": b"vtrt"}  # the first bytes of a serialized plan, per flavour
_PLUGIN_TYPES = ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")


class NoBuilder(StageSkipped):
    """No TensorRT builder of the requested flavour is installed (or it cannot build here)."""
    no_builder = True


class BuildFailed(RuntimeError):
    """The builder refused a model; `messages` holds what it said, verbatim."""

    def __init__(self, what: str, messages: list[str]):
        super().__init__(what + (":\n  " + "\n  ".join(messages[-20:]) if messages else ""))
        self.messages = messages


# --- the batch profile ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """An optimization profile over the batch dimension: 1 <= min <= opt <= max, checked on creation."""
    min: int
    opt: int
    max: int

    def __post_init__(self):
        vals = (self.min, self.opt, self.max)
        if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in vals) \
                or not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile min={self.min}, opt={self.opt}, max={self.max} is invalid: use integers "
                             "with 1 <= batch_min <= batch_opt <= batch_max (e.g. 1, 16, 32)")

    def covers(self, batch: int) -> bool:
        """Whether an engine with this profile accepts `batch`."""
        return self.min <= batch <= self.max

    def check(self, batch: int) -> int:
        """`batch`, or a ValueError naming the fix when the profile does not cover it (the one rule)."""
        if not self.covers(batch):
            raise ValueError(f"batch {batch} is outside the engine's optimization profile [{self.min}, {self.max}]; "
                             f"split the batch, or rebuild the engine with batch_min <= {batch} <= batch_max")
        return batch

    def chunks(self, images: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Chunks of at most `max` images with their count of real images; a tail below `min` is padded."""
        out = []
        for i in range(0, len(images), self.max):
            chunk = images[i:i + self.max]
            n = len(chunk)
            if n < self.min:  # the profile refuses smaller batches: repeat the last image, drop its outputs later
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.min - n, axis=0)])
            out.append((chunk, n))
        return out

    def as_list(self) -> list[int]:
        """[min, opt, max]."""
        return [int(self.min), int(self.opt), int(self.max)]


# --- the two flavours -----------------------------------------------------------------------------------
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
        trt = self.module()
        return tuple(n.lower() for n in trt.ComputeCapability.__members__ if n.startswith("SM"))

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

    def runs_on(self, capability: str | None) -> tuple[bool, str]:
        """Whether this flavour's runtime runs engines on a GPU of `capability` ('8.6'), and why not."""
        if not capability:
            return False, f"{self.label} runs engines only on an NVIDIA GPU; this machine has none visible to PyTorch"
        major, minor = (int(x) for x in capability.split("."))
        if self.rtx:
            ok = (major, minor) in ((8, 0), (8, 6), (8, 9)) or major >= 12
            return ok, "" if ok else (f"{self.label} runs on compute capability 8.0, 8.6, 8.9 and 12.x (A100, A10, "
                                      f"L4 / RTX 40xx, RTX 50xx); this GPU has {capability}")
        ok = (major, minor) >= (7, 5)
        return ok, "" if ok else f"{self.label} needs compute capability 7.5 or newer; this GPU has {capability}"

    def runs_here(self) -> tuple[bool, str]:
        """Whether engines of this flavour run on this machine's GPU, and why not."""
        return self.runs_on(env.gpu_info().get("capability"))

    def resolve_target(self, target: str = "auto") -> str:
        """The concrete build target: 'auto' is this GPU where the flavour runs on it, else sm86 (RTX only)."""
        cap = env.gpu_info().get("capability")
        here = f"sm{cap.replace('.', '')}" if cap else None
        if self.rtx:
            if target == "auto":
                return here if here in self.targets and self.runs_on(cap)[0] else DEFAULT_TARGET
            if target not in self.targets:
                raise ValueError(f"trt_target={target!r}: {self.label} builds for {', '.join(self.targets)} "
                                 "(or 'auto')")
            return target
        if here is None:
            raise NoBuilder(f"{self.label} builds engines only for the GPU of the machine it runs on, and this machine "
                            "has none; install TensorRT-RTX (pip install tensorrt-rtx-cu13) to build ahead of time")
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
def installed(name: str) -> tuple[Flavour | None, str]:
    """The flavour `name` if its builder imports here, else None and why not."""
    if name not in FLAVOUR_NAMES:
        raise ValueError(f"trt_flavour={name!r}: choose auto, {' or '.join(FLAVOUR_NAMES)}")
    label = "TensorRT-RTX" if name == "tensorrt_rtx" else "TensorRT"
    hint = "pip install tensorrt-rtx-cu13" if name == "tensorrt_rtx" else "install TensorRT 10/11 from NVIDIA"
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


def select(trt_flavour: str = "auto") -> Flavour:
    """The flavour to work with: 'auto' is full TensorRT where installed, else TensorRT-RTX; NoBuilder if none."""
    names = FLAVOUR_NAMES if trt_flavour == "auto" else (trt_flavour,)
    reasons = []
    for name in names:
        found, why = installed(name)
        if found:
            return found
        reasons.append(why)
    raise NoBuilder("no TensorRT builder: " + "; ".join(reasons))


def builder_status(trt_flavour: str = "auto") -> tuple[bool, str]:
    """Whether a builder of this flavour is installed, and which (or why not)."""
    try:
        return True, select(trt_flavour).label
    except NoBuilder as why:
        return False, str(why)


# --- inputs: ONNX input and plugin libraries ---------------------------------------------------------
def onnx_input(onnx_path: Path | str) -> tuple[str, tuple[int, ...]]:
    """Name and shape (batch dimension as -1) of the model's single image input."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path} has {len(inputs)} inputs ({[i.name for i in inputs]}); the engine "
                         "profile here is for models with one image input")
    dims = inputs[0].type.tensor_type.shape.dim
    rest = [d.dim_value for d in dims[1:]]
    if not all(rest):
        raise ValueError(f"{onnx_path}: input {inputs[0].name!r} has dynamic non-batch dimensions "
                         f"{[d.dim_param or d.dim_value for d in dims]}; export with a fixed image size")
    return inputs[0].name, (-1, *rest)


def check_plugins(plugins: Sequence[Path | str] = ()) -> list[str]:
    """Absolute paths of the plugin libraries; a missing one raises an error naming how to build it."""
    found = []
    for p in plugins:
        path = Path(p).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"TensorRT plugin library {path} does not exist. Build it first: run notebooks/05_silu_plugin.ipynb "
                f"or `bash {paths.PLUGIN_SRC.name}/build.sh` (README, 'The SiLU plugin'); it writes under "
                f"{paths.PLUGIN_BUILD}.")
        found.append(str(path))
    return found


def unversioned_dir(fl: Flavour) -> Path | None:
    """A folder of ours holding `libtensorrt_rtx.so` -> the wheel's `.so.1` (RTX's parser dlopens that name)."""
    core = fl.runtime_library()
    if not fl.rtx or core is None:
        return None
    d = paths.BUILD / "trt_libs" / f"{fl.name}-{fl.version}"
    link = d / "libtensorrt_rtx.so"
    if not (link.is_symlink() and link.resolve() == core.resolve()):
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".libtensorrt_rtx.so.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(core)
        os.replace(tmp, link)
    return d


def library_env(fl: Flavour) -> dict:
    """This process's environment for a child that parses plugin models with `fl` (LD_LIBRARY_PATH completed)."""
    out = dict(os.environ)
    d = unversioned_dir(fl)
    if d is not None and str(d) not in out.get("LD_LIBRARY_PATH", "").split(":"):
        out["LD_LIBRARY_PATH"] = ":".join(p for p in (str(d), out.get("LD_LIBRARY_PATH", "")) if p)
    return out


def _can_dlopen_unversioned() -> bool:
    """Whether this process can dlopen the unversioned core library TensorRT-RTX's parser asks for."""
    try:
        ctypes.CDLL("libtensorrt_rtx.so")
        return True
    except OSError:
        return False


def headers_version(library: Path | str) -> tuple[int, int, int]:
    """The TensorRT version of the headers a plugin library was compiled against (its exported record)."""
    path = str(library)
    try:
        lib = ctypes.CDLL(path)  # the dynamic library registers nothing when loaded, so this is side-effect free
        fn = lib.mv_silu_plugin_tensorrt_version
    except (OSError, AttributeError) as err:
        raise RuntimeError(f"{path} does not say which TensorRT headers it was built against ({err}); rebuild it with "
                           "`bash silu_plugin/build.sh`") from err
    fn.restype = ctypes.c_int32
    v = fn()
    return v // 10000, v // 100 % 100, v % 100


def check_abi(library: Path | str, fl: Flavour) -> None:
    """Stop before TensorRT sees a plugin built against headers of another major than its runtime
    (a crash otherwise)."""
    major, minor, patch = headers_version(library)
    if major != fl.abi_major:
        raise RuntimeError(
            f"{Path(library).name} was compiled against TensorRT {major}.{minor}.{patch} headers, but {fl.label} "
            f"expects TensorRT {fl.abi_major}.x plugins (the plugin interfaces' virtual tables differ between majors). "
            f"Rebuild it: TRT_INCLUDE=<TensorRT {fl.abi_major}.x include/> bash silu_plugin/build.sh, "
            "or run notebook 05")


_LOADED: dict[tuple[str, str], Any] = {}


def load_plugins(fl: Flavour, plugins: Sequence[Path | str]) -> list:
    """Load plugin libraries through the registry's loadLibrary (it calls getCreators); once per process.

    This route works for every install: it needs no libnvinfer symbols visible to the plugin (pip wheels
    load TensorRT privately). A library whose headers were of another TensorRT major is refused first.
    """
    handles = []
    registry = fl.module().get_plugin_registry()
    for lib in check_plugins(plugins):
        check_abi(lib, fl)
        key = (fl.name, lib)
        if key not in _LOADED:
            handle = registry.load_library(lib)
            if handle is None:
                raise RuntimeError(f"{fl.label} refused to load the plugin library {lib} (see its log above)")
            _LOADED[key] = handle
        handles.append(_LOADED[key])
    return handles


# --- the cache key --------------------------------------------------------------------------------------
def sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_parts(onnx_path: Path | str, profile: Profile, fl: Flavour, target: str, plugins: Sequence[Path | str] = (),
              workspace_gb: float = 4) -> dict:
    """Everything an engine depends on: ONNX bytes, flavour and version, target, profile, plugins, workspace, recipe."""
    name, shape = onnx_input(onnx_path)
    return {"onnx_sha256": sha256(onnx_path), "flavour": fl.name, "flavour_version": fl.version, "target": target,
            "input": name, "shape": list(shape), "profile": profile.as_list(), "workspace_gb": float(workspace_gb),
            "plugins_sha256": [sha256(p) for p in check_plugins(plugins)], "recipe": RECIPE}


def _key(onnx_path: Path | str, parts: dict) -> str:
    """The cache folder name: readable prefix plus a hash of the key parts (a stale engine never matches)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(onnx_path).stem)
    return f"{stem}-b{'_'.join(map(str, parts['profile']))}-{parts['target']}-{parts['flavour']}-{digest}"


def timing_cache_path(fl: Flavour, target: str) -> Path:
    """The tactic timing cache of one GPU and flavour version (shared by every engine built there)."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", env.gpu_info().get("gpu") or "no-gpu").strip("-")
    return paths.ENGINES / TIMING_DIR / f"{gpu}_{target}_{fl.name}{fl.version}.cache"


# --- the engine cache -------------------------------------------------------------------------------------
@dataclass
class Engine:
    """A built (or reused) engine: its plan, build record and layer information."""
    plan: Path
    info: dict
    reused: bool = False

    @property
    def dir(self) -> Path:
        """The engine's cache folder."""
        return self.plan.parent

    @property
    def profile(self) -> Profile:
        """The optimization profile it was built with."""
        return Profile(*self.info["profile"])

    @property
    def flavour(self) -> Flavour:
        """The flavour that built it."""
        return Flavour(self.info["flavour"], self.info["flavour_version"])

    def layers(self) -> dict:
        """The saved layer information (network layers always; engine inspector output where it ran)."""
        return io.read_json(self.dir / LAYERS)


def cache_problem(engine_dir: Path | str) -> str | None:
    """Why the engine cached in `engine_dir` cannot be trusted (None when it can)."""
    d = Path(engine_dir)
    plan, meta = d / PLAN, d / BUILD_INFO
    if not plan.exists() and not meta.exists():
        return "not built yet"
    try:
        info = io.read_json(meta)
        recorded = (info["plan_sha256"], info["plan_bytes"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its build record {meta} is missing or unreadable ({type(err).__name__})"
    if not plan.is_file():
        return f"{plan} is missing"
    if plan.stat().st_size != recorded[1] or sha256(plan) != recorded[0]:
        return f"{plan} is corrupt (size or SHA-256 differs from what the builder wrote)"
    try:
        io.read_json(d / LAYERS)
    except (OSError, ValueError) as err:
        return f"its layer information {d / LAYERS} is missing or unreadable ({type(err).__name__})"
    return None


def load(engine_path: Path | str) -> Engine:
    """A cached engine by its plan path, or an error saying why it cannot be used."""
    plan = Path(engine_path)
    problem = cache_problem(plan.parent)
    if problem is not None:
        raise RuntimeError(f"engine {plan} cannot be used: {problem}; build_engine() rebuilds it")
    return Engine(plan, io.read_json(plan.parent / BUILD_INFO), reused=True)


def build_engine(onnx_path: Path | str, profile: Profile, fl: Flavour | None = None, target: str = "auto",
                 plugins: Sequence[Path | str] = (), workspace_gb: float = 4) -> Engine:
    """Build a strongly typed engine for `onnx_path`, or reuse a valid cached one;
    BuildFailed with the builder's words."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} does not exist; run the notebook that writes it first")
    if workspace_gb <= 0:
        raise ValueError(f"workspace_gb={workspace_gb}: give the builder a positive workspace, e.g. 4")
    fl = fl or select()
    target = fl.resolve_target(target)
    parts = key_parts(onnx_path, profile, fl, target, plugins, workspace_gb)
    out = paths.ENGINES / _key(onnx_path, parts)
    problem = cache_problem(out)
    if problem is None:
        print(f"reusing engine {out.name}")
        return Engine(out / PLAN, io.read_json(out / BUILD_INFO), reused=True)
    if problem != "not built yet":
        print(f"engine cache {out.name}: {problem}; rebuilding")
    return _build(onnx_path, out, parts, fl, check_plugins(plugins))


def _build(onnx_path: Path, out: Path, parts: dict, fl: Flavour, plugins: list[str]) -> Engine:
    """Build in a child process; write plan, layer information and build record atomically (record last)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / BUILD_INFO).unlink(missing_ok=True)  # from here on the old plan is not trusted
    spec = {"onnx": str(onnx_path), "flavour": fl.name, **{k: parts[k] for k in ("target", "profile", "workspace_gb")},
            "plugins": plugins, "out": str(out),
            "timing_cache": str(timing_cache_path(fl, parts["target"])) if fl.timing_cache else None}
    with io.atomic_path(out / "spec.json") as spec_path, io.atomic_path(out / "result.json") as result_path:
        spec_path.write_text(json.dumps(spec))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mvlib.trt", "build", str(spec_path), str(result_path)],
                              env=library_env(fl), capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - start
        result = json.loads(result_path.read_text()) if result_path.stat().st_size else {}
    messages = result.get("messages", [])
    if proc.returncode != 0 or not result.get("ok"):
        died = ("the builder refused it" if result else
                f"the builder process died ({_exit_text(proc.returncode)}) before it could report")
        tail = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()][-8:] if not messages else []
        raise BuildFailed(f"{fl.label} could not build {onnx_path.name} for {parts['target']}: {died}",
                          messages + tail)
    plan = out / PLAN
    io.write_json(out / BUILD_INFO, {**parts, "onnx": str(onnx_path), "plugins": spec["plugins"],
                                     "build_seconds": round(seconds, 2), "messages": messages,
                                     **{k: result[k] for k in ("layers_by_type", "network_layers", "plugin_layers",
                                                                "profiling_verbosity", "strongly_typed", "tf32",
                                                                "inspected")},
                                     "plan_bytes": plan.stat().st_size, "plan_sha256": sha256(plan)})
    print(f"built {out.name} with {fl.label} for {parts['target']} in {seconds:.1f} s"
          + (f" ({len(messages)} builder messages)" if messages else ""))
    return Engine(plan, io.read_json(out / BUILD_INFO))


# --- the child process: the builder itself -------------------------------------------------------------------
def _exit_text(code: int) -> str:
    """'exit 3' or 'signal SIGABRT' for a child's return code."""
    if code < 0:
        import signal
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def _child_build(spec: dict) -> dict:
    """Parse, configure and build one engine with the raw API (runs in `python -m mvlib.trt build`)."""
    fl, why = installed(spec["flavour"])
    if fl is None:
        return {"ok": False, "messages": [why]}
    trt = fl.module()
    messages: list[str] = []

    class Logger(trt.ILogger):
        """Keeps warnings and errors verbatim for the engines table."""

        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.WARNING:
                messages.append(f"{severity.name}: {msg}")

    logger = Logger()
    result: dict = {"ok": False, "messages": messages}
    if spec["plugins"]:
        load_plugins(fl, spec["plugins"])
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(spec["onnx"]):
        messages += [f"PARSER: {parser.get_error(i)}" for i in range(parser.num_errors)]
        return result
    types = [network.get_layer(i).type.name for i in range(network.num_layers)]
    result.update(network_layers=len(types), layers_by_type=dict(sorted(pd.Series(types).value_counts().items())),
                  plugin_layers=sum(t in _PLUGIN_TYPES for t in types))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec["workspace_gb"] * (1 << 30)))
    config.clear_flag(trt.BuilderFlag.TF32)  # the "FP32" engine computes in true FP32
    # Layer types and precisions in the inspector need DETAILED; set here (polygraphy 0.49.0-0.49.8 failed to).
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    fl.configure(config, spec["target"])
    name, shape = onnx_input(spec["onnx"])
    lo, opt, hi = spec["profile"]
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (lo, *shape[1:]), (opt, *shape[1:]), (hi, *shape[1:]))
    config.add_optimization_profile(profile)
    tc_path = Path(spec["timing_cache"]) if spec.get("timing_cache") else None
    if tc_path is not None:
        cache = config.create_timing_cache(tc_path.read_bytes() if tc_path.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        messages.append("ERROR: build_serialized_network returned no engine")
        return result
    out = Path(spec["out"])
    io.write_bytes(out / PLAN, bytes(plan))
    if tc_path is not None:
        io.write_bytes(tc_path, bytes(config.get_timing_cache().serialize()))
    result.update(ok=True, strongly_typed=True, tf32=False, profiling_verbosity=config.profiling_verbosity.name)
    layers = {"network": [{"name": network.get_layer(i).name, "type": types[i]} for i in range(len(types))]}
    runs, why_not = fl.runs_here()
    if runs:
        engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(plan))
        inspector = engine.create_engine_inspector()
        layers.update(json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)))
    result["inspected"] = runs
    layers["inspected"] = runs if runs else f"not inspected: {why_not}"
    io.write_json(out / LAYERS, layers)
    return result


def _child_main(argv: list[str]) -> int:
    """`python -m mvlib.trt build SPEC RESULT` (the build child) or `... libdir` (the folder for LD_LIBRARY_PATH)."""
    if argv[:1] == ["libdir"]:
        try:
            print(unversioned_dir(select(argv[1] if len(argv) > 1 else "auto")) or "")
        except NoBuilder:
            print("")
        return 0
    if len(argv) != 3 or argv[0] != "build":
        print("usage: python -m mvlib.trt build SPEC.json RESULT.json | python -m mvlib.trt libdir [FLAVOUR]",
              file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    try:
        result = _child_build(spec)
    except Exception as err:  # reported to the parent with the builder's messages so far
        result = {"ok": False, "messages": [f"{type(err).__name__}: {err}"]}
    result["messages"] = _counted(result.get("messages", []))
    Path(argv[2]).write_text(json.dumps(result))
    return 0 if result.get("ok") else 1


def _counted(messages: list[str]) -> list[str]:
    """Each distinct message once, in first-seen order, with '(xN)' where the builder said it N > 1 times."""
    counts: dict[str, int] = {}
    for m in messages:
        counts[m] = counts.get(m, 0) + 1
    return [m + (f" (x{n})" if n > 1 else "") for m, n in counts.items()]


# --- running (tier trt: a GPU the flavour's runtime accepts) --------------------------------------------
def runnable(engine: Engine) -> Engine:
    """`engine` if its flavour runs on this GPU; StageSkipped naming why not
    (a built engine is never reported as run)."""
    ok, why = engine.flavour.runs_here()
    if not ok:
        raise StageSkipped(f"built, not run: {why}")
    return engine


_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                 "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


def torch_dtype(trt_dtype):
    """The torch dtype of a TensorRT DataType."""
    import torch
    return getattr(torch, _TORCH_DTYPES[trt_dtype.name])


@dataclass
class Session:
    """A deserialized engine and one execution context, ready for execute_async_v3 (needs PyTorch CUDA)."""
    engine: Engine
    plugins: Sequence[Path | str] = ()
    keep: list = field(default_factory=list)

    def __post_init__(self):
        runnable(self.engine)
        fl = self.engine.flavour
        if self.plugins and fl.rtx and not _can_dlopen_unversioned():
            raise RuntimeError("TensorRT-RTX needs libtensorrt_rtx.so on the library path to run plugin engines; start "
                               "the kernel with `make lab` or `python -m mvlib.study`, or set LD_LIBRARY_PATH="
                               f"{unversioned_dir(fl)} before starting Python")
        trt = fl.module()
        load_plugins(fl, self.plugins)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.cuda_engine = self.runtime.deserialize_cuda_engine(self.engine.plan.read_bytes())
        if self.cuda_engine is None:
            raise RuntimeError(f"{fl.label} could not deserialize {self.engine.plan} (see its log above)")
        self.context = self.cuda_engine.create_execution_context()
        names = [self.cuda_engine.get_tensor_name(i) for i in range(self.cuda_engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.cuda_engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.cuda_engine.get_tensor_mode(n) != mode]
        if len(self.inputs) != 1:
            raise ValueError(f"{self.engine.plan}: expected one input tensor, the engine has {self.inputs}")

    def bind(self, x) -> dict:
        """Set the input shape and every tensor address for device tensor `x`; the output tensors."""
        import torch
        self.engine.profile.check(int(x.shape[0]))
        name = self.inputs[0]
        x = x.to(torch_dtype(self.cuda_engine.get_tensor_dtype(name))).contiguous()
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = {n: torch.empty(tuple(self.context.get_tensor_shape(n)), device=x.device,
                               dtype=torch_dtype(self.cuda_engine.get_tensor_dtype(n))) for n in self.outputs}
        for n, t in outs.items():
            self.context.set_tensor_address(n, t.data_ptr())
        self.keep = [x, *outs.values()]  # alive as long as the addresses are bound
        return outs

    def execute(self, stream_handle: int) -> None:
        """Enqueue one inference on a CUDA stream."""
        if not self.context.execute_async_v3(stream_handle):
            raise RuntimeError(f"execute_async_v3 failed for {self.engine.plan}")


def runner(engine: Engine | Path | str, name: str, plugins: Sequence[Path | str] = ()):
    """A polygraphy runner over our own Session, so polygraphy's Comparator drives either flavour."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata
    engine = engine if isinstance(engine, Engine) else load(engine)

    class EngineRunner(BaseRunner):
        def __init__(self):
            super().__init__(name=name, prefix="mvlib-trt-runner")

        def activate_impl(self):
            import torch
            self.session = Session(engine, plugins)
            self.stream = torch.cuda.Stream()

        def get_input_metadata_impl(self):
            ce, inp = self.session.cuda_engine, self.session.inputs[0]
            return TensorMetadata().add(inp, np.float32, (-1, *tuple(ce.get_tensor_shape(inp))[1:]))

        def infer_impl(self, feed_dict):
            import torch
            start = time.perf_counter()
            x = torch.from_numpy(np.ascontiguousarray(feed_dict[self.session.inputs[0]])).cuda()
            with torch.cuda.stream(self.stream):
                outs = self.session.bind(x)
                self.session.execute(self.stream.cuda_stream)
            self.stream.synchronize()
            # .cpu() makes new host arrays every call: no caller ever holds a view of a reused buffer.
            result = {n: t.float().cpu().numpy() for n, t in outs.items()}
            self.inference_time = time.perf_counter() - start
            return result

        def deactivate_impl(self):
            del self.session, self.stream

    return EngineRunner()


# --- layer information -------------------------------------------------------------------------------------
_PRECISIONS = (("FP8", "FP8"), ("BFLOAT16", "BF16"), ("BF16", "BF16"), ("FP16", "FP16"), ("HALF", "FP16"),
               ("FP32", "FP32"), ("FLOAT", "FP32"), ("INT8", "INT8"), ("INT32", "INT32"), ("INT64", "INT64"),
               ("BOOL", "BOOL"), ("UINT8", "UINT8"))


def _precision(tensor: dict) -> str:
    """Data type of one inspector tensor entry ('Format/Datatype' in TensorRT 10, 'Datatype' in 11)."""
    text = tensor.get("Format/Datatype") or " ".join(str(tensor.get(k, "")) for k in ("Datatype", "DataType", "Format"))
    upper = text.upper()
    return next((p for token, p in _PRECISIONS if token in upper), "?")


def layer_summary(engine_dir: Path | str) -> pd.DataFrame:
    """One row per engine layer from the saved inspector output: type, ONNX nodes fused into it, precisions."""
    info = io.read_json(Path(engine_dir) / LAYERS)
    if isinstance(info, dict) and info.get("inspected") is not True and "Layers" not in info:
        raise StageSkipped(f"engine layers: {info.get('inspected', 'not inspected')}")
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    rows = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise ValueError(f"{engine_dir}: the inspector gave layer names only ({layer!r}): the engine was built "
                             "without DETAILED profiling verbosity; rebuild it")
        name = str(layer.get("Name", ""))
        meta = str(layer.get("Metadata", ""))
        n_nodes = meta.count("[ONNX Layer:") or (name.count(" + ") + 1 if name else 0)
        myelin = "ForeignNode" in name or str(layer.get("LayerType", "")).lower() in ("myelin", "kgen")
        rows.append({
            "index": i, "name": name, "type": layer.get("LayerType", layer.get("ParameterType", "?")),
            "onnx_nodes": n_nodes, "fused": bool(n_nodes > 1 or myelin),
            "input_precision": "/".join(sorted({_precision(t) for t in layer.get("Inputs", [])})) or "-",
            "output_precision": "/".join(sorted({_precision(t) for t in layer.get("Outputs", [])})) or "-",
            "tactic": layer.get("TacticName", layer.get("TacticValue", "")),
        })
    return pd.DataFrame(rows, columns=["index", "name", "type", "onnx_nodes", "fused", "input_precision",
                                       "output_precision", "tactic"])


def layer_totals(layers: pd.DataFrame) -> dict:
    """How many layers, how many fused, how many ONNX nodes they cover, and layers per output precision."""
    return {"layers": len(layers), "fused_layers": int(layers["fused"].fillna(False).astype(bool).sum()),
            "onnx_nodes_covered": int(pd.to_numeric(layers["onnx_nodes"]).fillna(0).sum()),
            **{f"out_{p}": int(n) for p, n in layers["output_precision"].value_counts().items()}}


# --- building a notebook's engines, and the engines table --------------------------------------------------
@dataclass(frozen=True)
class EngineSpec:
    """One engine a notebook builds: its name in the tables, ONNX file and plugin libraries."""
    name: str
    onnx: Path
    plugins: tuple = ()


def plugin_nodes_in(onnx_path: Path | str) -> int:
    """How many nodes of the SiLU plugin's op type (silu_plugin_id.h) the file holds."""
    from mvlib import silu_rewrite
    model = onnx.load(str(onnx_path), load_external_data=False)
    return sum(n.op_type == silu_rewrite.plugin_id().name for n in model.graph.node)


def build_all(notebook: str, specs: Sequence[EngineSpec], profile: Profile, trt_flavour: str = "auto",
              trt_target: str = "auto", workspace_gb: float = 4) -> pd.DataFrame:
    """Build (or reuse) every engine of a notebook; one engines-table row each, failures with the builder's words."""
    fl = select(trt_flavour)
    target = fl.resolve_target(trt_target)
    rows = []
    print(f"{len(specs)} engines with {fl.label} for {target}")
    for spec in progress(specs, f"engines ({fl.label}, {target})", unit="engine", lines=False):
        row = {"notebook": notebook, "engine": spec.name, "onnx": Path(spec.onnx).name, "flavour": fl.name,
               "flavour_version": fl.version, "target": target, "plugin_nodes_in_onnx": plugin_nodes_in(spec.onnx)
               if Path(spec.onnx).is_file() else None, "ran": False}
        if not Path(spec.onnx).is_file():
            rows.append({**row, "status": "skipped", "messages": f"{Path(spec.onnx).name} not found"})
            continue
        try:
            eng = build_engine(spec.onnx, profile, fl, target, spec.plugins, workspace_gb)
        except BuildFailed as err:
            rows.append({**row, "status": "failed", "messages": " | ".join(err.messages) or str(err)})
            continue
        info = eng.info
        rows.append({**row, "status": "reused" if eng.reused else "built", "messages": " | ".join(info["messages"]),
                     "build_seconds": info["build_seconds"], "engine_bytes": info["plan_bytes"],
                     "network_layers": info["network_layers"],
                     "layers_by_type": " ".join(f"{k}:{v}" for k, v in info["layers_by_type"].items()),
                     "plugin_layers": info["plugin_layers"], "path": str(eng.plan)})
    table = pd.DataFrame(rows).reindex(columns=ENGINE_COLUMNS)
    runs, why = fl.runs_here()
    table["accuracy"] = table["accuracy"].astype(object)
    table["timing"] = table["timing"].astype(object)
    if not runs:
        table.loc[table["status"].isin(BUILT), ["accuracy", "timing"]] = f"skipped: {why}"
    return table


def require_built(table: pd.DataFrame) -> pd.DataFrame:
    """`table`, or an error listing every engine that failed or was skipped
    (a machine with a builder builds them all)."""
    bad = table[~table["status"].isin(BUILT)]
    if len(bad):
        lines = [f"{r.engine} ({r.onnx}): {r.status}: {str(r.messages)[:400]}" for r in bad.itertuples()]
        raise AssertionError("engine builds did not all succeed:\n  " + "\n  ".join(lines))
    return table


def plugin_layer_check(table: pd.DataFrame) -> pd.DataFrame:
    """Per engine: plugin layers in the parsed network against plugin nodes in its ONNX file;
    AssertionError if unequal."""
    check = table[table["status"].isin(BUILT)][["engine", "plugin_nodes_in_onnx", "plugin_layers"]].copy()
    check["matches"] = check["plugin_nodes_in_onnx"] == check["plugin_layers"]
    if not check["matches"].all():
        raise AssertionError(f"plugin layers differ from plugin nodes:\n{check[~check['matches']]}")
    return check


def _engines_table(run) -> pd.DataFrame:
    """The run's engines table as it stands (empty with its columns when none is written yet)."""
    path = run.table(ENGINES_TABLE)
    table = pd.read_csv(path, dtype={"notebook": str, "engine": str, "onnx": str}) if path.exists() \
        else pd.DataFrame(columns=ENGINE_COLUMNS)
    return table.astype({c: object for c in ("accuracy", "timing", "messages", "ran")})


def record(run, table: pd.DataFrame) -> pd.DataFrame:
    """Put a notebook's engine rows into the run's engines table (replacing that notebook's earlier rows)."""
    old = _engines_table(run)
    if len(table):
        old = pd.concat([old[~old["notebook"].isin(table["notebook"])], table], ignore_index=True)
    run.save_table(old.reindex(columns=ENGINE_COLUMNS), ENGINES_TABLE)
    return old


def annotate(run, column: str, values: dict[str, str], ran: bool = False) -> pd.DataFrame:
    """Set `accuracy` or `timing` of engines by name in the run's engines table (`ran`: they really ran here)."""
    if column not in ("accuracy", "timing"):
        raise ValueError(f"column {column!r}: the engines table takes results in 'accuracy' or 'timing'")
    table = _engines_table(run)
    for engine, value in values.items():
        table.loc[table["engine"] == engine, column] = value
        if ran:
            table.loc[table["engine"] == engine, "ran"] = True
    run.save_table(table.reindex(columns=ENGINE_COLUMNS), ENGINES_TABLE)
    return table


def built_rows(engines: pd.DataFrame | None, stage: str = "engines") -> pd.DataFrame:
    """The rows of an engines table that hold a usable engine; StageSkipped when there are none."""
    built = engines[engines["status"].isin(BUILT)] if engines is not None else None
    if built is None or not len(built):
        raise StageSkipped(f"no engine was built (see the {stage} stage)")
    return built


def accuracy_verdicts(table: pd.DataFrame) -> dict[str, str]:
    """Per engine, its `accuracy` entry for the engines table, from an accuracy table's `trt-<engine>` rows."""
    rows = table[table["runner"].str.startswith("trt-")]
    return {runner[4:]: ("passed" if grp["passed"].all() else "FAILED") + f" (cosine_min {grp['cosine_min'].min():.6f})"
            for runner, grp in rows.groupby("runner")}


def describe(table: pd.DataFrame) -> str:
    """What the builder did with each model, in Markdown, from the engines table (warnings quoted verbatim)."""
    lines = []
    for r in table.itertuples():
        head = f"- **{r.engine}** (`{r.onnx}`): "
        if r.status not in BUILT:
            lines.append(head + f"{r.status}: {r.messages}")
            continue
        said = [m for m in str(r.messages if isinstance(r.messages, str) else "").split(" | ") if m]
        lines.append(head + f"{r.status} with {Flavour(r.flavour, r.flavour_version).label} for {r.target}"
                     + (f" in {r.build_seconds:.1f} s" if r.status == "built" else "")
                     + f", {r.engine_bytes / 2**20:.1f} MiB, {int(r.network_layers)} network layers"
                     + (f" ({int(r.plugin_layers)} plugin layers for {int(r.plugin_nodes_in_onnx)} plugin nodes)"
                        if r.plugin_nodes_in_onnx else "")
                     + ("; the builder said:" if said else "; no builder warnings."))
        lines += [f"    - `{m}`" for m in said]
        if isinstance(r.accuracy, str) and r.accuracy.startswith("skipped"):
            lines.append(f"    - not run: {r.accuracy.removeprefix('skipped: ')}")
    return "\n".join(lines)


def has_plan_header(path: Path | str, flavour: str) -> bool:
    """Whether a file starts like a serialized plan of that flavour."""
    with open(path, "rb") as f:
        return f.read(4) == PLAN_MAGIC[flavour]


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
