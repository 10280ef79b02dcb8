"""Plugin libraries for TensorRT (mvlib.tensorrt.plugins): the caller's check before loading, checks by name, a
digest that survives rebuilds, the unversioned RTX library, and a package that knows no plugin of ours.

The SiLU plugin is compiled for real with nvcc (one architecture, to keep it short) against TensorRT 11 headers.
"""
import os
import subprocess
from pathlib import Path

import lief
import pytest
import tensorrt_models as models

from mvlib import env, io, paths
from mvlib.silu import build
from mvlib.tensorrt import cache, flavours, plugins, shapes

ROOT = Path(__file__).resolve().parents[2]
HEADERS = sorted((ROOT.parent / "shared" / "tensorrt-include").glob("11.*/include"))


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The plugin library built twice from the same sources (nvcc's temporary names differ between builds)."""
    if env.nvcc_path() is None or not HEADERS:
        pytest.skip("needs nvcc and TensorRT 11 headers (../shared/tensorrt-include)")
    libs = []
    for i in range(2):
        root = tmp_path_factory.mktemp(f"plugin{i}")
        run_env = {**os.environ, "MVLIB_BUILD": str(root), "TRT_INCLUDE": str(HEADERS[-1]),
                   "SILU_ARCHS": "-gencode=arch=compute_86,code=sm_86"}
        run_env.pop("TRT_MAJOR", None)
        proc = subprocess.run(["bash", str(ROOT / "silu_plugin" / "build.sh")], env=run_env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        libs.append(root / "silu_plugin" / build.PLUGIN_LIB_DYNAMIC)
    return libs


def _patch_section(src: Path, dst: Path, name: str) -> None:
    """A copy of `src` with one byte of section `name` changed (as a rebuild changes a name in .strtab)."""
    data = bytearray(src.read_bytes())
    binary = lief.ELF.parse(str(src))
    section = binary.get_section(name)
    offset = section.file_offset + section.size // 2
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))


def test_plugin_engines_are_keyed_on_what_the_loader_maps(two_builds, tmp_path):
    """19.4: the digest is the same for two builds of the same sources and for a changed symbol name, and
    differs when the code changes; so plugin engines are reused across rebuilds of the library."""
    a, b = two_builds
    assert plugins.library_digest(a) == plugins.library_digest(b)
    renamed, recoded = tmp_path / "renamed.so", tmp_path / "recoded.so"
    _patch_section(a, renamed, ".strtab")
    _patch_section(a, recoded, ".text")
    assert io.sha256(renamed) != io.sha256(a) and plugins.library_digest(renamed) == plugins.library_digest(a)
    assert plugins.library_digest(recoded) != plugins.library_digest(a)
    onnx_path = models.conv(tmp_path / "model.onnx")
    rtx = flavours.Flavour("tensorrt_rtx", "1.7.1.116")
    keys = {cache.engine_key(onnx_path, cache.key_parts(onnx_path, shapes.Profile(1, 2, 4), rtx, "sm86", [lib]))
            for lib in (a, b, renamed)}
    assert len(keys) == 1


def test_the_unversioned_library_is_ours_and_on_the_build_path():
    fl = flavours.select() if flavours.builder_status()[0] else None
    if fl is None or not fl.rtx:
        pytest.skip("TensorRT-RTX only")
    d = plugins.unversioned_dir(fl)
    assert (d / "libtensorrt_rtx.so").resolve() == fl.runtime_library().resolve()
    assert str(d) in plugins.library_env(fl)["LD_LIBRARY_PATH"].split(":")


def refuse(library, fl):
    """A caller's check that refuses every library (module level, so it is found again by name)."""
    raise RuntimeError(f"refused {Path(library).name} for {fl.name}")


def test_the_loader_runs_the_callers_check_before_the_registry(tmp_path):
    fl = flavours.select() if flavours.builder_status()[0] else None
    if fl is None:
        pytest.skip("no TensorRT flavour installed: no registry to load into")
    lib = tmp_path / "libnot_a_plugin.so"
    lib.write_bytes(b"\x7fELF not a library: the registry would refuse it with another message")
    for check in (refuse, f"{__name__}:refuse"):  # the function, or its name as child processes get it
        with pytest.raises(RuntimeError, match=f"refused libnot_a_plugin.so for {fl.name}"):
            plugins.load_plugins(fl, [lib], check=check)
    with pytest.raises(RuntimeError, match="refused to load the plugin library"):
        plugins.load_plugins(fl, [lib], check=None)  # no check: the registry itself says no


def test_a_check_travels_by_a_name_that_finds_it_again():
    assert plugins.check_name(build.check_abi) == "mvlib.silu.build:check_abi"
    assert plugins.named_check("mvlib.silu.build:check_abi") is build.check_abi
    assert plugins.check_name(None) is None and plugins.named_check(None) is None
    with pytest.raises(ValueError, match="module-level function"):
        plugins.check_name(lambda library, fl: None)
    with pytest.raises(RuntimeError, match="rebuild the engine"):
        plugins.named_check("mvlib.silu.build:no_such_check")


def test_the_tensorrt_package_knows_no_plugin_of_ours():
    """The loader takes its check from the caller: no module under mvlib/tensorrt imports our plugin's package or
    names the symbol its ABI record is read from."""
    import ast
    for path in sorted((paths.ROOT / "mvlib" / "tensorrt").glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
        assert not [m for m in imported if m.startswith("mvlib.silu") or m in ("mvlib.kernel", "mvlib.plugin")], path
        assert build.ABI_RECORD not in path.read_text(), f"{path.name} names the plugin's ABI record"
