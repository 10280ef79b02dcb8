"""The SiLU kernel and its TensorRT plugin: build, load, check on the GPU, benchmark, swap into a model.

The CUDA sources live in silu_plugin/ (silu_kernel.cu with a C ABI, silu_plugin.cpp the IPluginV3
plugin, build.sh); build.sh writes everything into paths.PLUGIN_BUILD. This module loads the kernel
library with ctypes and launches it on PyTorch's current CUDA stream, as a plain call in eager mode
and as the registered op `torch.ops.mvlib.silu` under torch.compile.

Imports stay light: torch, numpy, pandas at the top; polygraphy, onnx-graphsurgeon, TensorRT and the
modules that need them only inside the functions of the TensorRT tier, so this module also imports
on a GPU machine that has PyTorch and nothing else of the study's stack.
"""
import copy
import ctypes
import functools
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from mvlib import env, io, metrics, paths
from mvlib.run import StageSkipped

BUILD_SCRIPT = paths.PLUGIN_SRC / "build.sh"
KERNEL_LIB = "libmv_silu.so"
PLUGIN_LIB = "libmv_silu_plugin.so"                  # static registration: ctypes, polygraphy --plugins, trtexec --staticPlugins
PLUGIN_LIB_DYNAMIC = "libmv_silu_plugin_dynamic.so"  # entry points only: IPluginRegistry::loadLibrary, trtexec --dynamicPlugins
PLUGIN_CHECK = "mv_silu_plugin_check"
BUILD_INFO = "build_info.json"

KERNEL_SYMBOLS = ("mv_silu", "mv_silu_ex", "mv_silu_default_config", "mv_copy_ex")
PLUGIN_ENTRY_POINTS = ("getCreators", "getPluginCreators", "setLoggerFinder", "mv_silu_plugin_tensorrt_version")
DTYPE_CODES = {"float32": 0, "float16": 1}  # MV_SILU_FLOAT32 / MV_SILU_FLOAT16 (silu_kernel.h)
TOLERANCE = {"float32": 1e-6, "float16": 1e-3}  # relative error against torch.nn.functional.silu
CHECK_SIZES = (1, 7, 1023, 2**20 + 3, 2**26)
# (x offset, y offset) in elements from a 256-byte aligned allocation; "inplace" writes over x.
CHECK_LAYOUTS = ((0, 0), (1, 1), (1, 0), "inplace")
GUARD = 256  # poisoned elements before and after the output that must stay untouched
BANDWIDTH_SIZES = tuple(2**k for k in range(16, 29, 2))
IMPLS = {"mv_silu": "ours (mv_silu)", "torch_silu": "torch.nn.functional.silu",
         "copy": "device copy (cudaMemcpyAsync)", "mv_copy": "ours, no arithmetic (mv_copy_ex)"}
GOAL_FRACTION = 0.95  # of the copy's bandwidth, at GOAL_MIN_ELEMENTS and above
GOAL_MIN_ELEMENTS = 2**24
PRECISIONS = ("fp32", "fp16", "int8")  # the plugin graphs: export.Exported.onnx_of / plugin_onnx name their files


# --- build --------------------------------------------------------------------------------------------
def build_dir(build_root: Path | str | None = None) -> Path:
    """Where build.sh writes: <build_root>/silu_plugin (default paths.PLUGIN_BUILD)."""
    return Path(build_root).resolve() / "silu_plugin" if build_root else paths.PLUGIN_BUILD


def build_env(trt_flavour: str = "auto") -> dict[str, str]:
    """What build.sh needs to compile a plugin this interpreter's TensorRT flavour loads: PYTHON, TRT_MAJOR, TRT_LIB.

    Set these in os.environ before a `%%bash` cell runs build.sh (notebook 05 does): the kernel's own
    interpreter is not the `python3` first on PATH when the environment is not activated.
    """
    from mvlib import trt
    out = {"PYTHON": sys.executable}
    try:
        fl = trt.select(trt_flavour)
    except trt.NoBuilder:
        return out  # no TensorRT here: build.sh still builds the kernel, and the plugin where it finds headers
    out["TRT_MAJOR"] = str(fl.abi_major)
    lib = fl.runtime_library()
    if lib is not None and "TRT_LIB" not in os.environ:
        out["TRT_LIB"] = str(lib)
    return out


def build(trt_include: str | None = None, build_root: Path | str | None = None, nvcc: str | None = None,
          trt_flavour: str = "auto", match_runtime: bool = True) -> dict:
    """Run silu_plugin/build.sh (kernel library, plus the plugin when TensorRT headers are found); its build_info.

    `match_runtime` makes build.sh refuse headers of another major than the installed runtime's; tests
    turn it off to compile against every release.
    """
    run_env = {**os.environ, **build_env(trt_flavour)}
    if not match_runtime:
        run_env.pop("TRT_MAJOR", None)
    for key, value in (("TRT_INCLUDE", trt_include), ("MVLIB_BUILD", build_root), ("NVCC", nvcc)):
        if value is not None:
            run_env[key] = str(value)
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], env=run_env, capture_output=True, text=True, timeout=600)
    print(proc.stdout.strip())
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed (exit {proc.returncode}):\n{proc.stderr.strip()[-3000:]}")
    return build_info(build_root)


def build_info(build_root: Path | str | None = None) -> dict:
    """What the last build made (build_info.json), or an error naming how to build."""
    path = build_dir(build_root) / BUILD_INFO
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the SiLU kernel is not built. Run `bash silu_plugin/build.sh` "
                                "(needs nvcc; set TRT_INCLUDE to also build the TensorRT plugin) or mvlib.plugin.build()")
    return io.read_json(path)


def exported_symbols(library: Path | str) -> set[str]:
    """Names of the functions and data a shared library exports (nm -D --defined-only)."""
    if shutil.which("nm") is None:
        raise RuntimeError("nm (binutils) is not installed: it lists a library's exported symbols")
    out = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in out.stdout.splitlines() if len(line.split()) >= 3}


def undefined_symbols(library: Path | str) -> set[str]:
    """Names a shared library needs from elsewhere (nm -D --undefined-only), without version suffixes."""
    out = subprocess.run(["nm", "-D", "--undefined-only", str(library)], capture_output=True, text=True, check=True)
    return {line.split()[-1].split("@")[0] for line in out.stdout.splitlines() if line.strip()}


def check_build(build_root: Path | str | None = None) -> pd.DataFrame:
    """One row per built library: the symbols it must export, which are missing, and what else it exports."""
    if env.nvcc_path() is None:
        raise StageSkipped("nvcc not found: the SiLU kernel library cannot be compiled on this machine")
    info = build_info(build_root)
    out = build_dir(build_root)
    wanted = {KERNEL_LIB: KERNEL_SYMBOLS}
    if info.get("plugin"):
        wanted[PLUGIN_LIB] = KERNEL_SYMBOLS + PLUGIN_ENTRY_POINTS
        wanted[PLUGIN_LIB_DYNAMIC] = KERNEL_SYMBOLS + PLUGIN_ENTRY_POINTS
    rows = []
    for name, symbols in wanted.items():
        lib = out / name
        found = exported_symbols(lib) if lib.is_file() else set()
        rows.append({"library": name, "exists": lib.is_file(), "bytes": lib.stat().st_size if lib.is_file() else 0,
                     "required": " ".join(symbols), "missing": " ".join(s for s in symbols if s not in found),
                     "also_exported": " ".join(sorted(found - set(symbols) - {"_init", "_fini"})),
                     "tensorrt_headers": info.get("tensorrt_headers_version"), "nvcc": info.get("nvcc")})
    table = pd.DataFrame(rows)
    table["ok"] = table["exists"] & (table["missing"] == "")
    print(f"plugin built: {bool(info.get('plugin'))}" + (f" ({info['note']})" if info.get("note") else ""))
    return table


def plugin_interface_check(build_root: Path | str | None = None) -> pd.DataFrame:
    """Run mv_silu_plugin_check (the plugin driven through TensorRT's interfaces); one row per check."""
    info = require_plugin(build_root)
    exe = build_dir(build_root) / PLUGIN_CHECK
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    rows = [{"status": line[:4].strip(), "check": line[5:]} for line in proc.stdout.splitlines()
            if line[:4] in ("ok  ", "FAIL")]
    rows += [{"status": "skip", "check": line[5:]} for line in proc.stdout.splitlines() if line.startswith("skip")]
    table = pd.DataFrame(rows, columns=["status", "check"])
    table["tensorrt_headers"] = info.get("tensorrt_headers_version")
    if proc.returncode != 0:
        failed = table[table["status"] == "FAIL"]["check"].tolist()
        raise AssertionError(f"{exe.name} failed (exit {proc.returncode}): {failed or proc.stderr[-2000:]}")
    return table


# --- loading -------------------------------------------------------------------------------------------
def library_path(name: str = KERNEL_LIB, build_root: Path | str | None = None) -> Path:
    """Path of a built library, or an error naming how to build it."""
    path = build_dir(build_root) / name
    if not path.is_file():
        fix = ("set TRT_INCLUDE to TensorRT's include/ folder and run `bash silu_plugin/build.sh`"
               if name != KERNEL_LIB else "run `bash silu_plugin/build.sh` (needs nvcc) or mvlib.plugin.build()")
        raise FileNotFoundError(f"{path} not found: {fix}")
    return path


def plugin_library(build_root: Path | str | None = None) -> Path:
    """The plugin library the study hands to TensorRT: the registry's load_library calls its getCreators.

    That route needs no TensorRT symbols visible to the library, so it works with pip wheels (which load
    TensorRT privately), SDK installs and TensorRT-RTX alike. The statically registering copy
    (PLUGIN_LIB) is for trtexec --staticPlugins and ctypes users.
    """
    return library_path(PLUGIN_LIB_DYNAMIC, build_root)


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


def check_abi(library: Path | str, fl) -> None:
    """Stop before TensorRT sees a plugin built against headers of another major than its runtime (a crash otherwise)."""
    major, minor, patch = headers_version(library)
    if major != fl.abi_major:
        raise RuntimeError(
            f"{Path(library).name} was compiled against TensorRT {major}.{minor}.{patch} headers, but {fl.label} "
            f"expects TensorRT {fl.abi_major}.x plugins (the plugin interfaces' virtual tables differ between majors). "
            f"Rebuild it: TRT_INCLUDE=<TensorRT {fl.abi_major}.x include/> bash silu_plugin/build.sh, or run notebook 05")


@functools.lru_cache(maxsize=None)
def kernel_library(path: str | None = None) -> ctypes.CDLL:
    """The kernel library through ctypes, with the C ABI's argument types declared."""
    path = str(path or library_path())
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: run `bash silu_plugin/build.sh` (needs nvcc) or mvlib.plugin.build()")
    try:
        lib = ctypes.CDLL(path)
    except OSError as err:
        raise RuntimeError(f"cannot load {path}: {err}. Rebuild it on this machine with `bash silu_plugin/build.sh`") from err
    args = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    lib.mv_silu.argtypes = args
    lib.mv_silu_ex.argtypes = args + [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.mv_copy_ex.argtypes = args + [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.mv_silu_default_config.argtypes = [ctypes.c_int] + [ctypes.POINTER(ctypes.c_int)] * 3
    for fn in (lib.mv_silu, lib.mv_silu_ex, lib.mv_copy_ex, lib.mv_silu_default_config):
        fn.restype = ctypes.c_int
    return lib


def default_config(dtype: str) -> tuple[int, int, int]:
    """(threads per block, most blocks per SM, vectors per thread and step) mv_silu launches with."""
    threads, blocks, unroll = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    _check(kernel_library().mv_silu_default_config(DTYPE_CODES[dtype], ctypes.byref(threads), ctypes.byref(blocks),
                                                   ctypes.byref(unroll)), "mv_silu_default_config")
    return threads.value, blocks.value, unroll.value


class KernelError(RuntimeError):
    """The kernel library returned a CUDA error code (`status`)."""

    def __init__(self, what: str, status: int):
        super().__init__(f"{what} failed with CUDA error {status} (cudaError_t; 1 = invalid value, e.g. an unsupported "
                         "dtype or a pointer not aligned to its element size; 9 = a launch configuration that does not "
                         "fit on a multiprocessor)")
        self.status = status


def _check(status: int, what: str) -> None:
    """Raise KernelError on a non-zero cudaError_t from the library."""
    if status != 0:
        raise KernelError(what, status)


# --- the kernel as a PyTorch op -----------------------------------------------------------------------
_TORCH_CODES = {torch.float32: DTYPE_CODES["float32"], torch.float16: DTYPE_CODES["float16"]}


def _code(t: torch.Tensor) -> int:
    """The kernel's dtype code of a tensor, or a TypeError naming what is supported."""
    code = _TORCH_CODES.get(t.dtype)
    if code is None:
        raise TypeError(f"the SiLU kernel takes float32 and float16 tensors, not {t.dtype}; cast first")
    return code


def _raw_stream(device_index: int) -> int:
    """The current CUDA stream of a device as an integer handle (the cheap call inductor's generated code uses)."""
    get = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return get(device_index) if get is not None else torch.cuda.current_stream(device_index).cuda_stream


def _dense(x: torch.Tensor) -> bool:
    """Whether x's elements fill one block of memory (contiguous or channels_last): elementwise can run on it."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def silu(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """y = silu(x) by our kernel on the current CUDA stream (a plain call: no dispatcher, no autograd)."""
    if not x.is_cuda:
        raise ValueError(f"the SiLU kernel runs on CUDA tensors; this one is on {x.device} "
                         "(use torch.nn.functional.silu on the CPU)")
    code = _code(x)
    if not _dense(x):
        x = x.contiguous()
    if out is None:
        out = torch.empty_like(x)  # same strides as a dense x: element i of y matches element i of x
    elif out.shape != x.shape or out.dtype != x.dtype or out.stride() != x.stride() or out.device != x.device:
        raise ValueError("out must match x in shape, dtype, strides and device")
    index = x.device.index
    if index == torch.cuda.current_device():  # the usual case; the kernel launches on the current device
        status = kernel_library().mv_silu(x.data_ptr(), out.data_ptr(), x.numel(), code, _raw_stream(index))
    else:
        with torch.cuda.device(index):
            status = kernel_library().mv_silu(x.data_ptr(), out.data_ptr(), x.numel(), code, _raw_stream(index))
    _check(status, "mv_silu")
    return out


@functools.lru_cache(maxsize=None)
def op():
    """The kernel registered as torch.ops.mvlib.silu (once per process), traceable by torch.compile."""
    @torch.library.custom_op("mvlib::silu", mutates_args=())
    def mvlib_silu(x: torch.Tensor) -> torch.Tensor:
        return silu(x)

    @mvlib_silu.register_fake
    def _(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    return mvlib_silu


class MvSiLU(torch.nn.Module):
    """nn.SiLU's stand-in that runs our kernel: eager calls go straight to it, compiled graphs call the op."""

    def __init__(self, dispatch: str = "direct"):
        super().__init__()
        if dispatch not in ("direct", "op"):
            raise ValueError(f"dispatch {dispatch!r}: use 'direct' (ctypes call in eager) or 'op' (torch.ops always)")
        self.dispatch = dispatch
        op()  # registered before any tracing starts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dispatch == "op" or torch.compiler.is_compiling():
            return torch.ops.mvlib.silu(x)
        return silu(x)

    def extra_repr(self) -> str:
        return f"dispatch={self.dispatch}"


def swap_silu(model: torch.nn.Module, dispatch: str = "direct") -> int:
    """Replace every nn.SiLU in `model` (in place) by MvSiLU; the number replaced."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.SiLU:
                setattr(parent, name, MvSiLU(dispatch))
                count += 1
    return count


# --- correctness on the GPU ------------------------------------------------------------------------------
def _gpu() -> None:
    """StageSkipped unless PyTorch sees a CUDA GPU."""
    ok, why = env.cuda_status()
    if not ok:
        raise StageSkipped(why)


def _specials(dtype: torch.dtype) -> torch.Tensor:
    """Edge values: zeros, infinity, overflow of exp in both directions, tiny and large magnitudes."""
    vals = [0.0, -0.0, float("inf"), 1e4, -1e4, 88.0, -88.0, -90.0, -100.0, 20.0, -20.0, 1e-6, -1e-6, -17.0, 11.0]
    return torch.tensor(vals, dtype=dtype)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """|out - ref| / max(|ref|, smallest normal of the dtype), 0 where both are equal (infinities too), in float64."""
    tiny = torch.finfo(ref.dtype).tiny
    o, r = out.double(), ref.double()
    err = (o - r).abs() / r.abs().clamp_min(tiny)
    return torch.where((o == r) | (o.isnan() & r.isnan()), torch.zeros_like(err), err)


def _run(x: torch.Tensor, y: torch.Tensor, config: tuple[int, int, int] | None) -> None:
    """y = silu(x) with mv_silu (config None) or with mv_silu_ex at (threads, blocks per SM, unroll)."""
    if config is None:
        silu(x, out=y)
        return
    _check(kernel_library().mv_silu_ex(x.data_ptr(), y.data_ptr(), x.numel(), _code(x), _raw_stream(x.device.index),
                                       *config), "mv_silu_ex")


def check_case(n: int, dtype: str, layout=(0, 0), seed: int = 0, config: tuple[int, int, int] | None = None) -> dict:
    """One kernel run against torch.nn.functional.silu: poisoned output fully written, guards intact, error."""
    _gpu()
    tdt = getattr(torch, dtype)
    gen = torch.Generator(device="cuda").manual_seed(seed * 7919 + n)
    inplace = layout == "inplace"
    x_off, y_off = (0, 0) if inplace else layout
    xbuf = (torch.randn(n + x_off + GUARD, device="cuda", generator=gen) * 4).to(tdt)
    x = xbuf[x_off:x_off + n]
    if n >= 64:
        x[:15] = _specials(tdt).cuda()
    ref = torch.nn.functional.silu(x)
    ref64 = torch.nn.functional.silu(x.double())
    if inplace:
        y, ybuf = x, None
        _run(x, x, config)
    else:
        ybuf = torch.full((n + y_off + GUARD,), float("nan"), dtype=tdt, device="cuda")  # poison
        y = ybuf[y_off:y_off + n]
        _run(x, y, config)
    torch.cuda.synchronize()
    written = not bool(y.isnan().any())
    guard = True if ybuf is None else bool(ybuf[:y_off].isnan().all() and ybuf[y_off + n:].isnan().all())
    err = float(relative_error(y, ref).max())
    finite = torch.isfinite(ref64) & (ref64.abs() > torch.finfo(tdt).tiny)
    finite[:15 if n >= 64 else 0] = False  # exp over/underflow edges: compared with torch, not with float64
    err64 = float(relative_error(y[finite], ref64[finite].to(tdt)).max()) if bool(finite.any()) else 0.0
    vector = inplace or (x.data_ptr() % 16 == y.data_ptr() % 16)
    return {"dtype": dtype, "n": n, "layout": "inplace" if inplace else f"x+{x_off} y+{y_off}",
            "config": "default" if config is None else "/".join(map(str, config)),
            "path": "16-byte vectors + scalar edges" if vector else "scalar (x, y misaligned to each other)",
            "all_written": written, "guards_intact": guard, "max_rel_err_vs_torch": err, "tolerance": TOLERANCE[dtype],
            "max_rel_err_vs_fp64_rounded": err64,
            "passed": written and guard and err <= TOLERANCE[dtype]}


def check_kernel(sizes: Iterable[int] = CHECK_SIZES, dtypes: Iterable[str] = ("float32", "float16"),
                 layouts: Iterable = CHECK_LAYOUTS, seed: int = 0) -> pd.DataFrame:
    """check_case over every size, dtype and layout; one row each."""
    _gpu()
    rows = [check_case(n, d, layout, seed) for d in dtypes for n in sizes for layout in layouts]
    torch.cuda.empty_cache()
    return pd.DataFrame(rows)


def check_configs(threads: Sequence[int] = (128, 256, 512, 1024), unroll: Sequence[int] = (1, 2, 4, 8),
                  blocks_per_sm: Sequence[int] = (-1, 1, 32), sizes: Iterable[int] = (7, 1023, 2**20 + 3),
                  layouts: Iterable = ((0, 0), (1, 1), (1, 0)), dtypes: Iterable[str] = ("float32", "float16"),
                  seed: int = 0) -> pd.DataFrame:
    """check_case for every launch configuration mv_silu_ex accepts (those that do not fit an SM are listed as such)."""
    _gpu()
    rows = []
    for d in dtypes:
        for th in threads:
            for b in blocks_per_sm:
                for u in unroll:
                    for n in sizes:
                        for layout in layouts:
                            try:
                                rows.append(check_case(n, d, layout, seed, config=(th, b, u)))
                            except KernelError as err:
                                rows.append({"dtype": d, "n": n, "config": f"{th}/{b}/{u}", "passed": None,
                                             "launch_error": err.status})
    return pd.DataFrame(rows)


# --- bandwidth -------------------------------------------------------------------------------------------
def _l2_bytes() -> int:
    """The GPU's L2 size (50 MB on an H200), so timed buffers can be rotated out of it."""
    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 * 2**20))


def _launchers(dtype: str, threads: int = 0, blocks_per_sm: int = 0, unroll: int = 0) -> dict[str, Callable]:
    """impl name -> launch(x, y) on the current stream, for every implementation compared."""
    lib, code = kernel_library(), DTYPE_CODES[dtype]

    def ours(fn):
        def launch(x, y):
            _check(fn(x.data_ptr(), y.data_ptr(), x.numel(), code, torch.cuda.current_stream().cuda_stream,
                      threads, blocks_per_sm, unroll), fn.__name__)
        return launch
    return {"mv_silu": ours(lib.mv_silu_ex), "torch_silu": lambda x, y: torch.ops.aten.silu.out(x, out=y),
            "copy": lambda x, y: y.copy_(x), "mv_copy": ours(lib.mv_copy_ex)}


def time_launch(launch: Callable, n: int, dtype: str, samples: int = 30, min_graph_ms: float = 2.0) -> np.ndarray:
    """Per-launch times (ms) of launch(x, y) over n elements: CUDA-graph replays timed with events.

    Buffer pairs rotate so the bytes of a launch were last touched at least 4 L2 sizes earlier (no
    launch is served from L2); one graph holds enough launches to last >= min_graph_ms, so launch
    gaps are those of a graph, not of Python.
    """
    tdt = getattr(torch, dtype)
    pair_bytes = 2 * n * tdt.itemsize
    sets = max(2, min(1024, math.ceil(4 * _l2_bytes() / pair_bytes)))
    xs = [torch.randn(n, device="cuda").to(tdt) for _ in range(sets)]
    ys = [torch.empty(n, device="cuda", dtype=tdt) for _ in range(sets)]
    est_ms = pair_bytes / 3e9 + 0.003  # ~3 TB/s plus a launch, to size the graph
    count = max(sets, math.ceil(min_graph_ms / est_ms))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for i in range(min(count, 2 * sets)):  # warm-up: module load, caches of the launch path
            launch(xs[i % sets], ys[i % sets])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for i in range(count):
            launch(xs[i % sets], ys[i % sets])
    graph.replay()
    torch.cuda.synchronize()
    times = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    current = torch.cuda.current_stream()  # replay() launches the graph on the current stream
    for _ in range(samples):
        start.record(current)
        graph.replay()
        end.record(current)
        end.synchronize()
        times.append(start.elapsed_time(end) / count)
    del graph, xs, ys
    torch.cuda.empty_cache()
    return np.asarray(times)


def bandwidth(sizes: Iterable[int] = BANDWIDTH_SIZES, dtypes: Iterable[str] = ("float32", "float16"),
              impls: Iterable[str] = tuple(IMPLS), samples: int = 30) -> pd.DataFrame:
    """GB/s (bytes read + written) of each implementation by size and dtype: median over graph replays."""
    _gpu()
    impls = tuple(impls)
    rows = []
    for dtype in dtypes:
        launchers = _launchers(dtype)
        for n in sizes:
            for impl in impls:
                t = time_launch(launchers[impl], n, dtype, samples)
                nbytes = 2 * n * getattr(torch, dtype).itemsize
                rows.append({"impl": impl, "label": IMPLS[impl], "dtype": dtype, "n": n, "bytes": nbytes,
                             "median_us": float(np.median(t) * 1e3), "p10_us": float(np.percentile(t, 10) * 1e3),
                             "p90_us": float(np.percentile(t, 90) * 1e3),
                             "gbps": nbytes / (np.median(t) * 1e-3) / 1e9, "samples": len(t)})
            print(f"{dtype} n=2^{int(math.log2(n))}: " + ", ".join(
                f"{r['impl']} {r['gbps']:.0f}" for r in rows[-len(impls):]) + " GB/s")
    table = pd.DataFrame(rows)
    copy_gbps = table[table["impl"] == "copy"].set_index(["dtype", "n"])["gbps"]
    table["fraction_of_copy"] = [r.gbps / copy_gbps.get((r.dtype, r.n), np.nan) for r in table.itertuples()]
    table["gpu"] = torch.cuda.get_device_name(0)
    return table


def bandwidth_goal(table: pd.DataFrame, fraction: float = GOAL_FRACTION, min_n: int = GOAL_MIN_ELEMENTS) -> pd.DataFrame:
    """Per dtype: our kernel's worst fraction of the copy's bandwidth at >= min_n elements, and whether it meets the goal."""
    ours = table[(table["impl"] == "mv_silu") & (table["n"] >= min_n)]
    torch_rows = table[(table["impl"] == "torch_silu") & (table["n"] >= min_n)]
    rows = []
    for dtype, grp in ours.groupby("dtype"):
        worst = grp.loc[grp["fraction_of_copy"].idxmin()]
        rows.append({"dtype": dtype, "sizes": f">= 2^{int(math.log2(min_n))}", "worst_fraction_of_copy": worst.fraction_of_copy,
                     "at_n": int(worst.n), "torch_worst_fraction_of_copy": torch_rows[torch_rows["dtype"] == dtype]["fraction_of_copy"].min(),
                     "goal": fraction, "met": bool(grp["fraction_of_copy"].min() >= fraction)})
    return pd.DataFrame(rows)


def tune(n: int = 2**26, dtypes: Iterable[str] = ("float32", "float16"), threads: Sequence[int] = (128, 256, 512, 1024),
         blocks_per_sm: Sequence[int] = (-1, 2, 4, 8, 16, 32), unroll: Sequence[int] = (1, 2, 4, 8),
         samples: int = 20) -> pd.DataFrame:
    """GB/s of mv_silu_ex over launch configurations (blocks_per_sm -1 = as many as are resident at once)."""
    _gpu()
    rows = []
    for dtype in dtypes:
        nbytes = 2 * n * getattr(torch, dtype).itemsize
        copy_t = np.median(time_launch(_launchers(dtype)["copy"], n, dtype, samples))
        for th in threads:
            for b in blocks_per_sm:
                for u in unroll:
                    row = {"dtype": dtype, "n": n, "threads": th, "blocks_per_sm": b, "unroll": u}
                    try:
                        t = np.median(time_launch(_launchers(dtype, th, b, u)["mv_silu"], n, dtype, samples))
                    except KernelError as err:  # e.g. 1024 threads x unroll 8: more registers than an SM has
                        rows.append({**row, "gbps": np.nan, "fraction_of_copy": np.nan, "launch_error": err.status})
                        torch.cuda.synchronize()
                        continue
                    rows.append({**row, "gbps": nbytes / (t * 1e-3) / 1e9, "fraction_of_copy": copy_t / t})
    return pd.DataFrame(rows)


def bandwidth_figure(csv: Path | str):
    """Bandwidth against size, one panel per dtype, one line per implementation (from the saved table)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    table = pd.read_csv(csv)
    dtypes = list(dict.fromkeys(table["dtype"]))
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.2), sharey=True, squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        sub = table[table["dtype"] == dtype]
        for impl, style in (("copy", "k--"), ("mv_copy", "k:"), ("torch_silu", "C1-s"), ("mv_silu", "C0-o")):
            rows = sub[sub["impl"] == impl].sort_values("n")
            if len(rows):
                ax.plot(rows["n"], rows["gbps"], style, label=IMPLS[impl], markersize=4)
        ax.set_xscale("log", base=2)
        ax.axvline(GOAL_MIN_ELEMENTS, color="0.8", lw=0.8)
        ax.set_title(f"SiLU, {dtype}")
        ax.set_xlabel("elements")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("GB/s (bytes read + written)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Elementwise bandwidth on {table['gpu'].iloc[0]}: median of CUDA-graph replays", fontsize=10)
    return fig


# --- the kernel inside the model ------------------------------------------------------------------------
def swap_accuracy(model: torch.nn.Module, img_size: int, dtypes: Iterable[str] = ("float32", "float16"),
                  batch: int = 8, seed: int = 0) -> pd.DataFrame:
    """Logits of the model with our kernel in place of nn.SiLU against the original, same dtype, same inputs."""
    _gpu()
    x = torch.from_numpy(metrics.random_images(batch, img_size, seed=seed)).cuda()
    rows = []
    ref32 = None
    for dtype in dtypes:
        tdt = getattr(torch, dtype)
        original = copy.deepcopy(model).to("cuda", tdt).eval()
        swapped = copy.deepcopy(original)
        replaced = swap_silu(swapped)
        with torch.inference_mode():
            a = original(x.to(tdt)).float().cpu().numpy()
            b = swapped(x.to(tdt)).float().cpu().numpy()
        if dtype == "float32":
            ref32 = a
        rows.append({"dtype": dtype, "reference": f"original model, {dtype}", "silu_modules_replaced": replaced,
                     **metrics.compare(a, b)})
        if dtype != "float32" and ref32 is not None:
            rows.append({"dtype": dtype, "reference": "original model, float32", "silu_modules_replaced": replaced,
                         **metrics.compare(ref32, b)})
    return pd.DataFrame(rows)


def swap_throughput(model: torch.nn.Module, batches: Iterable[int], settings, dtypes: Iterable[str] = ("float16",),
                    modes: Iterable[str] = ("eager", "compile")) -> pd.DataFrame:
    """img/s of the original model and of the swapped one (direct call, and through torch.ops in eager), per mode."""
    _gpu()
    from mvlib import bench
    precision = {"float32": "fp32", "float16": "fp16"}
    variants = {"original (nn.SiLU)": None, "ours (MvSiLU)": "direct", "ours via torch.ops (MvSiLU)": "op"}
    frames = []
    for dtype in dtypes:
        for mode in modes:
            for label, dispatch in variants.items():
                if mode == "compile" and dispatch == "op":
                    continue  # compiled graphs always call the op: same as "direct"
                net = copy.deepcopy(model)
                if dispatch:
                    swap_silu(net, dispatch)
                frame = bench.measure_all(bench.pytorch_cuda, batches, settings, net, precision=precision[dtype],
                                          compile_mode="default" if mode == "compile" else None)
                frame.insert(0, "model", label)
                frame.insert(1, "mode", mode)
                frame.insert(2, "dtype", dtype)
                frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    base = table[table["model"] == "original (nn.SiLU)"].set_index(["dtype", "mode", "batch"])["throughput_ips"]
    table["vs_original"] = [r.throughput_ips / base.get((r.dtype, r.mode, r.batch), np.nan) for r in table.itertuples()]
    return table


# --- the TensorRT tier ----------------------------------------------------------------------------------
def rewrite_all(exported, img_size: int, seed: int = 0, batch: int = 1) -> pd.DataFrame:
    """Rewrite the FP32, FP16 and INT8 ONNX files into plugin graphs and prove each on the CPU against its source."""
    import onnx
    import onnx_graphsurgeon as gs

    from mvlib import precision, silu
    rows = []
    for prec in PRECISIONS:
        src, dst = exported.model(prec), exported.model(prec, plugin=True)
        row = {"precision": prec, "source": src.name, "rewritten": dst.name}
        if prec == "fp16" and not src.exists():
            precision.ensure_fp16(exported.onnx, seed=seed)  # notebook 03's conversion, reused when cached
        if not src.exists():
            rows.append({**row, "status": f"skipped: {src.name} not found (notebook 04 writes it)"})
            continue
        try:
            report = silu.rewrite(src, dst)
        except silu.NoSiluPairs as why:
            rows.append({**row, "status": f"skipped: {why}"})
            continue
        table, passed = silu.verify_cpu(src, dst, img_size, batches=(batch,), seed=seed)
        rows.append({**row, "status": "ok" if passed else "FAILED", "plugin_nodes": report.plugin_nodes,
                     "pairs_left": len(silu.find_pairs(gs.import_onnx(onnx.load(str(dst))))),
                     "cpu_max_abs_vs_source": float(table["max_abs"].max()),
                     **{f"cpu_{k}": float(table[k].iloc[0]) for k in ("atol", "rtol") if k in table}})
    table = pd.DataFrame(rows)
    failed = table[table["status"] == "FAILED"]
    if len(failed):
        raise AssertionError(f"rewritten graphs differ from their sources on the CPU: {failed['precision'].tolist()}")
    return table


def onnxrt_reference(exported, model=None, batches: Sequence[int] = (1, 3), seed: int | None = None) -> Path:
    """Run ONNX Runtime on the ORIGINAL model over the saved reference inputs; save its outputs (polygraphy format).

    Without notebook 01's reference inputs, `model` makes them the way notebook 01 does (export.verify).
    """
    from mvlib import accuracy, export
    if not exported.artifact("reference_inputs").exists():
        if model is None:
            raise FileNotFoundError(f"{exported.artifact('reference_inputs')} not found: run notebook 01, or pass the "
                                    "PyTorch model so export.verify can make it")
        export.verify(exported, model, batches=batches, seed=seed)
    inputs, _ = export.load_reference(exported)
    results = accuracy.run([accuracy.onnxrt_runner(exported.onnx, "onnxrt-original")], inputs)
    path = exported.artifact("ort_reference")
    with io.atomic_path(path) as tmp:
        results.save(str(tmp))
    print(f"saved {path.name}: ONNX Runtime on {exported.onnx.name}, {len(inputs)} reference batches")
    return path


class NoCompiler(StageSkipped):
    """nvcc is missing: no plugin can be compiled here (excused like a missing TensorRT builder)."""
    no_builder = True


def require_plugin(build_root: Path | str | None = None) -> dict:
    """The build record of a built plugin, or a skip that says what is missing and how to get it."""
    from mvlib import trt
    if env.nvcc_path() is None:
        raise NoCompiler("nvcc not found: the SiLU plugin cannot be compiled on this machine (install the CUDA toolkit)")
    info = build_info(build_root)
    if info.get("plugin"):
        return info
    has_builder, why = trt.builder_status()
    cls = StageSkipped if has_builder else trt.NoBuilder  # with a builder here, an unbuilt plugin fails the run
    raise cls(f"the TensorRT plugin was not built: {info.get('note')}. TensorRT's pip wheels ship no headers: set "
              "TRT_INCLUDE to include/ of NVIDIA's TensorRT repository at your release's tag (TensorRT-RTX: 11.x) "
              "and rerun notebook 05's build cell (README, 'The SiLU plugin')" + ("" if has_builder else f"; {why}"))


def engine_specs(exported) -> list:
    """The plugin engines of the study: one per precision, from the rewritten ONNX files, with our plugin library."""
    from mvlib import trt
    require_plugin()
    trt.select()  # NoBuilder before anything else when there is none
    lib = plugin_library()
    return [trt.EngineSpec(f"plugin_{p}", exported.model(p, plugin=True), (lib,)) for p in PRECISIONS]


def build_engines(exported, profile, trt_flavour: str = "auto", trt_target: str = "auto",
                  workspace_gb: float = 4) -> pd.DataFrame:
    """The plugin engines' rows of the engines table (built or reused; failures with the builder's words)."""
    from mvlib import trt
    return trt.build_all("05_silu_plugin", engine_specs(exported), profile, trt_flavour, trt_target, workspace_gb)


def _built(engines: pd.DataFrame | None) -> pd.DataFrame:
    """The engines-table rows that were built and can run here, or StageSkipped saying why none can."""
    from mvlib import trt
    built = engines[engines["status"].isin(["built", "reused"])] if engines is not None else None
    if built is None or not len(built):
        raise StageSkipped("no plugin engine was built (see the plugin_engines stage)")
    trt.runnable(trt.load(built["path"].iloc[0]))
    return built


def plugin_accuracy(exported, engines: pd.DataFrame | None, tolerances: dict[str, float]) -> pd.DataFrame:
    """Plugin engines against ONNX Runtime on the original model, on the same saved inputs (cosine tolerance per precision)."""
    built = _built(engines)
    from polygraphy.comparator import RunResults

    from mvlib import accuracy, export, trt
    inputs, _ = export.load_reference(exported)
    ref_path = exported.artifact("ort_reference")
    if not ref_path.exists():
        raise FileNotFoundError(f"{ref_path} not found: run plugin.onnxrt_reference(exported) first (a cpu stage)")
    ref = RunResults.load(str(ref_path))
    runners = [trt.runner(r.path, f"trt-{r.engine}", plugins=(plugin_library(),)) for r in built.itertuples()]
    results = accuracy.run(runners, inputs)
    merged = RunResults()
    for name, iters in list(ref.items()) + list(results.items()):
        merged[name] = iters
    table = accuracy.table(merged, reference="onnxrt-original")
    table["precision"] = table["runner"].str.extract(r"trt-plugin_(\w+)", expand=False)
    table["cosine_tolerance"] = table["precision"].map(tolerances)
    table["passed"] = table["cosine_min"] >= table["cosine_tolerance"]
    return table


def plugin_layers(engines: pd.DataFrame | None) -> pd.DataFrame:
    """The plugin layers of each engine as the engine inspector reports them, against the ONNX file's plugin nodes."""
    built = _built(engines)
    from mvlib import silu, trt
    name = silu.plugin_id().name
    frames = []
    for r in built.itertuples():
        layers = trt.layer_summary(Path(r.path).parent)
        is_plugin = layers["type"].astype(str).str.contains("Plugin", case=False) | layers["name"].str.contains(name)
        found = layers[is_plugin].copy()
        found.insert(0, "engine", r.engine)
        found["engine_layers"] = len(layers)
        found["plugin_nodes_in_onnx"] = r.plugin_nodes_in_onnx
        frames.append(found)
    table = pd.concat(frames, ignore_index=True)
    counts = table.groupby("engine").agg(layers=("name", "size"), nodes=("plugin_nodes_in_onnx", "first"))
    if not (counts["layers"] == counts["nodes"]).all():
        raise AssertionError(f"engine plugin layers differ from the ONNX files' {name} nodes:\n{counts}")
    return table
