"""mvlib.silu.build: build.sh as CI sees it (nvcc, symbols, architectures, warnings as errors, the plugin against
TensorRT's headers, byte-for-byte rebuilds), the build record, the ABI record and check, and what a machine
without nvcc says.

The plugin is compiled against TensorRT's public headers when TRT_INCLUDE names one or more include/
folders (os.pathsep-separated, e.g. two releases), else against ../shared/tensorrt-include beside the checkout;
without either those tests skip with the reason.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mvlib import env, paths
from mvlib.silu import build
from mvlib.skips import StageSkipped
from mvlib.tensorrt import flavours
from mvlib.tensorrt import plugins as plugin_libs

NVCC = env.nvcc_path()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: the kernel library cannot be compiled here")
TRT_INCLUDES = [p for p in os.environ.get("TRT_INCLUDE", "").split(os.pathsep) if p]


def _header_folders() -> list[str]:
    """TRT_INCLUDE (os.pathsep-separated), else every release in ../shared/tensorrt-include beside the checkout."""
    if TRT_INCLUDES:
        return TRT_INCLUDES
    return sorted(str(p) for p in (paths.ROOT.parent / "shared" / "tensorrt-include").glob("*/include"))


HEADERS = _header_folders()
HAS_BUILDER, BUILDER = flavours.builder_status()


def _build_sh(env_extra: dict, drop=(), timeout: int = 600) -> subprocess.CompletedProcess:
    """build.sh with this environment plus `env_extra`, less the names in `drop`."""
    run_env = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(["bash", str(build.BUILD_SCRIPT)], env={**run_env, **env_extra}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def kernel_build(tmp_path_factory):
    """The kernel library built by build.sh without TensorRT headers, in a private build folder."""
    if NVCC is None:
        pytest.skip("nvcc not found: the kernel library cannot be compiled here")
    root = tmp_path_factory.mktemp("silu_build")
    proc = _build_sh({"MVLIB_BUILD": str(root)}, drop=("TRT_INCLUDE", "TRT_ROOT"))
    assert proc.returncode == 0, proc.stderr
    return root, proc.stdout


@needs_nvcc
def test_build_script_says_what_it_built_and_where(kernel_build):
    root, stdout = kernel_build
    info = build.build_record(root)
    assert Path(info["kernel_library"]) == root / "silu_plugin" / build.KERNEL_LIB
    if not info["plugin"]:  # no headers on this machine: it must say so, and build no plugin
        assert "kernel library only" in stdout and "TRT_INCLUDE" in info["note"]
        assert not (root / "silu_plugin" / build.PLUGIN_LIB).exists()
    for arch in ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "compute_90"):
        assert arch in info["targets"]


@needs_nvcc
def test_kernel_library_exports_exactly_the_c_abi(kernel_build):
    root, _ = kernel_build
    lib = root / "silu_plugin" / build.KERNEL_LIB
    assert build.exported_symbols(lib) - {"_init", "_fini"} == set(build.KERNEL_SYMBOLS)
    # The static CUDA runtime stays private: a process with its own cudart never binds to ours.
    assert not any(s.startswith("cuda") for s in build.exported_symbols(lib))


@needs_nvcc
def test_kernel_library_carries_code_for_every_target(kernel_build):
    root, _ = kernel_build
    if build.cuobjdump_path() is None:
        pytest.skip("cuobjdump not found (beside nvcc, on PATH, or from the dev extra's nvidia-cuda-cuobjdump)")
    held = build.architectures(root / "silu_plugin" / build.KERNEL_LIB).split()
    # T4 (Turing) included: TensorRT supports 7.5 and up; PTX for GPUs newer than the SASS (e.g. sm_120)
    assert held[:5] == ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"] and held[-2:] == ["PTX", "compute_90"], held
    table = build.check_build(root)
    assert table.set_index("library").loc[build.KERNEL_LIB, "architectures"] == " ".join(held)


def test_missing_build_errors_name_the_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="build.sh"):
        build.build_record(tmp_path)
    with pytest.raises(FileNotFoundError, match="TRT_INCLUDE"):
        build.library_path(build.PLUGIN_LIB, tmp_path)
    with pytest.raises(FileNotFoundError, match="needs nvcc"):
        build.library_path(build.KERNEL_LIB, tmp_path)


@needs_nvcc
def test_build_script_refuses_a_wrong_header_folder_and_keeps_the_last_build(kernel_build, tmp_path):
    root, _ = kernel_build
    before = (root / "silu_plugin" / build.KERNEL_LIB).stat().st_mtime_ns
    proc = _build_sh({"MVLIB_BUILD": str(root), "TRT_INCLUDE": str(tmp_path)})
    assert proc.returncode == 2 and "NvInferRuntime.h" in proc.stderr
    assert (root / "silu_plugin" / build.KERNEL_LIB).stat().st_mtime_ns == before
    assert not list((root / "silu_plugin").glob(".build.*")), "temporary build folder left behind"


@needs_nvcc
def test_build_errors_lead_with_the_scripts_own_words(tmp_path):
    """A stage that runs build.sh through mvlib.silu.build records build.sh's error as its reason, not a path."""
    with pytest.raises(build.BuildError) as err:
        build.build(trt_include=str(tmp_path / "nowhere"), build_root=tmp_path / "b")
    first = str(err.value).splitlines()[0]
    assert first.startswith("error: TRT_INCLUDE=") and "has no NvInferRuntime.h" in first
    assert first.endswith("(build.sh exited with status 2)") and err.value.status == 2


def test_build_script_names_the_fix_when_nvcc_is_missing(tmp_path):
    proc = _build_sh({"MVLIB_BUILD": str(tmp_path), "NVCC": str(tmp_path / "nvcc")}, timeout=60)
    assert proc.returncode == 2 and "set NVCC" in proc.stderr
    assert not (tmp_path / "silu_plugin" / build.KERNEL_LIB).exists()


def test_a_missing_nvcc_is_reported_as_a_missing_compiler_not_a_missing_builder(monkeypatch):
    monkeypatch.setattr(env, "nvcc_path", lambda: None)
    with pytest.raises(build.NoCompiler, match="nvcc not found.*CUDA toolkit") as err:
        build.require_plugin()
    assert err.value.no_compiler and not getattr(err.value, "no_builder", False)
    with pytest.raises(StageSkipped, match="nvcc not found"):
        build.check_build()


def test_an_unbuilt_plugin_fails_where_a_builder_could_have_built_it(tmp_path, monkeypatch):
    """A build record without the plugin: with a builder installed the skip is not excused (the run fails)."""
    monkeypatch.setattr(env, "nvcc_path", lambda: "/usr/local/cuda/bin/nvcc")
    (tmp_path / "silu_plugin").mkdir()
    (tmp_path / "silu_plugin" / build.BUILD_RECORD).write_text('{"plugin": false, "note": "no TensorRT headers"}')
    with pytest.raises(StageSkipped, match="no TensorRT headers.*TRT_INCLUDE") as err:
        build.require_plugin(tmp_path)
    assert bool(getattr(err.value, "no_builder", False)) is not HAS_BUILDER


# --- the plugin against TensorRT's headers ------------------------------------------------------------
@pytest.fixture(scope="module", params=HEADERS or [None], ids=lambda p: Path(p).parent.name if p else "none")
def plugin_build(request, tmp_path_factory):
    """The plugin built against one TensorRT release's include/ folder."""
    if request.param is None:
        pytest.skip("no TensorRT headers: set TRT_INCLUDE to TensorRT's include/ folder(s) to compile the plugin")
    if NVCC is None:
        pytest.skip("nvcc not found")
    root = tmp_path_factory.mktemp("plugin_build")
    info = build.build(trt_include=request.param, build_root=root, match_runtime=False)
    return root, info


@needs_nvcc
@pytest.mark.parametrize("source", ["silu_kernel.cu", "silu_plugin.cpp"])
def test_a_warning_fails_the_build_and_keeps_the_last_good_one(tmp_path, source):
    """Every warning is an error, in the kernel and in the plugin: a compile, not a grep of build.sh's flags."""
    project = tmp_path / "project"
    shutil.copytree(paths.PLUGIN_SRC, project / "silu_plugin")
    headers = {"TRT_INCLUDE": HEADERS[-1]} if HEADERS else {}
    if source == "silu_plugin.cpp" and not headers:
        pytest.skip("no TensorRT headers: the plugin is not compiled here")
    run = lambda: subprocess.run(["bash", str(project / "silu_plugin" / "build.sh")],  # noqa: E731
                                 env={**os.environ, **headers, "MVLIB_BUILD": str(tmp_path / "build")},
                                 capture_output=True, text=True, timeout=600)
    assert run().returncode == 0  # the sources as they are: no warning
    lib = tmp_path / "build" / "silu_plugin" / build.KERNEL_LIB
    before = lib.read_bytes()
    with open(project / "silu_plugin" / source, "a") as f:
        f.write("\nstatic int mv_unused_for_the_test() { int never_used = 1; return 0; }\n")
    proc = run()
    assert proc.returncode != 0 and "never_used" in proc.stderr
    assert lib.read_bytes() == before  # the failed build replaced nothing


def test_plugin_compiles_with_warnings_as_errors_and_records_its_headers(plugin_build):
    root, info = plugin_build
    assert info["plugin"] is True and info["tensorrt_headers_version"]
    major, minor, _ = build.headers_version(root / "silu_plugin" / build.PLUGIN_LIB_DYNAMIC)
    assert f"{major}.{minor}" == ".".join(info["tensorrt_headers_version"].split(".")[:2])  # the library says it too
    assert info["tensorrt_headers_major"] == major


def test_plugin_libraries_export_the_entry_points(plugin_build):
    root, _ = plugin_build
    out = root / "silu_plugin"
    for name in (build.PLUGIN_LIB, build.PLUGIN_LIB_DYNAMIC):
        exported = build.exported_symbols(out / name) - {"_init", "_fini"}
        assert exported == set(build.KERNEL_SYMBOLS) | set(build.PLUGIN_ENTRY_POINTS), name
    # Static registration calls TensorRT's getPluginRegistry at load; the loadLibrary copy must not.
    assert "getPluginRegistry" in build.undefined_symbols(out / build.PLUGIN_LIB)
    assert "getPluginRegistry" not in build.undefined_symbols(out / build.PLUGIN_LIB_DYNAMIC)


def test_plugin_interface_check_passes(plugin_build):
    root, _ = plugin_build
    table = build.plugin_interface_check(root)
    assert (table["status"] == "ok").sum() >= 30
    assert not (table["status"] == "FAIL").any()
    checks = " ".join(table["check"])
    assert "silu_plugin_id.h" in checks  # the creator's name, version and namespace are the header's
    assert "input FP16 linear supported" in checks and "input INT8 refused" in checks


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
def test_a_plugin_of_another_major_is_refused_before_tensorrt_sees_it(plugin_build):
    """check_abi is the check the loader takes from us: it stops a library of another major before the registry."""
    root, info = plugin_build
    fl = flavours.select()
    lib = root / "silu_plugin" / build.PLUGIN_LIB_DYNAMIC
    if info["tensorrt_headers_major"] == fl.abi_major:
        build.check_abi(lib, fl)  # these headers match the runtime: no complaint
        return
    with pytest.raises(RuntimeError, match=rf"TensorRT {fl.abi_major}\.x.*TRT_INCLUDE"):
        build.check_abi(lib, fl)
    with pytest.raises(RuntimeError, match="TRT_INCLUDE"):
        plugin_libs.load_plugins(fl, [lib], check=build.check_abi)  # stops before the registry (a crash otherwise)


@needs_nvcc
def test_build_script_finds_headers_of_the_runtimes_major_without_trt_include(tmp_path):
    """No TRT_INCLUDE: build.sh takes a system install, else ../shared/tensorrt-include of the major asked for."""
    majors = {Path(h).parent.name.split(".")[0] for h in HEADERS}
    if TRT_INCLUDES or not majors:
        pytest.skip("needs ../shared/tensorrt-include beside the checkout and TRT_INCLUDE unset")
    for major in sorted(majors):
        proc = _build_sh({"MVLIB_BUILD": str(tmp_path / major), "TRT_MAJOR": major},
                         drop=("TRT_INCLUDE", "TRT_ROOT"))
        assert proc.returncode == 0, proc.stderr
        info = build.build_record(tmp_path / major)
        assert info["plugin"] and info["tensorrt_headers_major"] == int(major), info


@needs_nvcc
def test_build_script_refuses_headers_of_another_major_than_the_runtime(tmp_path):
    h10 = [h for h in HEADERS if Path(h).parent.name.startswith("10.")]
    if not h10:
        pytest.skip("no TensorRT 10 headers here")
    proc = _build_sh({"MVLIB_BUILD": str(tmp_path), "TRT_INCLUDE": h10[0], "TRT_MAJOR": "11"})
    assert proc.returncode == 2 and "TRT_INCLUDE" in proc.stderr and "11" in proc.stderr


# --- a rerun with nothing changed rebuilds nothing -----------------------------------------------------------
# Plugin engines are keyed on what the loader maps from the library, and a library whose bytes changed on every
# build (nvcc named its intermediate file tmpxft_<pid>_..., and that name landed in the symbol table) made every
# rerun rebuild them; build.sh now writes the same bytes from the same sources.
OUTPUTS = (build.KERNEL_LIB, build.PLUGIN_LIB, build.PLUGIN_LIB_DYNAMIC, build.PLUGIN_CHECK)
HEADERS_11 = next((h for h in reversed(HEADERS) if Path(h).parent.name.startswith("11.")), "")


def _one_target_build(root: Path, headers: str) -> Path:
    """build.sh for one target (the mechanism does not depend on how many) into `root`; its output folder."""
    extra = {"MVLIB_BUILD": str(root), "SILU_ARCHS": "-gencode=arch=compute_86,code=sm_86"}
    proc = _build_sh({**extra, **({"TRT_INCLUDE": headers} if headers else {})}, drop=("TRT_MAJOR",), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "silu_plugin"


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The same sources built twice, into two build folders (two processes, two pids)."""
    if NVCC is None:
        pytest.skip("nvcc not found: nothing to compile here")
    first = _one_target_build(tmp_path_factory.mktemp("first"), HEADERS_11)
    second = _one_target_build(tmp_path_factory.mktemp("second"), HEADERS_11)
    return first, second, HEADERS_11


def test_two_builds_give_identical_libraries(two_builds):
    first, second, headers = two_builds
    names = OUTPUTS if headers else OUTPUTS[:1]
    for name in names:
        a, b = (first / name).read_bytes(), (second / name).read_bytes()
        assert a == b, f"{name}: the bytes differ between two builds of the same sources"
    # nvcc's default temporary names carry the process id; none may reach the library
    assert b"tmpxft_" not in (first / build.KERNEL_LIB).read_bytes()


def test_a_rebuild_with_nothing_changed_leaves_the_outputs_untouched(two_builds):
    first, _, headers = two_builds
    before = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}
    _one_target_build(first.parent, headers)
    after = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}
    assert after == before  # not even rewritten with the same bytes: the rerun record says "unchanged"


# --- paths with spaces ---------------------------------------------------------------------------------------
@needs_nvcc
def test_the_plugin_builds_from_a_source_tree_and_against_a_tensorrt_library_whose_paths_have_spaces(tmp_path):
    """A clone in 'My Projects/', a build folder and a TensorRT install with spaces: nvcc splits -Xlinker values at
    spaces, so a library path given that way never reached ld (issue 26, row 1)."""
    lib = build.build_env().get("TRT_LIB") or os.environ.get("TRT_LIB")
    if not HEADERS or not lib:
        pytest.skip("needs TensorRT headers and a TensorRT runtime library to link the plugin against")
    src = tmp_path / "My Projects" / "mobile vit"
    shutil.copytree(paths.PLUGIN_SRC, src / "silu_plugin")
    headers = shutil.copytree(HEADERS_11 or HEADERS[-1], tmp_path / "Tensor RT" / "include")
    libdir = tmp_path / "Tensor RT" / "lib dir"
    libdir.mkdir()
    (libdir / Path(lib).name).symlink_to(Path(lib).resolve())
    out = tmp_path / "build here" / "silu_plugin"
    proc = subprocess.run(["bash", str(src / "silu_plugin" / "build.sh")], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MVLIB_BUILD": str(out.parent), "TRT_INCLUDE": str(headers),
                               "TRT_LIB": str(libdir / Path(lib).name), "TRT_MAJOR": "",
                               "SILU_ARCHS": "-gencode=arch=compute_86,code=sm_86"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = build.build_record(out.parent)  # valid JSON, whatever the paths hold
    assert info["plugin"] and info["tensorrt_library"] == str(libdir / Path(lib).name)
    assert Path(info["plugin_library"]) == out / build.PLUGIN_LIB
    dynamic = subprocess.run(["readelf", "-d", str(out / build.PLUGIN_LIB)], capture_output=True, text=True).stdout
    assert f"[{libdir}]" in dynamic  # the runtime is found where it lies, spaces and all
    assert "tensorrt_core" not in dynamic  # ld records the library by its SONAME, not by the link build.sh made
