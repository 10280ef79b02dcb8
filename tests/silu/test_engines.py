"""mvlib.silu.engines: each precision's plugin model (rewrite and CPU proof), the plugin in TensorRT's registry and
parser, plugin engines built with the ABI check recorded and run by the build child, plugin layers counted,
the timed backend, and notebook 05's wiring.

Engines are built for real with the installed TensorRT-RTX builder, which needs no GPU.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import tensorrt_models as models

from mvlib import env, io, paths, precisions, stages, tiers
from mvlib.export import Exported
from mvlib.silu import build, engines
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cache, flavours, shapes
from mvlib.tensorrt import plugins as plugin_libs
from mvlib.tensorrt import table as engines_table

NVCC = env.nvcc_path()
HAS_BUILDER, BUILDER = flavours.builder_status()
HEADERS = {p.parent.name.split(".")[0]: str(p)
           for p in sorted((paths.ROOT.parent / "shared" / "tensorrt-include").glob("*/include"))}
needs_builder = pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")


def _exported(tmp_path, xxs) -> Exported:
    """An Exported in a temporary folder holding only the FP32 export."""
    (tmp_path / "model.onnx").write_bytes(xxs[0].onnx.read_bytes())
    return Exported(tmp_path, tmp_path / "model.onnx", {"tag": "t"}, {})


# --- the plugin models ------------------------------------------------------------------------------------
def test_each_precision_named_gets_its_plugin_model_or_a_row_saying_which_notebook_makes_its_source(tmp_path, xxs,
                                                                                                   unknown_precision):
    exp = _exported(tmp_path, xxs)
    table = engines.rewrite_models(exp, ["fp32", "int8", "fp8"], 256, seed=5).set_index("precision")
    fp32 = table.loc["fp32"]
    assert fp32.status == "ok" and fp32.rewritten == "model.silu.onnx" and fp32.plugin_nodes == 34
    assert fp32.pairs_left == 0 and fp32.cpu_max_abs_vs_source <= fp32.cpu_atol + fp32.cpu_rtol * 1.0
    assert (fp32.cpu_atol, fp32.cpu_rtol) == precisions.get("fp32").rewrite_tolerance
    for name in ("int8", "fp8"):
        prec = precisions.get(name)
        assert table.loc[name, "status"] == f"skipped: {prec.artifact} not found (notebook 04_int8 makes it)"
        assert table.loc[name, "rewritten"] == prec.plugin_artifact
    with pytest.raises(ValueError, match="choose one of"):
        engines.rewrite_models(exp, [unknown_precision], 256)


def test_a_precision_without_a_plugin_model_gets_a_row_saying_so(tmp_path, xxs, monkeypatch):
    import dataclasses
    bare = dataclasses.replace(precisions.get("int8"), plugin_artifact=None, rewrite_tolerance=None)
    monkeypatch.setitem(precisions.TABLE, "int8", bare)
    row = engines.rewrite_model(_exported(tmp_path, xxs), "int8", 256)
    assert row["status"] == "skipped: INT8 has no plugin model (plugin_artifact in mvlib/precisions.py)"


def test_a_rewritten_graph_that_differs_from_its_source_fails_the_stage(tmp_path, xxs, monkeypatch):
    exp = _exported(tmp_path, xxs)
    checked = []

    def differs(src, dst, precision, img_size, **kw):  # our own seam: the CPU proof says no
        checked.append(precision)
        return pd.DataFrame([{"max_abs": 0.5, "atol": 1e-6, "rtol": 2e-6}]), False
    monkeypatch.setattr(engines.onnx_rewrite, "verify_cpu", differs)
    with pytest.raises(AssertionError, match=r"differ from their sources on the CPU: \['fp32'\]"):
        engines.rewrite_models(exp, ["fp32"], 256)
    assert checked == ["fp32"]  # the precision is passed down, not guessed from the graph


def test_fp8_engines_are_built_in_a_call_of_their_own():
    with pytest.raises(ValueError, match="fp8_target.*names=\\('fp8',\\)"):
        engines.build_engines(None, ["fp32", "fp8"], shapes.Profile(1, 2, 4))


def test_a_missing_fp8_plugin_model_skips_its_engine_naming_the_file(tmp_path, xxs, monkeypatch):
    monkeypatch.setattr(build, "require_plugin", lambda **kw: {"plugin": True})
    monkeypatch.setattr(build, "plugin_library", lambda: tmp_path / "libmv_silu_plugin_dynamic.so")
    with pytest.raises(StageSkipped, match=r"model.fp8.silu.onnx not found.*model.fp8.onnx \(notebook 04_int8") as err:
        engines.engine_specs(_exported(tmp_path, xxs), ["fp8"])
    assert err.value.needs == ("model.fp8.onnx",)  # what a run without notebook 04 lacks
    started = engines.start_engines(_exported(tmp_path, xxs), ["fp8"], shapes.Profile(1, 2, 4))
    with pytest.raises(StageSkipped, match=r"model.fp8.silu.onnx not found") as err:  # in the stage awaiting it
        started.table()
    assert err.value.needs == ("model.fp8.onnx",) and not started.futures


def test_the_timed_backend_skips_without_the_plugin_library(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PLUGIN_BUILD", tmp_path / "silu_plugin")
    with pytest.raises(StageSkipped, match="SiLU plugin library is not built .notebook 05_silu_plugin makes it") as err:
        engines.timed(None, tmp_path / "model.silu.onnx", "fp32", shapes.Profile(1, 2, 4))
    assert err.value.needs == (build.PLUGIN_LIB_DYNAMIC,)


# --- the plugin layers ------------------------------------------------------------------------------------
def _engine_dir(tmp_path: Path, name: str, onnx_path: Path, inspector_layers: list[dict]) -> Path:
    """A cached engine folder as the study writes it, with inspector layer information (as on a GPU)."""
    d = tmp_path / name
    d.mkdir()
    (d / cache.PLAN).write_bytes(b"vtrt" + bytes(64))
    (d / cache.LAYERS).write_text(json.dumps({"inspected": True, "Layers": inspector_layers}))
    (d / cache.BUILD_INFO).write_text(json.dumps({"onnx": str(onnx_path), "plan_sha256": io.sha256(d / cache.PLAN),
                                                  "plan_bytes": 68, "flavour": "tensorrt_rtx",
                                                  "flavour_version": "1.7.1.116", "profile": [1, 2, 4]}))
    return d


def test_plugin_layers_are_counted_by_type_or_exact_name_and_every_engine_counts(tmp_path):
    """The reformat TensorRT puts before a linear-format plugin is named after it ("... to <plugin>") and is not
    a plugin layer; an engine in which no plugin layer is found fails instead of passing unseen."""
    names = ["/stages/stages.0/act/MvSiLU", "/stages/stages.1/act/MvSiLU"]
    onnx_path = models.plugin_graph(tmp_path / "model.fp16.silu.onnx", names)
    fp16 = [{"Name": f"Reformatting CopyNode for Input Tensor 0 to {names[0]}", "LayerType": "Reformat"},
            {"Name": names[0], "LayerType": "PluginV3"},
            {"Name": f"Reformatting CopyNode for Input Tensor 0 to {names[1]}", "LayerType": "Reformat"},
            {"Name": names[1], "LayerType": "PluginV3"}]
    good = _engine_dir(tmp_path, "fp16", onnx_path, fp16)
    built = pd.DataFrame([{"engine": "plugin_fp16", "path": str(good / cache.PLAN), "plugin_nodes_in_onnx": 2}])
    counted = engines.count_plugin_layers(built)
    assert list(counted["name"]) == names and set(counted["engine"]) == {"plugin_fp16"}
    fused = _engine_dir(tmp_path, "fused", onnx_path, [{"Name": "{ForeignNode[/stem...]}", "LayerType": "Myelin"}])
    both = pd.concat([built, pd.DataFrame([{"engine": "plugin_int8", "path": str(fused / cache.PLAN),
                                            "plugin_nodes_in_onnx": 2}])])
    with pytest.raises(AssertionError, match="plugin_int8"):
        engines.count_plugin_layers(both)
    assert engines.plugin_node_names(onnx_path) == set(names) and engines.onnx_rewrite.plugin_id().name == "MvSiLU"


def test_rtx_plugin_layers_are_counted_by_their_onnx_layer_metadata(tmp_path):
    """TensorRT-RTX 1.7 names a plugin layer '<node>_myl0_<k>', type custom_layer (its builder's DETAILED listing
    of the project's plugin); the metadata '[ONNX Layer: <node>]' names the node. A fused layer that merely covers
    a plugin node among others, and a reformat carrying the node's metadata, are not plugin layers."""
    names = ["/stem/bn/act/MvSiLU", "/final_conv/bn/act/MvSiLU"]
    onnx_path = models.plugin_graph(tmp_path / "model.silu.onnx", names)
    rtx = [{"Name": f"{names[0]}_myl0_4", "LayerType": "custom_layer", "Metadata": f"[ONNX Layer: {names[0]}]"},
           {"Name": "/stem/conv/Conv_myl0_3", "LayerType": "correlation", "Metadata": "[ONNX Layer: /stem/conv/Conv]"},
           {"Name": f"Reformatting CopyNode for Input Tensor 0 to {names[1]}_myl0_242", "LayerType": "Reformat",
            "Metadata": f"[ONNX Layer: {names[1]}]"},
           {"Name": f"{names[1]}_myl0_242", "LayerType": "custom_layer", "Metadata": f"[ONNX Layer: {names[1]}]"},
           {"Name": "fused", "LayerType": "kgen", "Metadata": f"[ONNX Layer: /a]\x1f[ONNX Layer: {names[0]}]"}]
    d = _engine_dir(tmp_path, "rtx", onnx_path, rtx)
    built = pd.DataFrame([{"engine": "plugin_fp32", "path": str(d / cache.PLAN), "plugin_nodes_in_onnx": 2}])
    counted = engines.count_plugin_layers(built)
    assert list(counted["name"]) == [f"{names[0]}_myl0_4", f"{names[1]}_myl0_242"]


# --- the plugin inside a real TensorRT registry (TensorRT-RTX here) --------------------------------------
def _plugin_of_major(tmp_path_factory, major: str) -> Path:
    """The dynamic plugin library built against TensorRT `major`.x headers, for one architecture."""
    if NVCC is None or major not in HEADERS:
        pytest.skip(f"needs nvcc and TensorRT {major}.x headers (../shared/tensorrt-include)")
    root = tmp_path_factory.mktemp(f"plugin{major}")
    run_env = {**os.environ, **build.build_env()}  # TRT_LIB: the static copy links against the runtime
    run_env.pop("TRT_MAJOR", None)  # any major: the ABI check's test builds another one on purpose
    proc = subprocess.run(["bash", str(build.BUILD_SCRIPT)], capture_output=True, text=True, timeout=900,
                          env={**run_env, "MVLIB_BUILD": str(root), "TRT_INCLUDE": HEADERS[major],
                               "SILU_ARCHS": "-gencode=arch=compute_86,code=sm_86"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return build.build_dir(root)


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """The plugin built against headers of the installed flavour's ABI."""
    if not HAS_BUILDER:
        pytest.skip(f"no TensorRT builder: {BUILDER}")
    return _plugin_of_major(tmp_path_factory, str(flavours.select().abi_major))


def _in_child(code: str, fl, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run Python code in a fresh process with the flavour's library path (each way of loading needs its own)."""
    return subprocess.run([sys.executable, "-c", code], env=plugin_libs.library_env(fl), capture_output=True, text=True,
                          timeout=timeout)


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


@needs_builder
@pytest.mark.parametrize("way", ["load_library", "static"])
def test_registry_finds_the_creator_by_name_version_and_namespace(plugin_dir, way):
    fl = flavours.select()
    load = (f"assert registry.load_library({str(plugin_dir / build.PLUGIN_LIB_DYNAMIC)!r}) is not None"
            if way == "load_library"
            else f"ctypes.CDLL({str(plugin_dir / build.PLUGIN_LIB)!r})  # registers itself when loaded")
    proc = _in_child(FIND.format(mod=fl.name, load=load), fl)
    assert proc.returncode == 0 and "found" in proc.stdout, proc.stderr[-3000:]


PARSE = """
import ctypes
from mvlib.silu import build
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


@pytest.fixture(scope="module")
def silu_model(xxs, tmp_path_factory):
    """The exported xxs model rewritten: (path, plugin nodes)."""
    dst = tmp_path_factory.mktemp("silu_model") / "model.silu.onnx"
    return dst, engines.onnx_rewrite.rewrite(xxs[0].onnx, dst).plugin_nodes


@needs_builder
@pytest.mark.parametrize("way", ["load_library", "static"])
def test_onnx_parser_maps_every_plugin_node_to_our_creator(plugin_dir, silu_model, way):
    """The parser finds the creator with each way of loading; the project supplies the library name it dlopens."""
    fl = flavours.select()
    dst, nodes = silu_model
    load = (f"plugin_libs.load_plugins(fl, [{str(plugin_dir / build.PLUGIN_LIB_DYNAMIC)!r}], build.check_abi)"
            if way == "load_library" else f"ctypes.CDLL({str(plugin_dir / build.PLUGIN_LIB)!r})")
    proc = _in_child(PARSE.format(load=load, onnx=str(dst)), fl)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"plugin layers {nodes}" in proc.stdout and nodes > 0


@needs_builder
def test_plugin_engine_has_one_plugin_layer_per_node_and_records_its_check(plugin_dir, silu_model, tmp_path,
                                                                           monkeypatch):
    fl = flavours.select()
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    dst, nodes = silu_model
    spec = engines_table.EngineSpec("plugin_fp32", dst, (plugin_dir / build.PLUGIN_LIB_DYNAMIC,),
                                    check=build.check_abi)
    table = engines_table.build_all("05_silu_plugin", [spec], shapes.Profile(1, 2, 4), workspace_gb=1)
    row = engines_table.require_built(table).iloc[0]
    assert row.plugin_layers == row.plugin_nodes_in_onnx == nodes
    # The plugin layers as the engine's own layers name them: the builder's DETAILED listing (what the engine
    # inspector reports where it runs, same fields) put where layer_summary reads the inspector's, then counted.
    listing = cache.load(row.path).layers()["builder_layers"]
    assert listing and all(layer.get("Metadata") is not None for layer in listing)
    inspected = tmp_path / "inspected"
    inspected.mkdir()
    for f in (cache.PLAN, cache.BUILD_INFO):
        (inspected / f).write_bytes((Path(row.path).parent / f).read_bytes())
    (inspected / cache.LAYERS).write_text(json.dumps({"inspected": True, "Layers": listing}))
    counted = engines.count_plugin_layers(pd.DataFrame([{"engine": row.engine, "path": str(inspected / cache.PLAN),
                                                         "plugin_nodes_in_onnx": row.plugin_nodes_in_onnx}]))
    assert len(counted) == nodes and set(counted["metadata"]) == {f"[ONNX Layer: {n}]"
                                                                  for n in engines.plugin_node_names(dst)}
    assert cache.has_plan_header(row.path, fl.name) and b"MvSiLU" in Path(row.path).read_bytes()
    # every later load of this engine's plugins (Session, inspection) runs the check its build recorded
    assert cache.load(row.path).info["plugin_check"] == "mvlib.silu.build:check_abi"
    # The unversioned library the RTX parser dlopens is the project's own link, under the build folder.
    linked = plugin_libs.unversioned_dir(fl)
    if fl.rtx:
        assert linked.is_relative_to(paths.BUILD) and (linked / "libtensorrt_rtx.so").resolve().is_file()
    # the timed backend reuses that very engine, and here says why it does not run it
    monkeypatch.setattr(paths, "PLUGIN_BUILD", plugin_dir)
    if not fl.runs_here()[0]:
        with pytest.raises(StageSkipped, match="built, not run"):
            engines.timed(None, dst, "fp32", shapes.Profile(1, 2, 4), workspace_gb=1)


@needs_builder
def test_the_build_child_runs_the_callers_check_on_a_plugin_of_another_major(tmp_path_factory, silu_model, tmp_path,
                                                                              monkeypatch):
    """A plugin compiled against other headers than the runtime's: the build fails with the ABI check's words,
    from the child process (the check travels there by name), instead of crashing in the registry."""
    fl = flavours.select()
    other = next((m for m in sorted(HEADERS) if m != str(fl.abi_major)), None)
    if other is None:
        pytest.skip("no TensorRT headers of another major than the runtime's here")
    lib = _plugin_of_major(tmp_path_factory, other) / build.PLUGIN_LIB_DYNAMIC
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    spec = engines_table.EngineSpec("plugin_fp32", silu_model[0], (lib,), check=build.check_abi)
    row = engines_table.build_all("05_silu_plugin", [spec], shapes.Profile(1, 2, 4), workspace_gb=1).iloc[0]
    assert row.status == "failed"
    assert f"compiled against TensorRT {other}." in row.messages and "TRT_INCLUDE" in row.messages, row.messages


# --- notebook 05 ---------------------------------------------------------------------------------------------
def _code(nb_path: Path) -> ast.Module:
    """A notebook's code cells (not the %%bash ones), parsed."""
    nb = json.loads(nb_path.read_text())
    return ast.parse("\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and
                               not "".join(c["source"]).startswith("%%")))


def _stage_calls(nb_path: Path) -> dict[str, list[str]]:
    """Each `run.stage("<name>", tier, fn, *args)` of a notebook's code: name -> [fn, *args] as source text."""
    calls = {}
    for node in ast.walk(_code(nb_path)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "run.stage":
            calls[node.args[0].value] = [ast.unparse(a) for a in node.args[2:]]
    return calls


def _assigned_calls(nb_path: Path) -> dict[str, list[str]]:
    """Each `name = fn(*args)` of a notebook's code: name -> [fn, *args] as source text."""
    return {node.targets[0].id: [ast.unparse(node.value.func), *map(ast.unparse, node.value.args)]
            for node in ast.walk(_code(nb_path)) if isinstance(node, ast.Assign) and
            isinstance(node.value, ast.Call) and isinstance(node.targets[0], ast.Name)}


def test_notebook_05_passes_each_precision_down_and_builds_fp8_for_fp8_target():
    """The plugin models and engines are named by precision; the plugin-FP8 engine gets fp8_target (not
    trt_target) in start_engines' argument order, its builds start before the first stage awaits any, and it is
    recorded with the other plugin engines in one call."""
    import inspect
    nb_path = paths.NOTEBOOKS / "05_silu_plugin.ipynb"
    calls, started = _stage_calls(nb_path), _assigned_calls(nb_path)
    assert calls["rewrite"][:3] == ["silu_engines.rewrite_models", "exported", "precisions.EVERY_GPU"]
    assert calls["rewrite_fp8"][:3] == ["silu_engines.rewrite_models", "exported", "['fp8']"]
    assert calls["plugin_engines"] == ["builds.table"] and calls["plugin_fp8_engine"] == ["builds8.table"]
    params = list(inspect.signature(engines.start_engines).parameters)
    fn, *args = started["builds"]
    assert fn == "silu_engines.start_engines" and args[:2] == ["exported", "precisions.EVERY_GPU"]
    assert args[params.index("target")] == "trt_target"
    fn, *args = started["builds8"]
    assert fn == "silu_engines.start_engines" and args[1] == "['fp8']"
    assert args[params.index("target")] == "fp8_target"
    code = ast.unparse(_code(nb_path))
    assert code.index("builds8 = ") < code.index("engines = run.stage('plugin_engines'")  # side by side
    assert "fp8_target" in stages.parameters("05_silu_plugin")
    assert "engines8" not in calls["plugin_accuracy"]  # the FP8 engine runs only on an FP8 GPU it targets


def test_notebook_05_smoke_run_stages(smoke_run):  # the files it creates: test_notebooks
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    stages = {k.split("/", 1)[1]: v for k, v in manifest["stages"].items() if k.startswith("05_silu_plugin/")}
    rewritten = pd.read_csv(smoke_run / "results" / "05_plugin_onnx.csv").set_index("precision")
    assert stages["rewrite_fp8"]["status"] == "ok" and rewritten.loc["fp8", "rewritten"] == "model.fp8.silu.onnx"
    assert list(rewritten.index) == ["fp32", "fp16", "int8", "fp8"] and (rewritten["status"] == "ok").all()
    if NVCC is not None:
        assert stages["build"]["status"] == "ok"
    if not env.cuda_status()[0]:
        for name in ("kernel_check", "bandwidth", "swap_accuracy", "swap_throughput"):
            assert stages[name]["status"] == "skipped" and "GPU" in stages[name]["reason"]
    if NVCC is not None and HAS_BUILDER:  # built wherever a builder is: CI's TensorRT-RTX builds them on the CPU
        for name in ("plugin_interface", "plugin_engines"):
            assert stages[name]["status"] == "ok", stages[name]
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
