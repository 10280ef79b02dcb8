"""Plugin libraries for TensorRT: where they are, the ABI check before loading, loading, and a stable digest.

A plugin is loaded through the registry's `load_library` (it calls the library's `getCreators`), which works
for every install, pip wheels included (they load TensorRT privately). Before that, a check passed in by the
caller (by default `check_abi`, our SiLU plugin's record of the TensorRT headers it was compiled against)
stops a library of another TensorRT major, which would otherwise crash the process.

TensorRT-RTX's ONNX parser dlopens the unversioned `libtensorrt_rtx.so` when it adds a plugin layer, and the
wheel ships only `libtensorrt_rtx.so.1`: `unversioned_dir` links that name under build/ for builds.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mvlib import paths
from mvlib.tensorrt.flavours import Flavour

ABI_RECORD = "mv_silu_plugin_tensorrt_version"  # exported by silu_plugin.cpp: TensorRT headers' version
_LOADED: dict[tuple[str, str], Any] = {}


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


def load_plugins(fl: Flavour, plugins: Sequence[Path | str],
                 check: Callable[[str, Flavour], None] | None = check_abi) -> list:
    """Load plugin libraries through the registry's load_library, once per process, each after `check`."""
    handles = []
    registry = fl.module().get_plugin_registry()
    for lib in check_plugins(plugins):
        if check is not None:
            check(lib, fl)
        key = (fl.name, lib)
        if key not in _LOADED:
            handle = registry.load_library(lib)
            if handle is None:
                raise RuntimeError(f"{fl.label} refused to load the plugin library {lib} (see its log above)")
            _LOADED[key] = handle
        handles.append(_LOADED[key])
    return handles


def library_digest(library: Path | str) -> str:
    """SHA-256 of what the loader maps from a shared library, plus its ABI record: stable across rebuilds.

    nvcc names its temporary files `tmpxft_<pid>_...`, and those names end up in the library's symbol and string
    tables (and so in its GNU build-id): the file's bytes change on every build of the same sources. The engine
    cache keys plugin engines on this digest instead: the contents of every allocated section (code, read-only
    data, the GPU fatbinary, dynamic symbols), without the build-id note and without the non-allocated
    `.symtab`/`.strtab`, which the loader never reads; and the TensorRT headers' version the library records.
    """
    import lief
    path = str(library)
    binary = lief.ELF.parse(path)
    if binary is None:
        raise RuntimeError(f"{path} is not an ELF shared library; rebuild it with `bash silu_plugin/build.sh`")
    h = hashlib.sha256()
    for section in binary.sections:
        if not section.has(lief.ELF.Section.FLAGS.ALLOC) or section.type == lief.ELF.Section.TYPE.NOBITS \
                or section.name == ".note.gnu.build-id":
            continue
        h.update(section.name.encode() + b"\0" + bytes(section.content))
    try:
        h.update(repr(headers_version(path)).encode())
    except RuntimeError:
        h.update(b"no ABI record")
    return h.hexdigest()


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
