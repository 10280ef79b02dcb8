"""The SiLU plugin in TensorRT: each precision's plugin model (rewritten and proven on the CPU), its engine, the
engine's plugin layers and accuracy, and a plugin engine as a timed backend. Serves notebooks 05 (stages
`rewrite`, `rewrite_fp8`, `onnxrt_reference`, `plugin_engines`, `plugin_fp8_engine`, `plugin_accuracy`,
`plugin_layers`) and 06 (the plugin engines timed); tests/silu/test_engines.py.

The plugin library is built and located by mvlib.silu.build; TensorRT loads it through mvlib.tensorrt.plugins
after build.check_abi, which this module hands over with every engine.
"""
import re
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
import pandas as pd

from mvlib import accuracy, export, fp8, io, precisions, stages
from mvlib.silu import build, onnx_rewrite
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cache, layers, runner, timing
from mvlib.tensorrt import plugins as plugin_libs
from mvlib.tensorrt import table as engines_table

NOTEBOOK = stages.PLUGIN  # the notebook whose rows of the engines table these engines are


# --- the plugin models ------------------------------------------------------------------------------------
def rewrite_model(exported, precision: str, img_size: int, seed: int = 0, batch: int = 1) -> dict:
    """Rewrite one precision's ONNX file into its plugin graph and prove it on the CPU against its source; a row."""
    prec = precisions.get(precision)
    if prec.plugin_artifact is None:
        return {"precision": prec.name, "source": prec.artifact, "rewritten": None,
                "status": f"skipped: {prec.label} has no plugin model (plugin_artifact in mvlib/precisions.py)"}
    src, dst = exported.path(prec.artifact), exported.path(prec.plugin_artifact)
    row = {"precision": prec.name, "source": src.name, "rewritten": dst.name}
    if prec.notebook == stages.FP32_FP16 and not src.exists():  # made by AutoCast (FP16)
        from mvlib import autocast
        autocast.ensure_fp16(exported.onnx, seed=seed, precision=prec.name)  # notebook 03's conversion, cached
    if not src.exists():
        return {**row, "status": f"skipped: {src.name} not found ({stages.made_by(src.name)})"}
    try:
        report = onnx_rewrite.rewrite(src, dst)
    except onnx_rewrite.NoSiluPairs as why:
        return {**row, "status": f"skipped: {why}"}
    table, passed = onnx_rewrite.verify_cpu(src, dst, prec.name, img_size, batches=(batch,), seed=seed)
    return {**row, "status": "ok" if passed else "FAILED", "plugin_nodes": report.plugin_nodes,
            "pairs_left": len(onnx_rewrite.find_pairs(gs.import_onnx(onnx.load(str(dst))))),
            "cpu_max_abs_vs_source": float(table["max_abs"].max()),
            **{f"cpu_{k}": float(table[k].iloc[0]) for k in ("atol", "rtol") if k in table}}


def rewrite_models(exported, names: Sequence[str], img_size: int, seed: int = 0, batch: int = 1) -> pd.DataFrame:
    """`rewrite_model` for each precision named; AssertionError if a rewritten graph differs from its source."""
    table = pd.DataFrame([rewrite_model(exported, name, img_size, seed, batch) for name in names])
    failed = table[table["status"] == "FAILED"]
    if len(failed):
        raise AssertionError(f"rewritten graphs differ from their sources on the CPU: {failed['precision'].tolist()}")
    return table


def onnxrt_reference(exported, model=None, batches: Sequence[int] = (1, 3), seed: int | None = None) -> Path:
    """Run ONNX Runtime on the ORIGINAL model over the saved reference inputs; save its outputs (polygraphy format).

    Without notebook 01's reference inputs, `model` makes them the way notebook 01 does (export.verify).
    """
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


# --- the plugin engines -----------------------------------------------------------------------------------
def engine_specs(exported, names: Sequence[str], trt_flavour: str | None = "auto") -> list:
    """One plugin engine per precision named, from its rewritten ONNX file, with our plugin library and ABI check.

    A missing model.fp8.silu.onnx skips, needing model.fp8.onnx (notebook 04 may keep no FP8 model); a missing
    file of another precision is a row of its own in the engines table (build_all)."""
    build.require_plugin(trt_flavour=trt_flavour)
    lib = build.plugin_library()
    specs = []
    for name in names:
        prec = precisions.get(name)
        path = exported.path(prec.plugin_artifact)
        if name == "fp8" and not path.exists():
            raise StageSkipped(f"{path.name} not found: rewrite_models writes it from {prec.artifact} "
                               f"({stages.made_by(prec.artifact)})", needs=(prec.artifact,))
        specs.append(engines_table.EngineSpec(f"plugin_{name}", path, (lib,), check=build.check_abi))
    return specs


def build_engines(exported, names: Sequence[str], profile, trt_flavour: str | None = "auto", target: str = "auto",
                  workspace_gb: float = 4) -> pd.DataFrame:
    """The plugin engines' rows of the engines table (built or reused; failures with the builder's words).

    FP8 engines are built alone, for an FP8 target: `target` is then notebook 05's fp8_target, which
    fp8.build_target resolves; for the others it is trt_target."""
    return start_engines(exported, names, profile, trt_flavour, target, workspace_gb).table()


def start_engines(exported, names: Sequence[str], profile, trt_flavour: str | None = "auto", target: str = "auto",
                  workspace_gb: float = 4) -> engines_table.Builds:
    """build_engines' builds started now (engines_table.Builds), so that the FP8 one runs beside the others; their
    `table()` is build_engines' rows, and raises what stopped them (a missing file, no plugin library) inside the
    stage that awaits it."""
    if "fp8" in names and list(names) != ["fp8"]:
        raise ValueError("FP8 plugin engines have a target of their own (fp8_target): build them in a call of "
                         "their own, names=('fp8',)")
    try:
        specs = engine_specs(exported, names, trt_flavour)
    except Exception as err:  # StageSkipped included: the awaiting stage records it
        return engines_table.Builds(NOTEBOOK, [], profile, error=err)
    if list(names) == ["fp8"]:
        return fp8.start_engines(NOTEBOOK, specs, profile, trt_flavour, target, workspace_gb)
    return engines_table.Builds(NOTEBOOK, specs, profile, trt_flavour, target, workspace_gb)


def _built(engines: pd.DataFrame | None) -> pd.DataFrame:
    """The engines-table rows that were built and can run here, or StageSkipped saying why none can."""
    built = engines_table.built_rows(engines, "plugin_engines")
    runner.runnable(cache.load(built["path"].iloc[0]))
    return built


def plugin_accuracy(exported, engines: pd.DataFrame | None) -> pd.DataFrame:
    """Plugin engines against ONNX Runtime on the original model, on the same saved inputs, each judged by its
    precision's one criterion (mvlib.precisions), through the one engine loop (tensorrt.table.runners)."""
    from polygraphy.comparator import RunResults
    made = engines_table.runners(engines, plugins=(build.plugin_library(),), stage="plugin_engines")
    inputs, _ = export.load_reference(exported)
    ref_path = exported.artifact("ort_reference")
    if not ref_path.exists():
        raise FileNotFoundError(f"{ref_path} not found: run engines.onnxrt_reference(exported) first (a cpu stage)")
    ref = RunResults.load(str(ref_path))
    results = accuracy.run([trt for _, _, trt in made], inputs)
    merged = RunResults()
    for name, iters in list(ref.items()) + list(results.items()):
        merged[name] = iters
    judged = {f"trt-{r.engine}": precisions.get(r.engine.removeprefix("plugin_")).name for r, _, _ in made}
    return accuracy.table(merged, reference="onnxrt-original", judged=judged)


# --- the plugin layers ------------------------------------------------------------------------------------
PLUGIN_TYPE = re.compile(r"^(plugin|custom_layer)", re.I)  # PluginV2, PluginV3 (TensorRT); custom_layer (RTX)
REFORMAT = re.compile(r"reformat", re.I)  # the copies TensorRT puts around a plugin of another format


def plugin_layers(engines: pd.DataFrame | None) -> pd.DataFrame:
    """The plugin layers of each engine as the engine inspector reports them, against the ONNX file's plugin nodes."""
    return count_plugin_layers(_built(engines))


def plugin_node_names(onnx_path: Path | str) -> set[str]:
    """Names of the plugin nodes of an ONNX file (the parser names their layers after them): the same nodes the
    engines table counts in `plugin_nodes_in_onnx`."""
    return set(plugin_libs.plugin_nodes(onnx_path))


def is_plugin_layer(layer_table: pd.DataFrame, nodes: set[str]) -> pd.Series:
    """Which engine layers are plugin layers: a layer whose metadata names exactly one plugin node ('[ONNX Layer:
    <node>]'), else (a listing without metadata) whose type is a plugin's or whose name is a plugin node's.

    RTX names a plugin layer '<node>_myl0_<k>', type custom_layer; TensorRT names it after the node, type
    PluginV3. A reformat is never one: TensorRT names the copy it puts before a linear-format plugin
    "Reformatting CopyNode for Input Tensor 0 to <plugin layer>"."""
    named = layer_table["metadata"].fillna("").map(layers.onnx_layers) if "metadata" in layer_table \
        else pd.Series([[]] * len(layer_table), index=layer_table.index)
    by_meta = named.map(lambda found: len(found) == 1 and found[0] in nodes)
    by_kind = layer_table["type"].astype(str).str.match(PLUGIN_TYPE) | layer_table["name"].isin(nodes)
    reformat = layer_table["type"].astype(str).str.contains(REFORMAT) | \
        layer_table["name"].astype(str).str.startswith("Reformatting")
    return (by_meta.where(named.map(bool), by_kind)) & ~reformat


def count_plugin_layers(built: pd.DataFrame) -> pd.DataFrame:
    """Per built engine, its plugin layers (`is_plugin_layer`). Every engine is counted, one without any plugin
    layer too; AssertionError if an engine's count differs from its ONNX file's plugin nodes."""
    frames, counts = [], []
    for r in built.itertuples():
        layer_table = layers.layer_summary(Path(r.path).parent)
        nodes = plugin_node_names(cache.load(r.path).info["onnx"])
        found = layer_table[is_plugin_layer(layer_table, nodes)].copy()
        found.insert(0, "engine", r.engine)
        found["engine_layers"] = len(layer_table)
        found["plugin_nodes_in_onnx"] = r.plugin_nodes_in_onnx
        frames.append(found)
        counts.append({"engine": r.engine, "plugin_layers": len(found), "plugin_nodes": r.plugin_nodes_in_onnx})
    counts = pd.DataFrame(counts, columns=["engine", "plugin_layers", "plugin_nodes"])
    wrong = counts[counts["plugin_layers"] != counts["plugin_nodes"]]
    if len(counts) == 0 or len(wrong):
        raise AssertionError(f"engine plugin layers differ from the ONNX files' {onnx_rewrite.plugin_id().name} "
                             f"nodes:\n{wrong if len(counts) else 'no engine to count'}")
    return pd.concat(frames, ignore_index=True)


# --- a plugin engine timed (notebook 06) ------------------------------------------------------------------
def timed(settings, onnx_path: Path | str, precision: str, profile, trt_flavour: str | None = "auto",
          trt_target: str = "auto", workspace_gb: float = 4):
    """The plugin engine of a rewritten ONNX file as a bench backend (timing.tensorrt with our library and check)."""
    try:
        lib = build.plugin_library()
    except FileNotFoundError as err:
        raise StageSkipped(f"the SiLU plugin library is not built ({stages.made_by(build.PLUGIN_LIB_DYNAMIC)}): "
                           f"{err}", needs=(build.PLUGIN_LIB_DYNAMIC,)) from err
    return timing.tensorrt(settings, onnx_path, precision, profile, trt_flavour, trt_target, workspace_gb,
                           plugins=(lib,), check=build.check_abi, plugin_label="SiLU plugin")
