"""The SiLU plugin in TensorRT: the rewritten ONNX files, the plugin engines, their accuracy and layers.

The plugin library itself is built and located by mvlib.kernel (silu_plugin/build.sh); TensorRT loads it
through mvlib.tensorrt.plugins, which refuses a library compiled against another TensorRT major first.
"""
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
import pandas as pd

from mvlib import accuracy, env, export, io, kernel, precision, silu_rewrite
from mvlib.run import StageSkipped
from mvlib.tensorrt import cache, flavours, layers, runner
from mvlib.tensorrt import table as engines_table


# --- the built plugin ------------------------------------------------------------------------------------
class NoCompiler(StageSkipped):
    """nvcc is missing: no plugin can be compiled here (excused like a missing TensorRT builder)."""
    no_builder = True


def require_plugin(build_root: Path | str | None = None, trt_flavour: str | None = "auto") -> dict:
    """The build record of a built plugin, or a skip that says what is missing and how to get it."""
    if env.nvcc_path() is None:
        raise NoCompiler("nvcc not found: the SiLU plugin cannot be compiled on this machine "
                         "(install the CUDA toolkit)")
    info = kernel.build_record(build_root)
    if info.get("plugin"):
        return info
    has_builder, why = flavours.builder_status(trt_flavour)
    cls = StageSkipped if has_builder else flavours.NoBuilder  # with a builder here, an unbuilt plugin fails the run
    raise cls(f"the TensorRT plugin was not built: {info.get('note')}. TensorRT's pip wheels ship no headers: set "
              "TRT_INCLUDE to include/ of NVIDIA's TensorRT repository at your release's tag (TensorRT-RTX: 11.x) "
              "and rerun notebook 05's build cell (README, 'The SiLU plugin')" + ("" if has_builder else f"; {why}"))


def plugin_interface_check(build_root: Path | str | None = None) -> pd.DataFrame:
    """Run mv_silu_plugin_check (the plugin driven through TensorRT's interfaces); one row per check."""
    info = require_plugin(build_root)
    exe = kernel.build_dir(build_root) / kernel.PLUGIN_CHECK
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


# --- the rewritten graphs ----------------------------------------------------------------------------------
def rewrite_all(exported, img_size: int, seed: int = 0, batch: int = 1) -> pd.DataFrame:
    """Rewrite the FP32, FP16 and INT8 ONNX files into plugin graphs and prove each on the CPU against its source."""
    rows = []
    for prec in export.PRECISIONS:
        src, dst = exported.model(prec), exported.model(prec, plugin=True)
        row = {"precision": prec, "source": src.name, "rewritten": dst.name}
        if prec == "fp16" and not src.exists():
            precision.ensure_fp16(exported.onnx, seed=seed)  # notebook 03's conversion, reused when cached
        if not src.exists():
            rows.append({**row, "status": f"skipped: {src.name} not found (notebook 04 writes it)"})
            continue
        try:
            report = silu_rewrite.rewrite(src, dst)
        except silu_rewrite.NoSiluPairs as why:
            rows.append({**row, "status": f"skipped: {why}"})
            continue
        table, passed = silu_rewrite.verify_cpu(src, dst, img_size, batches=(batch,), seed=seed)
        rows.append({**row, "status": "ok" if passed else "FAILED", "plugin_nodes": report.plugin_nodes,
                     "pairs_left": len(silu_rewrite.find_pairs(gs.import_onnx(onnx.load(str(dst))))),
                     "cpu_max_abs_vs_source": float(table["max_abs"].max()),
                     **{f"cpu_{k}": float(table[k].iloc[0]) for k in ("atol", "rtol") if k in table}})
    table = pd.DataFrame(rows)
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
def engine_specs(exported, trt_flavour: str | None = "auto") -> list:
    """The plugin engines of the study: one per precision, from the rewritten ONNX files, with our plugin library."""
    require_plugin(trt_flavour=trt_flavour)
    lib = kernel.plugin_library()
    return [engines_table.EngineSpec(f"plugin_{p}", exported.model(p, plugin=True), (lib,)) for p in export.PRECISIONS]


def build_engines(exported, profile, trt_flavour: str | None = "auto", trt_target: str = "auto",
                  workspace_gb: float = 4) -> pd.DataFrame:
    """The plugin engines' rows of the engines table (built or reused; failures with the builder's words)."""
    return engines_table.build_all("05_silu_plugin", engine_specs(exported, trt_flavour), profile, trt_flavour,
                                   trt_target, workspace_gb)


def _built(engines: pd.DataFrame | None) -> pd.DataFrame:
    """The engines-table rows that were built and can run here, or StageSkipped saying why none can."""
    built = engines_table.built_rows(engines, "plugin_engines")
    runner.runnable(cache.load(built["path"].iloc[0]))
    return built


def plugin_accuracy(exported, engines: pd.DataFrame | None, tolerances: dict[str, float]) -> pd.DataFrame:
    """Plugin engines against ONNX Runtime on the original model, on the same saved inputs
    (cosine tolerance per precision)."""
    built = _built(engines)
    from polygraphy.comparator import RunResults
    inputs, _ = export.load_reference(exported)
    ref_path = exported.artifact("ort_reference")
    if not ref_path.exists():
        raise FileNotFoundError(f"{ref_path} not found: run plugin.onnxrt_reference(exported) first (a cpu stage)")
    ref = RunResults.load(str(ref_path))
    runners = [runner.runner(r.path, f"trt-{r.engine}", plugins=(kernel.plugin_library(),)) for r in built.itertuples()]
    results = accuracy.run(runners, inputs)
    merged = RunResults()
    for name, iters in list(ref.items()) + list(results.items()):
        merged[name] = iters
    table = accuracy.table(merged, reference="onnxrt-original")
    table["precision"] = table["runner"].str.extract(r"trt-plugin_(\w+)", expand=False)
    table["cosine_tolerance"] = table["precision"].map(tolerances)
    table["passed"] = table["cosine_min"] >= table["cosine_tolerance"]
    return table


def plugin_layers(engines: pd.DataFrame | None) -> pd.DataFrame:
    """The plugin layers of each engine as the engine inspector reports them, against the ONNX file's plugin nodes."""
    return count_plugin_layers(_built(engines))


PLUGIN_TYPE = re.compile(r"^plugin", re.I)  # the inspector's LayerType of a plugin layer: PluginV2, PluginV3, ...


def plugin_node_names(onnx_path: Path | str) -> set[str]:
    """Names of the nodes of the SiLU plugin's op type in an ONNX file (the parser names their layers after them)."""
    name = silu_rewrite.plugin_id().name
    return {n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node if n.op_type == name}

def count_plugin_layers(built: pd.DataFrame) -> pd.DataFrame:
    """Per built engine, its plugin layers: a layer whose type is a plugin, or whose name is a plugin node's name.

    A name that merely contains the op's name is not one: TensorRT names the reformat it puts before a
    linear-format plugin "Reformatting CopyNode for Input Tensor 0 to <plugin layer>". Every engine is counted,
    one without any plugin layer too; AssertionError if an engine's count differs from its ONNX file's nodes."""
    frames, counts = [], []
    for r in built.itertuples():
        layer_table = layers.layer_summary(Path(r.path).parent)
        nodes = plugin_node_names(cache.load(r.path).info["onnx"])
        is_plugin = layer_table["type"].astype(str).str.match(PLUGIN_TYPE) | layer_table["name"].isin(nodes)
        found = layer_table[is_plugin].copy()
        found.insert(0, "engine", r.engine)
        found["engine_layers"] = len(layer_table)
        found["plugin_nodes_in_onnx"] = r.plugin_nodes_in_onnx
        frames.append(found)
        counts.append({"engine": r.engine, "plugin_layers": len(found), "plugin_nodes": r.plugin_nodes_in_onnx})
    counts = pd.DataFrame(counts, columns=["engine", "plugin_layers", "plugin_nodes"])
    wrong = counts[counts["plugin_layers"] != counts["plugin_nodes"]]
    if len(counts) == 0 or len(wrong):
        raise AssertionError(f"engine plugin layers differ from the ONNX files' {silu_rewrite.plugin_id().name} "
                             f"nodes:\n{wrong if len(counts) else 'no engine to count'}")
    return pd.concat(frames, ignore_index=True)
