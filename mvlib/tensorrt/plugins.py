"""Plugin libraries for TensorRT: where they are, the caller's check before loading, loading, a stable digest, and
the plugin nodes of an ONNX file. Serves notebooks 03-06 (every engine build and run); tests/tensorrt/test_plugins.py.

A plugin is loaded through the registry's `load_library` (it calls the library's `getCreators`), which works
for every install, pip wheels included (they load TensorRT privately). Before that, a check given by the caller
(the SiLU plugin's is mvlib.silu.build.check_abi: the TensorRT headers it was compiled against) stops a library
that would otherwise crash the process. The check travels by name ("module:function") to the build and
measuring processes and in an engine's build record, so every later load of that engine's plugins runs it.

TensorRT-RTX's ONNX parser dlopens the unversioned `libtensorrt_rtx.so` when it adds a plugin layer, and the
wheel ships only `libtensorrt_rtx.so.1`: `unversioned_dir` links that name under build/ for builds.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mvlib import paths
from mvlib.tensorrt.flavours import Flavour

# The ONNX domain of TensorRT plugin ops, as NVIDIA's tools write them (ModelOpt's custom ops, ONNX Runtime's
# TensorRT EP). The parser dispatches on op_type alone (builtin importer, else local function, else the plugin
# registry), so the domain is what tells a reader which nodes are plugin ops.
PLUGIN_DOMAIN = "trt.plugins"
Check = Callable[[str, Flavour], None]  # raises where TensorRT must not load the library (e.g. another ABI)
_LOADED: dict[tuple[str, str], Any] = {}


def check_plugins(plugins: Sequence[Path | str] = ()) -> list[str]:
    """Absolute paths of the plugin libraries; a missing one raises an error saying it must be built first."""
    found = []
    for p in plugins:
        path = Path(p).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"TensorRT plugin library {path} does not exist. Build it first (the study's SiLU plugin: run "
                "notebooks/05_silu_plugin.ipynb, README 'The SiLU plugin').")
        found.append(str(path))
    return found


def check_name(check: Check | str | None) -> str | None:
    """A check as 'module:function', the name it travels by to child processes and build records."""
    if check is None or isinstance(check, str):
        return check
    name = f"{check.__module__}:{check.__qualname__}"
    try:
        found = named_check(name)
    except RuntimeError:
        found = None
    if found is not check:
        raise ValueError(f"the plugin check {name} cannot be found again by its name: pass a module-level function")
    return name


def named_check(name: Check | str | None) -> Check | None:
    """The check function a 'module:function' name stands for (a function is returned as it is)."""
    if name is None or callable(name):
        return name
    module, _, attr = name.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise RuntimeError(f"plugin check {name!r} not found ({err}): an engine's build record names a check this "
                           "installation does not have; rebuild the engine") from err
    return found


def load_plugins(fl: Flavour, plugins: Sequence[Path | str], check: Check | str | None) -> list:
    """Load plugin libraries through the registry's load_library, once per process, each after the caller's
    `check` (a function or its name; None: the caller vouches for them)."""
    handles = []
    registry = fl.module().get_plugin_registry()
    check = named_check(check)
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
    """SHA-256 of what the loader maps from a shared library: stable across rebuilds of the same sources.

    nvcc names its temporary files `tmpxft_<pid>_...`, and those names end up in the library's symbol and string
    tables (and so in its GNU build-id): the file's bytes change on every build of the same sources. The engine
    cache keys plugin engines on this digest instead: the contents of every allocated section (code, read-only
    data, the GPU fatbinary, dynamic symbols), without the build-id note and without the non-allocated
    `.symtab`/`.strtab`, which the loader never reads. Headers of another TensorRT release change the code, and
    so the digest.
    """
    import lief
    path = str(library)
    binary = lief.ELF.parse(path)
    if binary is None:
        raise RuntimeError(f"{path} is not an ELF shared library: rebuild it")
    h = hashlib.sha256()
    for section in binary.sections:
        if not section.has(lief.ELF.Section.FLAGS.ALLOC) or section.type == lief.ELF.Section.TYPE.NOBITS \
                or section.name == ".note.gnu.build-id":
            continue
        h.update(section.name.encode() + b"\0" + bytes(section.content))
    return h.hexdigest()


def plugin_nodes(onnx_path: Path | str) -> list[str]:
    """Names of the plugin-op nodes (PLUGIN_DOMAIN) of an ONNX file, in graph order."""
    import onnx
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.domain == PLUGIN_DOMAIN]


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
