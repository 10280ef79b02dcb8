"""The SiLU plugin built: silu_plugin/build.sh from Python, its libraries and build record, their ABI record, and
the plugin driven through TensorRT's interfaces. Serves notebook 05 (build cell, `build`, `plugin_interface`
stages) and every caller that needs a built library; tests/silu/test_build.py.

The CUDA sources live in silu_plugin/ (silu_kernel.cu with a C ABI, silu_plugin.cpp the IPluginV3 plugin,
build.sh); build.sh writes everything into paths.PLUGIN_BUILD. The plugin library exports which TensorRT
headers it was compiled against (ABI_RECORD); `check_abi` is the check the TensorRT loader runs before loading
it (mvlib.tensorrt.plugins takes it from its caller), because a plugin of another major crashes the process.

Imports stay light: pandas and the standard library at the top, TensorRT only inside functions.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd

from mvlib import env, io, paths
from mvlib.skips import StageSkipped

BUILD_SCRIPT = paths.PLUGIN_SRC / "build.sh"
KERNEL_LIB = "libmv_silu.so"
# static registration: ctypes, polygraphy --plugins, trtexec --staticPlugins
PLUGIN_LIB = "libmv_silu_plugin.so"
# entry points only: IPluginRegistry::loadLibrary, trtexec --dynamicPlugins
PLUGIN_LIB_DYNAMIC = "libmv_silu_plugin_dynamic.so"
PLUGIN_CHECK = "mv_silu_plugin_check"
BUILD_RECORD = "build_info.json"  # what build.sh made, against which headers, and why not the rest
ABI_RECORD = "mv_silu_plugin_tensorrt_version"  # exported by silu_plugin.cpp: TensorRT headers' version

KERNEL_SYMBOLS = ("mv_silu", "mv_silu_ex", "mv_silu_default_config", "mv_copy_ex")
PLUGIN_ENTRY_POINTS = ("getCreators", "getPluginCreators", "setLoggerFinder", ABI_RECORD)


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


def build(trt_include: str | None = None, build_root: Path | str | None = None, trt_flavour: str = "auto",
          match_runtime: bool = True) -> dict:
    """Run silu_plugin/build.sh (kernel library, plus the plugin when TensorRT headers are found); its build record.

    `match_runtime` makes build.sh refuse headers of another major than the installed runtime's; tests
    turn it off to compile against every release. build.sh takes the compiler from NVCC or PATH.
    """
    run_env = {**os.environ, **build_env(trt_flavour)}
    if not match_runtime:
        run_env.pop("TRT_MAJOR", None)
    for key, value in (("TRT_INCLUDE", trt_include), ("MVLIB_BUILD", build_root)):
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
                                "the TensorRT plugin) or mvlib.silu.build.build()")
    return io.read_json(path)


# --- what the libraries hold ----------------------------------------------------------------------------
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


def library_path(name: str = KERNEL_LIB, build_root: Path | str | None = None) -> Path:
    """Path of a built library, or an error naming how to build it."""
    path = build_dir(build_root) / name
    if not path.is_file():
        fix = ("set TRT_INCLUDE to TensorRT's include/ folder and run `bash silu_plugin/build.sh`"
               if name != KERNEL_LIB else "run `bash silu_plugin/build.sh` (needs nvcc) or mvlib.silu.build.build()")
        raise FileNotFoundError(f"{path} not found: {fix}")
    return path


def plugin_library(build_root: Path | str | None = None) -> Path:
    """The plugin library the study hands to TensorRT: the registry's load_library calls its getCreators.

    That route needs no TensorRT symbols visible to the library, so it works with pip wheels (which load
    TensorRT privately), SDK installs and TensorRT-RTX alike. The statically registering copy
    (PLUGIN_LIB) is for trtexec --staticPlugins and ctypes users.
    """
    return library_path(PLUGIN_LIB_DYNAMIC, build_root)


# --- the ABI record: the check the TensorRT loader runs before loading the plugin --------------------------
def headers_version(library: Path | str) -> tuple[int, int, int]:
    """The TensorRT version of the headers a plugin library was compiled against (its exported record)."""
    path = str(library)
    try:
        lib = ctypes.CDLL(path)  # the dynamic library registers nothing when loaded, so this is side-effect free
        fn = getattr(lib, ABI_RECORD)
    except (OSError, AttributeError) as err:
        raise RuntimeError(f"{path} does not say which TensorRT headers it was built against ({err}); rebuild it with "
                           "`bash silu_plugin/build.sh`") from err
    fn.restype = ctypes.c_int32
    v = fn()
    return v // 10000, v // 100 % 100, v % 100


def check_abi(library: Path | str, fl) -> None:
    """Stop before TensorRT (flavour `fl`) sees a plugin built against headers of another major than its runtime
    (a crash otherwise)."""
    major, minor, patch = headers_version(library)
    if major != fl.abi_major:
        raise RuntimeError(
            f"{Path(library).name} was compiled against TensorRT {major}.{minor}.{patch} headers, but {fl.label} "
            f"expects TensorRT {fl.abi_major}.x plugins (the plugin interfaces' virtual tables differ between majors). "
            f"Rebuild it: TRT_INCLUDE=<TensorRT {fl.abi_major}.x include/> bash silu_plugin/build.sh, "
            "or run notebook 05")


# --- the plugin, built or not -----------------------------------------------------------------------------
class NoCompiler(StageSkipped):
    """nvcc is missing: no plugin can be compiled here, so no plugin engine either (`no_compiler` marks the skip
    as the machine's, as `no_builder` marks a missing TensorRT builder; the driver decides what it excuses)."""
    no_compiler = True


def require_plugin(build_root: Path | str | None = None, trt_flavour: str | None = "auto") -> dict:
    """The build record of a built plugin, or a skip that says what is missing and how to get it."""
    if env.nvcc_path() is None:
        raise NoCompiler("nvcc not found: the SiLU plugin cannot be compiled on this machine "
                         "(install the CUDA toolkit)")
    info = build_record(build_root)
    if info.get("plugin"):
        return info
    from mvlib.tensorrt import flavours
    has_builder, why = flavours.builder_status(trt_flavour)
    cls = StageSkipped if has_builder else flavours.NoBuilder  # with a builder here, an unbuilt plugin fails the run
    raise cls(f"the TensorRT plugin was not built: {info.get('note')}. TensorRT's pip wheels ship no headers: set "
              "TRT_INCLUDE to include/ of NVIDIA's TensorRT repository at your release's tag (TensorRT-RTX: 11.x) "
              "and rerun notebook 05's build cell (README, 'The SiLU plugin')" + ("" if has_builder else f"; {why}"))


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
