"""The SiLU kernel library and TensorRT plugin as CI sees them: built with nvcc, symbols, C ABI, plugin interfaces.

The plugin is compiled against TensorRT's public headers when TRT_INCLUDE names one or more include/
folders (os.pathsep-separated, e.g. two releases); without it those tests skip with the reason.
"""
import copy
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mvlib import env, kernel, paths, plugin, silu_rewrite, tiers
from mvlib import run as run_mod
from mvlib.tensorrt import cache, flavours, shapes
from mvlib.tensorrt import plugins as plugin_libs
from mvlib.tensorrt import table as engines_table

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
    proc = subprocess.run(["bash", str(kernel.BUILD_SCRIPT)], env={**env_no_trt, "MVLIB_BUILD": str(root)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return root, proc.stdout


@needs_nvcc
def test_build_script_says_what_it_built_and_where(kernel_build):
    root, stdout = kernel_build
    info = kernel.build_record(root)
    assert Path(info["kernel_library"]) == root / "silu_plugin" / kernel.KERNEL_LIB
    if not info["plugin"]:  # no headers on this machine: it must say so, and build no plugin
        assert "kernel library only" in stdout and "TRT_INCLUDE" in info["note"]
        assert not (root / "silu_plugin" / kernel.PLUGIN_LIB).exists()
    for arch in ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "compute_90"):
        assert arch in info["targets"]


@needs_nvcc
def test_kernel_library_exports_exactly_the_c_abi(kernel_build):
    root, _ = kernel_build
    lib = root / "silu_plugin" / kernel.KERNEL_LIB
    assert kernel.exported_symbols(lib) - {"_init", "_fini"} == set(kernel.KERNEL_SYMBOLS)
    # The static CUDA runtime stays private: a process with its own cudart never binds to ours.
    assert not any(s.startswith("cuda") for s in kernel.exported_symbols(lib))


@needs_nvcc
def test_kernel_library_carries_code_for_every_target(kernel_build):
    root, _ = kernel_build
    if kernel.cuobjdump_path() is None:
        pytest.skip("cuobjdump not found (beside nvcc, on PATH, or from the dev extra's nvidia-cuda-cuobjdump)")
    held = kernel.architectures(root / "silu_plugin" / kernel.KERNEL_LIB).split()
    # T4 (Turing) included: TensorRT supports 7.5 and up; PTX for GPUs newer than the SASS (e.g. sm_120)
    assert held[:5] == ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"] and held[-2:] == ["PTX", "compute_90"], held
    table = kernel.check_build(root)
    assert table.set_index("library").loc[kernel.KERNEL_LIB, "architectures"] == " ".join(held)


@needs_nvcc
def test_c_abi_rejects_bad_arguments_without_a_gpu(kernel_build):
    root, _ = kernel_build
    lib = kernel.kernel_library(str(root / "silu_plugin" / kernel.KERNEL_LIB))
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
    lib = kernel.kernel_library(str(root / "silu_plugin" / kernel.KERNEL_LIB))
    buf = (ctypes.c_float * 8)()
    assert lib.mv_silu(ctypes.addressof(buf), ctypes.addressof(buf), 8, 0, None) != 0


def test_missing_library_error_names_the_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="build.sh"):
        kernel.kernel_library(str(tmp_path / "libmv_silu.so"))
    with pytest.raises(FileNotFoundError, match="build.sh"):
        kernel.build_record(tmp_path)
    with pytest.raises(FileNotFoundError, match="TRT_INCLUDE"):
        kernel.library_path(kernel.PLUGIN_LIB, tmp_path)


@needs_nvcc
def test_build_script_refuses_a_wrong_header_folder_and_keeps_the_last_build(kernel_build, tmp_path):
    root, _ = kernel_build
    before = (root / "silu_plugin" / kernel.KERNEL_LIB).stat().st_mtime_ns
    proc = subprocess.run(["bash", str(kernel.BUILD_SCRIPT)],
                          env={**os.environ, "MVLIB_BUILD": str(root), "TRT_INCLUDE": str(tmp_path)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "NvInferRuntime.h" in proc.stderr
    assert (root / "silu_plugin" / kernel.KERNEL_LIB).stat().st_mtime_ns == before
    assert not list((root / "silu_plugin").glob(".build.*")), "temporary build folder left behind"


def test_build_script_names_the_fix_when_nvcc_is_missing(tmp_path):
    proc = subprocess.run(["bash", str(kernel.BUILD_SCRIPT)],
                          env={**os.environ, "MVLIB_BUILD": str(tmp_path), "NVCC": str(tmp_path / "nvcc")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "set NVCC" in proc.stderr
    assert not (tmp_path / "silu_plugin" / kernel.KERNEL_LIB).exists()


def test_swap_replaces_every_silu_module(xxs):
    _, model = xxs
    net = copy.deepcopy(model)
    n_before = sum(type(m).__name__ == "SiLU" for m in net.modules())
    assert kernel.swap_silu(net) == n_before > 0
    assert not any(type(m).__name__ == "SiLU" for m in net.modules())
    assert sum(isinstance(m, kernel.MvSiLU) for m in net.modules()) == n_before
    with pytest.raises(ValueError, match="CUDA tensors"):
        net(__import__("torch").rand(1, 3, 64, 64))  # on the CPU the stand-in says where it runs


def test_plugin_id_is_read_from_the_one_header():
    pid = silu_rewrite.plugin_id()
    text = (paths.PLUGIN_SRC / "silu_plugin.cpp").read_text()
    assert '#include "silu_plugin_id.h"' in text
    assert f'"{pid.name}"' not in text and f'"{pid.namespace}"' not in text  # not repeated in the plugin


# --- the plugin against TensorRT's headers ------------------------------------------------------------
def _header_folders() -> list[str]:
    """TRT_INCLUDE (os.pathsep-separated), else every release in ../shared/tensorrt-include beside the checkout."""
    if TRT_INCLUDES:
        return TRT_INCLUDES
    return sorted(str(p) for p in (paths.ROOT.parent / "shared" / "tensorrt-include").glob("*/include"))


HEADERS = _header_folders()
HAS_BUILDER, BUILDER = flavours.builder_status()


@pytest.fixture(scope="module", params=HEADERS or [None], ids=lambda p: Path(p).parent.name if p else "none")
def plugin_build(request, tmp_path_factory):
    """The plugin built against one TensorRT release's include/ folder."""
    if request.param is None:
        pytest.skip("no TensorRT headers: set TRT_INCLUDE to TensorRT's include/ folder(s) to compile the plugin")
    if NVCC is None:
        pytest.skip("nvcc not found")
    root = tmp_path_factory.mktemp("plugin_build")
    info = kernel.build(trt_include=request.param, build_root=root, match_runtime=False)
    return root, info


@needs_nvcc
@pytest.mark.parametrize("source", ["silu_kernel.cu", "silu_plugin.cpp"])
def test_a_warning_fails_the_build_and_keeps_the_last_good_one(tmp_path, source):
    """Every warning is an error, in the kernel and in the plugin: a compile, not a grep of build.sh's flags."""
    import shutil
    project = tmp_path / "project"
    shutil.copytree(paths.PLUGIN_SRC, project / "silu_plugin")
    headers = {"TRT_INCLUDE": HEADERS[-1]} if HEADERS else {}
    if source == "silu_plugin.cpp" and not headers:
        pytest.skip("no TensorRT headers: the plugin is not compiled here")
    run = lambda: subprocess.run(["bash", str(project / "silu_plugin" / "build.sh")],  # noqa: E731
                                 env={**os.environ, **headers, "MVLIB_BUILD": str(tmp_path / "build")},
                                 capture_output=True, text=True, timeout=600)
    assert run().returncode == 0  # the sources as they are: no warning
    lib = tmp_path / "build" / "silu_plugin" / kernel.KERNEL_LIB
    before = lib.read_bytes()
    with open(project / "silu_plugin" / source, "a") as f:
        f.write("\nstatic int mv_unused_for_the_test() { int never_used = 1; return 0; }\n")
    proc = run()
    assert proc.returncode != 0 and "never_used" in proc.stderr
    assert lib.read_bytes() == before  # the failed build replaced nothing


def test_plugin_compiles_with_warnings_as_errors(plugin_build):
    root, info = plugin_build
    assert info["plugin"] is True and info["tensorrt_headers_version"]
    major, minor, _ = plugin_libs.headers_version(root / "silu_plugin" / kernel.PLUGIN_LIB_DYNAMIC)
    assert f"{major}.{minor}" == ".".join(info["tensorrt_headers_version"].split(".")[:2])  # the library says it too
    assert info["tensorrt_headers_major"] == major


def test_plugin_libraries_export_the_entry_points(plugin_build):
    root, _ = plugin_build
    out = root / "silu_plugin"
    for name in (kernel.PLUGIN_LIB, kernel.PLUGIN_LIB_DYNAMIC):
        exported = kernel.exported_symbols(out / name) - {"_init", "_fini"}
        assert exported == set(kernel.KERNEL_SYMBOLS) | set(kernel.PLUGIN_ENTRY_POINTS), name
    # Static registration calls TensorRT's getPluginRegistry at load; the loadLibrary copy must not.
    assert "getPluginRegistry" in kernel.undefined_symbols(out / kernel.PLUGIN_LIB)
    assert "getPluginRegistry" not in kernel.undefined_symbols(out / kernel.PLUGIN_LIB_DYNAMIC)


def test_plugin_interface_check_passes(plugin_build):
    root, _ = plugin_build
    table = plugin.plugin_interface_check(root)
    assert (table["status"] == "ok").sum() >= 30
    assert not (table["status"] == "FAIL").any()
    checks = " ".join(table["check"])
    assert "silu_plugin_id.h" in checks  # the creator's name, version and namespace are the header's
    assert "input FP16 linear supported" in checks and "input INT8 refused" in checks


@needs_nvcc
def test_build_script_finds_headers_of_the_runtimes_major_without_trt_include(tmp_path):
    """No TRT_INCLUDE: build.sh takes a system install, else ../shared/tensorrt-include of the major asked for."""
    majors = {Path(h).parent.name.split(".")[0] for h in HEADERS}
    if TRT_INCLUDES or not majors:
        pytest.skip("needs ../shared/tensorrt-include beside the checkout and TRT_INCLUDE unset")
    base = {k: v for k, v in os.environ.items() if k not in ("TRT_INCLUDE", "TRT_ROOT")}
    for major in sorted(majors):
        proc = subprocess.run(["bash", str(kernel.BUILD_SCRIPT)], capture_output=True, text=True, timeout=600,
                              env={**base, "MVLIB_BUILD": str(tmp_path / major), "TRT_MAJOR": major})
        assert proc.returncode == 0, proc.stderr
        info = kernel.build_record(tmp_path / major)
        assert info["plugin"] and info["tensorrt_headers_major"] == int(major), info


@needs_nvcc
def test_build_script_refuses_headers_of_another_major_than_the_runtime(tmp_path):
    h10 = [h for h in HEADERS if Path(h).parent.name.startswith("10.")]
    if not h10:
        pytest.skip("no TensorRT 10 headers here")
    proc = subprocess.run(["bash", str(kernel.BUILD_SCRIPT)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MVLIB_BUILD": str(tmp_path), "TRT_INCLUDE": h10[0], "TRT_MAJOR": "11"})
    assert proc.returncode == 2 and "TRT_INCLUDE" in proc.stderr and "11" in proc.stderr


# --- the plugin inside a real TensorRT registry (TensorRT-RTX here) --------------------------------------
def _in_child(code: str, fl, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run Python code in a fresh process with the flavour's library path (each way of loading needs its own)."""
    return subprocess.run([sys.executable, "-c", code], env=plugin_libs.library_env(fl), capture_output=True, text=True,
                          timeout=timeout)


def _abi_build(plugin_build, fl):
    """The build of this parametrization, or a skip when its headers are of another major than the runtime's."""
    root, info = plugin_build
    if info["tensorrt_headers_major"] != fl.abi_major:
        pytest.skip(f"headers {info['tensorrt_headers_version']} are not {fl.label}'s ABI "
                    "(the mismatch test covers them)")
    return root / "silu_plugin"


FIND = """
import ctypes, sys
import {mod} as trt
registry = trt.get_plugin_registry()
{load}
creator = registry.get_creator("MvSiLU", "1", "mvlib")
assert creator is not None, "creator not found by name, version and namespace"
assert (creator.name, creator.plugin_version, creator.plugin_namespace) == ("MvSiLU", "1", "mvlib")
assert registry.get_creator("MvSiLU", "1", "") is None, "registered under the empty namespace too"
print("found")
"""


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
@pytest.mark.parametrize("way", ["load_library", "static"])
def test_registry_finds_the_creator_by_name_version_and_namespace(plugin_build, way):
    fl = flavours.select()
    out = _abi_build(plugin_build, fl)
    load = (f"assert registry.load_library({str(out / kernel.PLUGIN_LIB_DYNAMIC)!r}) is not None"
            if way == "load_library"
            else f"ctypes.CDLL({str(out / kernel.PLUGIN_LIB)!r})  # registers itself when loaded")
    proc = _in_child(FIND.format(mod=fl.name, load=load), fl)
    assert proc.returncode == 0 and "found" in proc.stdout, proc.stderr[-3000:]


PARSE = """
import ctypes
from mvlib.tensorrt import flavours
from mvlib.tensorrt import plugins as plugin_libs
fl = flavours.select()
mod = fl.module()
{load}
logger = mod.Logger(mod.Logger.WARNING)
network = mod.Builder(logger).create_network(1 << int(mod.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
parser = mod.OnnxParser(network, logger)
assert parser.parse_from_file({onnx!r}), [str(parser.get_error(i)) for i in range(parser.num_errors)]
print("plugin layers", sum(network.get_layer(i).type.name == "PLUGIN_V3" for i in range(network.num_layers)))
"""


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
@pytest.mark.parametrize("way", ["load_library", "static"])
def test_onnx_parser_maps_every_plugin_node_to_our_creator(plugin_build, xxs, tmp_path, way):
    """The parser finds the creator with each way of loading; the project supplies the library name it dlopens."""
    fl = flavours.select()
    out = _abi_build(plugin_build, fl)
    dst = tmp_path / "model.silu.onnx"
    nodes = silu_rewrite.rewrite(xxs[0].onnx, dst).plugin_nodes
    load = (f"plugin_libs.load_plugins(fl, [{str(out / kernel.PLUGIN_LIB_DYNAMIC)!r}])" if way == "load_library"
            else f"ctypes.CDLL({str(out / kernel.PLUGIN_LIB)!r})")
    proc = _in_child(PARSE.format(load=load, onnx=str(dst)), fl)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"plugin layers {nodes}" in proc.stdout and nodes > 0


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
def test_a_plugin_of_another_major_is_refused_before_tensorrt_sees_it(plugin_build):
    root, info = plugin_build
    fl = flavours.select()
    if info["tensorrt_headers_major"] == fl.abi_major:
        pytest.skip("these headers match the runtime")
    lib = root / "silu_plugin" / kernel.PLUGIN_LIB_DYNAMIC
    with pytest.raises(RuntimeError, match=rf"TensorRT {fl.abi_major}\.x.*TRT_INCLUDE"):
        plugin_libs.check_abi(lib, fl)
    with pytest.raises(RuntimeError, match="TRT_INCLUDE"):
        plugin_libs.load_plugins(fl, [lib])  # stops before the registry (a crash otherwise)


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
def test_plugin_engine_has_one_plugin_layer_per_node(plugin_build, xxs, tmp_path, monkeypatch):
    fl = flavours.select()
    out = _abi_build(plugin_build, fl)
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    dst = tmp_path / "model.silu.onnx"
    nodes = silu_rewrite.rewrite(xxs[0].onnx, dst).plugin_nodes
    spec = engines_table.EngineSpec("plugin_fp32", dst, (out / kernel.PLUGIN_LIB_DYNAMIC,))
    table = engines_table.build_all("05_silu_plugin", [spec], shapes.Profile(1, 2, 4), workspace_gb=1)
    engines_table.require_built(table)
    row = table.iloc[0]
    assert row.plugin_layers == row.plugin_nodes_in_onnx == nodes
    assert engines_table.plugin_layer_check(table)["matches"].all()
    assert cache.has_plan_header(row.path, fl.name) and b"MvSiLU" in Path(row.path).read_bytes()
    # The unversioned library the RTX parser dlopens is the project's own link, under the build folder.
    linked = plugin_libs.unversioned_dir(fl)
    if fl.rtx:
        assert linked.is_relative_to(paths.BUILD) and (linked / "libtensorrt_rtx.so").resolve().is_file()


def test_plugin_layer_check_fails_on_a_missing_plugin_layer():
    table = pd.DataFrame([{"engine": "plugin_fp32", "status": "built",
                           "plugin_nodes_in_onnx": 34, "plugin_layers": 33}])
    with pytest.raises(AssertionError, match="plugin layers differ"):
        engines_table.plugin_layer_check(table)


# --- the notebook --------------------------------------------------------------------------------------
def _declared_outputs(nb_path: Path) -> str:
    """The first markdown cell of a notebook (it lists the files the notebook creates)."""
    nb = json.loads(nb_path.read_text())
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "markdown")["source"])


def _stage_calls(nb_path: Path) -> dict[str, list[str]]:
    """Each `run.stage("<name>", tier, fn, *args)` of a notebook's code: name -> [fn, *args] as source text."""
    import ast
    nb = json.loads(nb_path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and
                     not "".join(c["source"]).startswith("%%"))
    calls = {}
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "run.stage":
            calls[node.args[0].value] = [ast.unparse(a) for a in node.args[2:]]
    return calls


def test_notebook_05_builds_the_plugin_fp8_engine_for_fp8_target_and_records_every_plugin_engine_once():
    """The plugin-FP8 engine gets the notebook's own fp8_target (not trt_target), in fp8's argument order, and is
    recorded with the other plugin engines in one call (a second record would replace the first's rows)."""
    import inspect

    from mvlib import fp8
    nb_path = paths.NOTEBOOKS / "05_silu_plugin.ipynb"
    calls = _stage_calls(nb_path)
    fn, *args = calls["plugin_fp8_engine"]
    assert fn == "fp8.build_plugin_engines" and args == list(inspect.signature(fp8.build_plugin_engines).parameters)
    assert calls["rewrite_fp8"][0] == "fp8.rewrite_plugin"
    assert "fp8_target" in run_mod.declared_parameters("05_silu_plugin")
    assert nb_path.read_text().count("trt_table.record(run,") == 1
    assert "engines8" not in calls["plugin_accuracy"]  # the FP8 engine runs only on an FP8 GPU it targets


def test_notebook_05_creates_what_it_lists(smoke_run):
    created = {p.name for sub in ("results", "figures") for p in (smoke_run / sub).glob("05_*")}
    listed = _declared_outputs(paths.NOTEBOOKS / "05_silu_plugin.ipynb")
    for name in created:
        assert name in listed, f"{name} is created but not listed in the first markdown cell"
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    stages = {k.split("/", 1)[1]: v for k, v in manifest["stages"].items() if k.startswith("05_silu_plugin/")}
    gpu = env.cuda_status()[0]
    expected = {"05_plugin_onnx.csv"}
    rewritten = pd.read_csv(smoke_run / "results" / "05_plugin_onnx.csv").set_index("precision")
    assert stages["rewrite_fp8"]["status"] == "ok" and rewritten.loc["fp8", "rewritten"] == "model.fp8.silu.onnx"
    if NVCC is not None:
        expected.add("05_build.csv")
        assert stages["build"]["status"] == "ok"
    if gpu:
        expected |= {"05_kernel_check.csv", "05_kernel_bandwidth.csv", "05_kernel_bandwidth.png",
                     "05_model_swap.csv", "05_model_swap_accuracy.csv"}
    else:
        for name in ("kernel_check", "bandwidth", "swap_accuracy", "swap_throughput"):
            assert stages[name]["status"] == "skipped" and "GPU" in stages[name]["reason"]
    if NVCC is not None and HAS_BUILDER:  # built wherever a builder is: CI's TensorRT-RTX builds them on the CPU
        for name in ("plugin_interface", "plugin_engines"):
            assert stages[name]["status"] == "ok", stages[name]
        expected |= {"05_plugin_interface.csv", "05_plugin_network_layers.csv"}
        layers = pd.read_csv(smoke_run / "results" / "05_plugin_network_layers.csv")
        # the plugin-FP8 engine is checked with them, unless this flavour cannot build FP8 here (full TensorRT
        # builds only for this machine's GPU)
        fp8_engine = stages["plugin_fp8_engine"]
        assert fp8_engine["status"] == "ok" or fp8_engine.get("no_builder"), fp8_engine
        fp8 = ["plugin_fp8"] if fp8_engine["status"] == "ok" else []
        assert sorted(layers["engine"]) == ["plugin_fp16", "plugin_fp32", *fp8, "plugin_int8"]
        assert layers["matches"].all()
    for name in ("plugin_accuracy", "plugin_layers"):
        if tiers.detect() != "trt":
            assert stages[name]["status"] == "skipped" and stages[name]["reason"] == tiers.missing_for("trt")
    assert expected <= created, f"missing: {expected - created}"
    assert created - expected <= {"05_plugin_interface.csv", "05_plugin_network_layers.csv", "05_plugin_accuracy.csv",
                                  "05_plugin_layers.csv"}, f"unexpected: {created - expected}"
