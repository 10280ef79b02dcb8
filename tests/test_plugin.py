"""The SiLU kernel library and TensorRT plugin as CI sees them: built with nvcc, symbols, C ABI, plugin interfaces.

The plugin is compiled against TensorRT's public headers when TRT_INCLUDE names one or more include/
folders (os.pathsep-separated, e.g. two releases); without it those tests skip with the reason.
"""
import copy
import ctypes
import json
import os
import subprocess
from pathlib import Path

import pytest

from mvlib import env, paths, plugin

NVCC = env.nvcc_path()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: the kernel library cannot be compiled here")
TRT_INCLUDES = [p for p in os.environ.get("TRT_INCLUDE", "").split(os.pathsep) if p]


@pytest.fixture(scope="module")
def kernel_build(tmp_path_factory):
    """The kernel library built by build.sh without TensorRT headers, in a private build folder."""
    if NVCC is None:
        pytest.skip("nvcc not found: the kernel library cannot be compiled here")
    root = tmp_path_factory.mktemp("silu_build")
    env_no_trt = {k: v for k, v in os.environ.items() if k not in ("TRT_INCLUDE", "TRT_ROOT")}
    proc = subprocess.run(["bash", str(plugin.BUILD_SCRIPT)], env={**env_no_trt, "MVLIB_BUILD": str(root)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return root, proc.stdout


@needs_nvcc
def test_build_script_says_what_it_built_and_where(kernel_build):
    root, stdout = kernel_build
    info = plugin.build_info(root)
    assert Path(info["kernel_library"]) == root / "silu_plugin" / plugin.KERNEL_LIB
    if not info["plugin"]:  # no headers on this machine: it must say so, and build no plugin
        assert "built: kernel library only" in stdout and "TRT_INCLUDE" in info["note"]
        assert not (root / "silu_plugin" / plugin.PLUGIN_LIB).exists()
    for arch in ("sm_80", "sm_86", "sm_89", "sm_90", "compute_90"):
        assert arch in info["targets"]


@needs_nvcc
def test_kernel_library_exports_exactly_the_c_abi(kernel_build):
    root, _ = kernel_build
    lib = root / "silu_plugin" / plugin.KERNEL_LIB
    assert plugin.exported_symbols(lib) - {"_init", "_fini"} == set(plugin.KERNEL_SYMBOLS)
    # The static CUDA runtime stays private: a process with its own cudart never binds to ours.
    assert not any(s.startswith("cuda") for s in plugin.exported_symbols(lib))


@needs_nvcc
def test_kernel_library_carries_code_for_every_target(kernel_build):
    root, _ = kernel_build
    cuobjdump = Path(NVCC).with_name("cuobjdump")
    if not cuobjdump.exists():
        pytest.skip("cuobjdump not found next to nvcc")
    out = subprocess.run([str(cuobjdump), "--list-elf", "--list-ptx", str(root / "silu_plugin" / plugin.KERNEL_LIB)],
                         capture_output=True, text=True, check=True).stdout
    for arch in ("sm_80", "sm_86", "sm_89", "sm_90"):
        assert f".{arch}." in out, f"no {arch} machine code in the library:\n{out}"
    assert "compute_90" in out or ".sm_90.ptx" in out, f"no PTX for forward compatibility:\n{out}"


@needs_nvcc
def test_c_abi_rejects_bad_arguments_without_a_gpu(kernel_build):
    root, _ = kernel_build
    lib = plugin.kernel_library(str(root / "silu_plugin" / plugin.KERNEL_LIB))
    invalid = 1  # cudaErrorInvalidValue
    assert lib.mv_silu(None, None, 0, 0, None) == 0                    # nothing to do is not an error
    assert lib.mv_silu(16, 32, 4, 7, None) == invalid                  # unknown dtype
    assert lib.mv_silu(None, 32, 4, 0, None) == invalid                # null pointer with work to do
    assert lib.mv_silu(18, 32, 4, 0, None) == invalid                  # float32 pointer not 4-byte aligned
    assert lib.mv_silu(17, 32, 4, 1, None) == invalid                  # float16 pointer not 2-byte aligned
    assert lib.mv_silu_ex(16, 32, 4, 0, None, 100, 0, 0) == invalid    # block not a multiple of 32
    assert lib.mv_silu_ex(16, 32, 4, 0, None, 2048, 0, 0) == invalid   # block over 1024 threads
    assert lib.mv_silu_ex(16, 32, 4, 0, None, 256, 0, 3) == invalid    # unroll not 1, 2, 4 or 8


@needs_nvcc
@pytest.mark.skipif(env.cuda_status()[0], reason="checks the behaviour on a machine without a GPU")
def test_c_abi_reports_missing_gpu_instead_of_succeeding(kernel_build):
    root, _ = kernel_build
    lib = plugin.kernel_library(str(root / "silu_plugin" / plugin.KERNEL_LIB))
    buf = (ctypes.c_float * 8)()
    assert lib.mv_silu(ctypes.addressof(buf), ctypes.addressof(buf), 8, 0, None) != 0


def test_missing_library_error_names_the_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="build.sh"):
        plugin.kernel_library(str(tmp_path / "libmv_silu.so"))
    with pytest.raises(FileNotFoundError, match="build.sh"):
        plugin.build_info(tmp_path)
    with pytest.raises(FileNotFoundError, match="TRT_INCLUDE"):
        plugin.library_path(plugin.PLUGIN_LIB, tmp_path)


@needs_nvcc
def test_build_script_refuses_a_wrong_header_folder_and_keeps_the_last_build(kernel_build, tmp_path):
    root, _ = kernel_build
    before = (root / "silu_plugin" / plugin.KERNEL_LIB).stat().st_mtime_ns
    proc = subprocess.run(["bash", str(plugin.BUILD_SCRIPT)],
                          env={**os.environ, "MVLIB_BUILD": str(root), "TRT_INCLUDE": str(tmp_path)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "NvInferRuntime.h" in proc.stderr
    assert (root / "silu_plugin" / plugin.KERNEL_LIB).stat().st_mtime_ns == before
    assert not list((root / "silu_plugin").glob(".build.*")), "temporary build folder left behind"


def test_build_script_names_the_fix_when_nvcc_is_missing(tmp_path):
    proc = subprocess.run(["bash", str(plugin.BUILD_SCRIPT)],
                          env={**os.environ, "MVLIB_BUILD": str(tmp_path), "NVCC": str(tmp_path / "nvcc")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "set NVCC" in proc.stderr
    assert not (tmp_path / "silu_plugin" / plugin.KERNEL_LIB).exists()


def test_swap_replaces_every_silu_module(xxs):
    _, model = xxs
    net = copy.deepcopy(model)
    n_before = sum(type(m).__name__ == "SiLU" for m in net.modules())
    assert plugin.swap_silu(net) == n_before > 0
    assert not any(type(m).__name__ == "SiLU" for m in net.modules())
    assert sum(isinstance(m, plugin.MvSiLU) for m in net.modules()) == n_before
    with pytest.raises(ValueError, match="CUDA tensors"):
        net(__import__("torch").rand(1, 3, 64, 64))  # on the CPU the stand-in says where it runs


def test_plugin_id_is_read_from_the_one_header():
    from mvlib import silu
    pid = silu.plugin_id()
    text = (paths.PLUGIN_SRC / "silu_plugin.cpp").read_text()
    assert '#include "silu_plugin_id.h"' in text
    assert f'"{pid.name}"' not in text and f'"{pid.namespace}"' not in text  # not repeated in the plugin


# --- the plugin against TensorRT's headers ------------------------------------------------------------
@pytest.fixture(scope="module", params=TRT_INCLUDES or [None], ids=lambda p: Path(p).parent.name if p else "none")
def plugin_build(request, tmp_path_factory):
    """The plugin built against one TensorRT release's include/ folder."""
    if request.param is None:
        pytest.skip("no TensorRT headers: set TRT_INCLUDE to TensorRT's include/ folder(s) to compile the plugin")
    if NVCC is None:
        pytest.skip("nvcc not found")
    root = tmp_path_factory.mktemp("plugin_build")
    info = plugin.build(trt_include=request.param, build_root=root)
    return root, info


def test_plugin_compiles_with_warnings_as_errors(plugin_build):
    root, info = plugin_build
    assert info["plugin"] is True and info["tensorrt_headers_version"]
    assert "-Werror" in (paths.PLUGIN_SRC / "build.sh").read_text()
    print(f"compiled against TensorRT {info['tensorrt_headers_version']} headers")


def test_plugin_libraries_export_the_entry_points(plugin_build):
    root, _ = plugin_build
    out = root / "silu_plugin"
    for name in (plugin.PLUGIN_LIB, plugin.PLUGIN_LIB_DYNAMIC):
        exported = plugin.exported_symbols(out / name) - {"_init", "_fini"}
        assert exported == set(plugin.KERNEL_SYMBOLS) | set(plugin.PLUGIN_ENTRY_POINTS), name
    # Static registration calls TensorRT's getPluginRegistry at load; the loadLibrary copy must not.
    assert "getPluginRegistry" in plugin.undefined_symbols(out / plugin.PLUGIN_LIB)
    assert "getPluginRegistry" not in plugin.undefined_symbols(out / plugin.PLUGIN_LIB_DYNAMIC)


def test_plugin_interface_check_passes(plugin_build):
    root, _ = plugin_build
    table = plugin.plugin_interface_check(root)
    assert (table["status"] == "ok").sum() >= 30
    assert not (table["status"] == "FAIL").any()
    checks = " ".join(table["check"])
    assert "creator name, version and namespace are silu_plugin_id.h's" in checks
    assert "input FP16 linear supported" in checks and "input INT8 refused" in checks


# --- the notebook --------------------------------------------------------------------------------------
def _declared_outputs(nb_path: Path) -> str:
    """The first markdown cell of a notebook (it lists the files the notebook creates)."""
    nb = json.loads(nb_path.read_text())
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "markdown")["source"])


def test_notebook_05_creates_what_it_lists(smoke_run):
    created = {p.name for sub in ("results", "figures") for p in (smoke_run / sub).glob("05_*")}
    listed = _declared_outputs(paths.NOTEBOOKS / "05_silu_plugin.ipynb")
    for name in created:
        assert name in listed, f"{name} is created but not listed in the first markdown cell"
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    stages = {k.split("/", 1)[1]: v for k, v in manifest["stages"].items() if k.startswith("05_silu_plugin/")}
    gpu = env.cuda_status()[0]
    expected = {"05_plugin_onnx.csv"}
    if NVCC is not None:
        expected.add("05_build.csv")
        assert stages["build"]["status"] == "ok"
    if gpu:
        expected |= {"05_kernel_check.csv", "05_kernel_bandwidth.csv", "05_kernel_bandwidth.png",
                     "05_model_swap.csv", "05_model_swap_accuracy.csv"}
    else:
        for name in ("kernel_check", "bandwidth", "swap_accuracy", "swap_throughput"):
            assert stages[name]["status"] == "skipped" and "GPU" in stages[name]["reason"]
    for name in ("plugin_interface", "plugin_engines", "plugin_accuracy", "plugin_layers"):
        if env.detect_tier() != "trt":
            assert stages[name]["status"] == "skipped" and stages[name]["reason"] == env.missing_for("trt")
    assert expected <= created, f"missing: {expected - created}"
    assert created - expected <= {"05_plugin_interface.csv", "05_plugin_engines.csv", "05_plugin_accuracy.csv",
                                  "05_plugin_layers.csv"}, f"unexpected: {created - expected}"
