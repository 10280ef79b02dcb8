"""The SiLU kernel library: build.sh driven from Python, its build record, its libraries loaded, its torch op.

The CUDA sources live in silu_plugin/ (silu_kernel.cu with a C ABI, silu_plugin.cpp the IPluginV3
plugin, build.sh); build.sh writes everything into paths.PLUGIN_BUILD. This module loads the kernel
library with ctypes and launches it on PyTorch's current CUDA stream, as a plain call in eager mode
and as the registered op `torch.ops.mvlib.silu` under torch.compile. Its checks and measurements on
the GPU are in mvlib.kernel_gpu; the TensorRT plugin's stages in mvlib.plugin.

Imports stay light: torch and pandas at the top, TensorRT only inside build_env, so this module also
imports on a GPU machine that has PyTorch and nothing else of the study's stack.
"""
import ctypes
import functools
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import torch

from mvlib import env, io, paths
from mvlib.run import StageSkipped

BUILD_SCRIPT = paths.PLUGIN_SRC / "build.sh"
KERNEL_LIB = "libmv_silu.so"
# static registration: ctypes, polygraphy --plugins, trtexec --staticPlugins
PLUGIN_LIB = "libmv_silu_plugin.so"
# entry points only: IPluginRegistry::loadLibrary, trtexec --dynamicPlugins
PLUGIN_LIB_DYNAMIC = "libmv_silu_plugin_dynamic.so"
PLUGIN_CHECK = "mv_silu_plugin_check"
BUILD_RECORD = "build_info.json"  # what build.sh made, against which headers, and why not the rest

KERNEL_SYMBOLS = ("mv_silu", "mv_silu_ex", "mv_silu_default_config", "mv_copy_ex")
PLUGIN_ENTRY_POINTS = ("getCreators", "getPluginCreators", "setLoggerFinder", "mv_silu_plugin_tensorrt_version")
DTYPE_CODES = {"float32": 0, "float16": 1}  # MV_SILU_FLOAT32 / MV_SILU_FLOAT16 (silu_kernel.h)


# --- build --------------------------------------------------------------------------------------------
def build_dir(build_root: Path | str | None = None) -> Path:
    """Where build.sh writes: <build_root>/silu_plugin (default paths.PLUGIN_BUILD)."""
    return Path(build_root).resolve() / "silu_plugin" if build_root else paths.PLUGIN_BUILD


def build_env(trt_flavour: str = "auto") -> dict[str, str]:
    """What build.sh needs to compile a plugin this interpreter's TensorRT flavour loads: PYTHON, TRT_MAJOR, TRT_LIB.

    Set these in os.environ before a `%%bash` cell runs build.sh (notebook 05 does): the kernel's own
    interpreter is not the `python3` first on PATH when the environment is not activated.
    """
    from mvlib.tensorrt import flavours
    out = {"PYTHON": sys.executable}
    try:
        fl = flavours.select(trt_flavour)
    except flavours.NoBuilder:
        return out  # no TensorRT here: build.sh still builds the kernel, and the plugin where it finds headers
    out["TRT_MAJOR"] = str(fl.abi_major)
    lib = fl.runtime_library()
    if lib is not None and "TRT_LIB" not in os.environ:
        out["TRT_LIB"] = str(lib)
    return out


def build(trt_include: str | None = None, build_root: Path | str | None = None, nvcc: str | None = None,
          trt_flavour: str = "auto", match_runtime: bool = True) -> dict:
    """Run silu_plugin/build.sh (kernel library, plus the plugin when TensorRT headers are found); its build record.

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
        raise BuildError(proc.returncode, proc.stderr)
    return build_record(build_root)


class BuildError(RuntimeError):
    """build.sh failed: its own error first (the line a stage's reason and the driver's console show), then the
    rest of what it wrote."""

    def __init__(self, status: int, stderr: str):
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        own = [ln for ln in lines if ln.startswith("error:")] or lines[-1:] or ["(no message)"]
        rest = "\n".join(ln for ln in lines if ln not in own)[-3000:]
        super().__init__(f"{own[0]} ({BUILD_SCRIPT.name} exited with status {status})"
                         + "".join(f"\n{ln}" for ln in own[1:]) + (f"\n{rest}" if rest else ""))
        self.status = status


def build_record(build_root: Path | str | None = None) -> dict:
    """What the last build made (build_info.json), or an error naming how to build."""
    path = build_dir(build_root) / BUILD_RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the SiLU kernel is not built. "
                                "Run `bash silu_plugin/build.sh` (needs nvcc; set TRT_INCLUDE to also build "
                                "the TensorRT plugin) or mvlib.kernel.build()")
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


def cuobjdump_path() -> str | None:
    """cuobjdump: beside nvcc, on PATH, or from the nvidia-cuda-cuobjdump wheel (the dev extra); None if none."""
    nvcc = env.nvcc_path()
    candidates = [Path(nvcc).with_name("cuobjdump")] if nvcc else []
    candidates += [Path(p) for p in (shutil.which("cuobjdump"),) if p]
    candidates += sorted(Path(sysconfig.get_paths()["purelib"]).glob("nvidia/cu*/bin/cuobjdump"))
    return next((str(c) for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def architectures(library: Path | str) -> str:
    """The GPU code a library holds, as cuobjdump lists it: 'sm_75 sm_80 ... PTX compute_90' ('' without cuobjdump)."""
    tool = cuobjdump_path()
    if tool is None:
        return ""
    out = subprocess.run([tool, "--list-elf", "--list-ptx", str(library)], capture_output=True, text=True,
                         check=True).stdout
    sass = sorted(set(re.findall(r"\.(sm_\d+a?)\.cubin", out)), key=lambda a: int(re.sub(r"\D", "", a)))
    ptx = sorted(set(re.findall(r"\.sm_(\d+a?)\.ptx", out)))
    return " ".join(sass + [f"PTX compute_{p}" for p in ptx])


def check_build(build_root: Path | str | None = None) -> pd.DataFrame:
    """One row per built library: the symbols it must export, which are missing, and what else it exports."""
    if env.nvcc_path() is None:
        raise StageSkipped("nvcc not found: the SiLU kernel library cannot be compiled on this machine")
    info = build_record(build_root)
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
                     "architectures": architectures(lib) if lib.is_file() else "",
                     "tensorrt_headers": info.get("tensorrt_headers_version"), "nvcc": info.get("nvcc")})
    table = pd.DataFrame(rows)
    table["ok"] = table["exists"] & (table["missing"] == "")
    print(f"plugin built: {bool(info.get('plugin'))}" + (f" ({info['note']})" if info.get("note") else ""))
    return table


# --- loading -------------------------------------------------------------------------------------------
def library_path(name: str = KERNEL_LIB, build_root: Path | str | None = None) -> Path:
    """Path of a built library, or an error naming how to build it."""
    path = build_dir(build_root) / name
    if not path.is_file():
        fix = ("set TRT_INCLUDE to TensorRT's include/ folder and run `bash silu_plugin/build.sh`"
               if name != KERNEL_LIB else "run `bash silu_plugin/build.sh` (needs nvcc) or mvlib.kernel.build()")
        raise FileNotFoundError(f"{path} not found: {fix}")
    return path


def plugin_library(build_root: Path | str | None = None) -> Path:
    """The plugin library the study hands to TensorRT: the registry's load_library calls its getCreators.

    That route needs no TensorRT symbols visible to the library, so it works with pip wheels (which load
    TensorRT privately), SDK installs and TensorRT-RTX alike. The statically registering copy
    (PLUGIN_LIB) is for trtexec --staticPlugins and ctypes users.
    """
    return library_path(PLUGIN_LIB_DYNAMIC, build_root)


@functools.cache
def kernel_library(path: str | None = None) -> ctypes.CDLL:
    """The kernel library through ctypes, with the C ABI's argument types declared."""
    path = str(path or library_path())
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: "
                                "run `bash silu_plugin/build.sh` (needs nvcc) or mvlib.kernel.build()")
    try:
        lib = ctypes.CDLL(path)
    except OSError as err:
        raise RuntimeError(f"cannot load {path}: {err}. "
                           "Rebuild it on this machine with `bash silu_plugin/build.sh`") from err
    args = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    lib.mv_silu.argtypes = args
    lib.mv_silu_ex.argtypes = args + [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.mv_copy_ex.argtypes = args + [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.mv_silu_default_config.argtypes = [ctypes.c_int] + [ctypes.POINTER(ctypes.c_int)] * 3
    for fn in (lib.mv_silu, lib.mv_silu_ex, lib.mv_copy_ex, lib.mv_silu_default_config):
        fn.restype = ctypes.c_int
    return lib


class KernelError(RuntimeError):
    """The kernel library returned a CUDA error code (`status`)."""

    def __init__(self, what: str, status: int):
        super().__init__(f"{what} failed with CUDA error {status} (cudaError_t; 1 = invalid value, e.g. an unsupported "
                         "dtype or a pointer not aligned to its element size; 9 = a launch configuration that does not "
                         "fit on a multiprocessor)")
        self.status = status


def check_status(status: int, what: str) -> None:
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
    check_status(status, "mv_silu")
    return out


@functools.cache
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


