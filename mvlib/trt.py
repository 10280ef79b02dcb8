"""The TensorRT tier through polygraphy's loaders: keyed engine cache, strongly typed builds, runners, layer info.

Precision is decided in the ONNX file (ModelOpt AutoCast for FP16, Q/DQ nodes for INT8): every network
is built strongly typed and no precision builder flag is ever set, so the same code works on TensorRT
10 (where strong typing is opt-in) and 11 (where it is the only mode and the FP16/INT8 flags are gone).
Everything here except `build_engine`, `runner` and `inspect_engine` runs without TensorRT.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import onnx
import pandas as pd

from mvlib import env, io, paths

RECIPE = 1  # bump when the build settings below change, so older engines are not reused
PLAN = "engine.plan"
BUILD_INFO = "build.json"
LAYERS = "layers.json"
TIMING_DIR = "timing"


# --- inputs: ONNX input, profile, plugins -------------------------------------------------------
def onnx_input(onnx_path: Path | str) -> tuple[str, tuple[int, ...]]:
    """Name and shape (batch dimension as -1) of the model's single image input."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path} has {len(inputs)} inputs ({[i.name for i in inputs]}); the engine "
                         "profile here is for models with one image input")
    dims = inputs[0].type.tensor_type.shape.dim
    rest = [d.dim_value for d in dims[1:]]
    if not all(rest):
        raise ValueError(f"{onnx_path}: input {inputs[0].name!r} has dynamic non-batch dimensions "
                         f"{[d.dim_param or d.dim_value for d in dims]}; export with a fixed image size")
    return inputs[0].name, (-1, *rest)


def check_profile(batch_min: int, batch_opt: int, batch_max: int) -> tuple[int, int, int]:
    """Reject an optimization profile that is not 1 <= min <= opt <= max."""
    vals = (batch_min, batch_opt, batch_max)
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in vals) or not 1 <= batch_min <= batch_opt <= batch_max:
        raise ValueError(f"batch profile min={batch_min}, opt={batch_opt}, max={batch_max} is invalid: "
                         "use integers with 1 <= batch_min <= batch_opt <= batch_max (e.g. 1, 16, 32)")
    return vals


def check_batch(batch: int, batch_min: int, batch_max: int) -> int:
    """Raise a clear error for a batch outside the engine's profile [batch_min, batch_max]."""
    if not batch_min <= batch <= batch_max:
        raise ValueError(f"batch {batch} is outside the engine's optimization profile [{batch_min}, {batch_max}]; "
                         f"split the batch, or rebuild the engine with batch_min <= {batch} <= batch_max "
                         "(trt.build_engine(onnx, batch_min, batch_opt, batch_max))")
    return batch


def check_plugins(plugins: Sequence[Path | str] = ()) -> list[str]:
    """Absolute paths of the plugin libraries; a missing one raises an error naming how to build it."""
    found = []
    for p in plugins:
        path = Path(p).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"TensorRT plugin library {path} does not exist. Build it first: set TRT_INCLUDE to TensorRT's "
                f"include/ folder and run `bash {paths.PLUGIN_SRC.name}/build.sh` (or mvlib.plugin.build(), which "
                f"notebooks/05_silu_plugin.ipynb runs); it writes the library under {paths.PLUGIN_BUILD}.")
        found.append(str(path))
    return found


# --- the cache key ----------------------------------------------------------------------------------
def sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def trt_version() -> str | None:
    """The installed TensorRT builder's version, or None."""
    if not env.tensorrt_status()[0]:
        return None
    import tensorrt
    return tensorrt.__version__


def gpu_identity() -> dict:
    """The GPU engines are built for: name and compute capability (None on a machine without one)."""
    info = env.gpu_info()
    return {"gpu": info.get("gpu"), "capability": info.get("capability")}


def key_parts(onnx_path: Path | str, batch_min: int, batch_opt: int, batch_max: int,
              plugins: Sequence[Path | str] = ()) -> dict:
    """Everything an engine depends on: ONNX bytes, TensorRT, GPU, profile, plugin libraries, build recipe."""
    check_profile(batch_min, batch_opt, batch_max)
    name, shape = onnx_input(onnx_path)
    return {"onnx_sha256": sha256(onnx_path), "tensorrt": trt_version(), **gpu_identity(),
            "input": name, "shape": list(shape), "profile": [batch_min, batch_opt, batch_max],
            "plugins_sha256": [sha256(p) for p in check_plugins(plugins)], "recipe": RECIPE}


def engine_key(onnx_path: Path | str, batch_min: int, batch_opt: int, batch_max: int,
               plugins: Sequence[Path | str] = ()) -> str:
    """Cache key of an engine: readable prefix plus a hash of `key_parts` (a stale engine never matches)."""
    return _key(onnx_path, key_parts(onnx_path, batch_min, batch_opt, batch_max, plugins))


def _key(onnx_path: Path | str, parts: dict) -> str:
    """The key string for already computed key parts."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(onnx_path).stem)
    return f"{stem}-b{'_'.join(map(str, parts['profile']))}-{digest}"


def timing_cache_path() -> Path:
    """The tactic timing cache, one per GPU and TensorRT version (shared by every engine built there)."""
    g = gpu_identity()
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", g["gpu"] or "no-gpu").strip("-")
    return paths.ENGINES / TIMING_DIR / f"{gpu}_sm{g['capability'] or 'none'}_trt{trt_version() or 'none'}.cache"


# --- the polygraphy loader chain -----------------------------------------------------------------
class WorkspaceLimit(Mapping):
    """`{trt.MemoryPoolType.WORKSPACE: nbytes}` for CreateConfig, resolved only when the config is created.

    CreateConfig reads `memory_pool_limits.items()` at call time; resolving the enum then lets the whole
    chain be constructed (and checked) on a machine without TensorRT.
    """

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)

    def _resolved(self) -> dict:
        """The real mapping (imports TensorRT)."""
        import tensorrt as trt
        return {trt.MemoryPoolType.WORKSPACE: self.nbytes}

    def __getitem__(self, key):
        return self._resolved()[key]

    def __iter__(self):
        return iter(self._resolved())

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"WorkspaceLimit({self.nbytes} bytes)"


@dataclass
class LoaderChain:
    """The polygraphy loaders of one engine build, constructed but not called."""
    network: Any         # NetworkFromOnnxPath(strongly_typed=True)
    plugin_loader: Any   # LoadPlugins wrapping `network`, or None without plugins
    config: Any          # CreateConfig(profiles, timing cache, workspace)
    engine: Any          # EngineFromNetwork(network, config, save_timing_cache)
    save: Any            # SaveEngine(engine, path), or None without an engine path

    def __call__(self):
        """Build (and save) the engine; returns the deserialized trt.ICudaEngine."""
        return (self.save or self.engine)()


def loader_chain(onnx_path: Path | str, batch_min: int, batch_opt: int, batch_max: int,
                 plugins: Sequence[Path | str] = (), workspace_gb: float = 4,
                 timing_cache: Path | str | None = None, engine_path: Path | str | None = None) -> LoaderChain:
    """Construct the polygraphy loaders that build a strongly typed engine, without calling any of them."""
    from polygraphy.backend.trt import (CreateConfig, EngineFromNetwork, LoadPlugins, NetworkFromOnnxPath, Profile,
                                        SaveEngine)
    check_profile(batch_min, batch_opt, batch_max)
    if workspace_gb <= 0:
        raise ValueError(f"workspace_gb={workspace_gb}: give the builder a positive workspace, e.g. 4")
    libs = check_plugins(plugins)
    name, shape = onnx_input(onnx_path)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    # Plugin creators register themselves when their library is loaded, so load before parsing.
    plugin_loader = LoadPlugins(plugins=libs, obj=network) if libs else None
    profile = Profile().add(name, min=(batch_min, *shape[1:]), opt=(batch_opt, *shape[1:]), max=(batch_max, *shape[1:]))
    tc = str(timing_cache) if timing_cache else None
    # tf32=False is polygraphy's default, stated here: the "FP32" engine computes in true FP32.
    # No fp16/int8 flags: the network is strongly typed and TensorRT 11 has removed them.
    config = CreateConfig(tf32=False, profiles=[profile], load_timing_cache=tc,
                          memory_pool_limits=WorkspaceLimit(int(workspace_gb * (1 << 30))))
    engine = EngineFromNetwork(plugin_loader or network, config=config, save_timing_cache=tc)
    save = SaveEngine(engine, path=str(engine_path)) if engine_path else None
    return LoaderChain(network, plugin_loader, config, engine, save)


# --- build, cache, run -----------------------------------------------------------------------------
def cache_problem(engine_dir: Path | str) -> str | None:
    """Why the engine cached in `engine_dir` cannot be trusted (None when it can)."""
    d = Path(engine_dir)
    plan, meta = d / PLAN, d / BUILD_INFO
    if not plan.exists() and not meta.exists():
        return "not built yet"
    try:
        info = io.read_json(meta)
        recorded = (info["plan_sha256"], info["plan_bytes"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its build record {meta} is missing or unreadable ({type(err).__name__})"
    if not plan.is_file():
        return f"{plan} is missing"
    if plan.stat().st_size != recorded[1] or sha256(plan) != recorded[0]:
        return f"{plan} is corrupt (size or SHA-256 differs from what the builder wrote)"
    try:
        io.read_json(d / LAYERS)
    except (OSError, ValueError) as err:
        return f"its layer information {d / LAYERS} is missing or unreadable ({type(err).__name__})"
    return None


def engine_dir(onnx_path: Path | str, batch_min: int, batch_opt: int, batch_max: int,
               plugins: Sequence[Path | str] = ()) -> Path:
    """Folder of the cached engine for these inputs (ENGINES/<key>)."""
    return paths.ENGINES / engine_key(onnx_path, batch_min, batch_opt, batch_max, plugins)


def build_engine(onnx_path: Path | str, batch_min: int, batch_opt: int, batch_max: int,
                 plugins: Sequence[Path | str] = (), workspace_gb: float = 4) -> Path:
    """Build a strongly typed engine for `onnx_path` with this profile, or reuse a valid cached one; the plan path."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} does not exist; export it first (export.ensure_exported)")
    parts = key_parts(onnx_path, batch_min, batch_opt, batch_max, plugins)
    out = paths.ENGINES / _key(onnx_path, parts)
    problem = cache_problem(out)
    if problem is None:
        print(f"reusing engine {out / PLAN}")
        return out / PLAN
    if problem != "not built yet":
        print(f"engine cache {out.name}: {problem}; rebuilding")
    ok, why = env.tensorrt_status()
    if not ok:
        raise RuntimeError(f"cannot build an engine for {onnx_path.name}: {why}")
    return _build(onnx_path, out, parts, plugins, workspace_gb)


def _build(onnx_path: Path, out: Path, parts: dict, plugins: Sequence[Path | str], workspace_gb: float) -> Path:
    """Run the loader chain, then write plan, layer information and build record atomically (record last)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / BUILD_INFO).unlink(missing_ok=True)  # from here on the old plan is not trusted
    b_min, b_opt, b_max = parts["profile"]
    tc = timing_cache_path()
    start = time.perf_counter()
    with io.atomic_path(out / PLAN) as tmp_plan, _atomic_timing_cache(tc) as tmp_tc:
        chain = loader_chain(onnx_path, b_min, b_opt, b_max, plugins, workspace_gb, tmp_tc, tmp_plan)
        engine = chain()
        layers = inspect_engine(engine)
    seconds = time.perf_counter() - start
    io.write_json(out / LAYERS, layers)
    import polygraphy
    io.write_json(out / BUILD_INFO, {
        **parts, "onnx": str(onnx_path), "plugins": check_plugins(plugins), "workspace_gb": workspace_gb,
        "strongly_typed": True, "tf32": False, "timing_cache": str(tc), "build_seconds": round(seconds, 1),
        "polygraphy": polygraphy.__version__, "plan_bytes": (out / PLAN).stat().st_size,
        "plan_sha256": sha256(out / PLAN)})
    print(f"built {out / PLAN} in {seconds:.0f} s")
    return out / PLAN


@contextlib.contextmanager
def _atomic_timing_cache(path: Path) -> Iterator[Path]:
    """A private copy of the timing cache for one build, renamed onto `path` only if the build succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.exists():
        shutil.copyfile(path, tmp)  # polygraphy loads it and merges the new tactics into it
    try:
        yield tmp
        if tmp.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".lock").unlink(missing_ok=True)  # polygraphy's LockFile leaves this behind


def inspect_engine(engine) -> dict:
    """The engine inspector's JSON description of every layer (needs DETAILED profiling verbosity, polygraphy's default)."""
    import tensorrt as trt
    inspector = engine.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def build_info(engine_path: Path | str) -> dict:
    """The build record saved next to an engine."""
    return io.read_json(Path(engine_path).parent / BUILD_INFO)


def runner(engine_path: Path | str, name: str, plugins: Sequence[Path | str] = ()):
    """A polygraphy TrtRunner for a cached engine (plugins loaded before it is deserialized)."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, LoadPlugins, TrtRunner
    engine_path = Path(engine_path)
    problem = cache_problem(engine_path.parent)
    if problem is not None:
        raise RuntimeError(f"engine {engine_path} cannot be used: {problem}; build_engine() rebuilds it")
    libs = check_plugins(plugins)
    engine = EngineFromBytes(BytesFromPath(str(engine_path)))
    return TrtRunner(LoadPlugins(plugins=libs, obj=engine) if libs else engine, name=name)


# --- layer information -------------------------------------------------------------------------------
_PRECISIONS = (("FP8", "FP8"), ("BFLOAT16", "BF16"), ("BF16", "BF16"), ("FP16", "FP16"), ("HALF", "FP16"),
               ("FP32", "FP32"), ("FLOAT", "FP32"), ("INT8", "INT8"), ("INT32", "INT32"), ("INT64", "INT64"),
               ("BOOL", "BOOL"), ("UINT8", "UINT8"))


def _precision(tensor: dict) -> str:
    """Data type of one inspector tensor entry ('Format/Datatype' in TensorRT 10, 'Datatype' in 11)."""
    text = tensor.get("Format/Datatype") or " ".join(str(tensor.get(k, "")) for k in ("Datatype", "DataType", "Format"))
    upper = text.upper()
    return next((p for token, p in _PRECISIONS if token in upper), "?")


def layer_summary(engine_dir: Path | str) -> pd.DataFrame:
    """One row per engine layer from the saved inspector output: type, ONNX nodes fused into it, precisions."""
    info = io.read_json(Path(engine_dir) / LAYERS)
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    rows = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):  # LAYER_NAMES_ONLY verbosity gives bare names
            rows.append({"index": i, "name": str(layer), "type": "?", "onnx_nodes": None, "fused": None,
                         "input_precision": "?", "output_precision": "?", "tactic": ""})
            continue
        name = str(layer.get("Name", ""))
        meta = str(layer.get("Metadata", ""))
        n_nodes = meta.count("[ONNX Layer:") or (name.count(" + ") + 1 if name else 0)
        myelin = "ForeignNode" in name or str(layer.get("LayerType", "")).lower() in ("myelin", "kgen")
        rows.append({
            "index": i, "name": name, "type": layer.get("LayerType", layer.get("ParameterType", "?")),
            "onnx_nodes": n_nodes, "fused": bool(n_nodes > 1 or myelin),
            "input_precision": "/".join(sorted({_precision(t) for t in layer.get("Inputs", [])})) or "-",
            "output_precision": "/".join(sorted({_precision(t) for t in layer.get("Outputs", [])})) or "-",
            "tactic": layer.get("TacticName", layer.get("TacticValue", "")),
        })
    return pd.DataFrame(rows, columns=["index", "name", "type", "onnx_nodes", "fused", "input_precision",
                                       "output_precision", "tactic"])


def layer_totals(layers: pd.DataFrame) -> dict:
    """How many layers, how many fused, how many ONNX nodes they cover, and layers per output precision."""
    return {"layers": len(layers), "fused_layers": sum(bool(f) for f in layers["fused"] if f is not None),
            "onnx_nodes_covered": int(pd.to_numeric(layers["onnx_nodes"]).fillna(0).sum()),
            **{f"out_{p}": int(n) for p, n in layers["output_precision"].value_counts().items()}}
