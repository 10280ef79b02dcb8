"""Layer information of an engine: the engine inspector where the engine runs, the builder's own listing anywhere.

Two sources, the same fields (trex's names): the engine inspector (`IEngineInspector`, JSON, needs a
deserialized engine, so a GPU the flavour runs on) and the layer listing the builder logs at VERBOSE severity
when it finishes ("Layers:" then one line per engine layer: name, type, inputs, constants, outputs with their
data types). The second is what the builder itself reports on any machine, so it says what precision each
convolution and matrix multiplication really got, which is what "INT8" means for an engine: TensorRT-RTX
documents INT8 only as weight-only GEMM and its builder converts some Q/DQ scales back to float.

Serves: notebooks 03 to 05 (each engine's layers and their precisions).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from mvlib import io
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cache, runner
from mvlib.tensorrt.flavours import Flavour

if TYPE_CHECKING:  # pandas is imported where a table is made: the build child imports this module and makes none
    import pandas as pd

_PRECISIONS = (("FP8", "FP8"), ("BFLOAT16", "BF16"), ("BF16", "BF16"), ("FP16", "FP16"), ("HALF", "FP16"),
               ("FP32", "FP32"), ("FLOAT", "FP32"), ("INT8", "INT8"), ("INT32", "INT32"), ("INT64", "INT64"),
               ("BOOL", "BOOL"), ("UINT8", "UINT8"), ("INT4", "INT4"), ("FP4", "FP4"))
_LINE = re.compile(r"Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), Inputs: \[(?P<inputs>.*)\], "
                   r"Constants: \[(?P<constants>.*)\], Outputs: \[(?P<outputs>.*)\], TacticName: ?(?P<tactic>.*?), "
                   r"StreamId: \d+, Metadata:\s?(?P<meta>.*)$")
_TENSOR = re.compile(r"Name: (?P<name>[^,]*), Dimensions: [^{}]*?Datatype: (?P<dtype>\w+), Format: (?P<fmt>[^}]*)")
CONV = re.compile(r"conv|correlation", re.I)      # RTX's compiler calls a convolution "correlation"
MATMUL = re.compile(r"gemm|matmul|matrix", re.I)
FUSED = re.compile(r"fusion|myelin", re.I)        # kernels of several ops (RTX's runtime_fusion, a Myelin region)
KINDS = (("conv", CONV), ("matmul", MATMUL), ("fused", FUSED))


def precision(tensor: dict) -> str:
    """Data type of one tensor entry ('Format/Datatype' in TensorRT 10's inspector, 'Datatype' in 11 and RTX)."""
    text = tensor.get("Format/Datatype") or " ".join(str(tensor.get(k, "")) for k in ("Datatype", "DataType", "Format"))
    upper = text.upper()
    return next((p for token, p in _PRECISIONS if token in upper), "?")


def parse_builder_layers(text: str) -> list[dict]:
    """The builder's VERBOSE layer listing ("Layers:\\nName: ..., LayerType: ..., Inputs: [...], ...") as
    inspector-style dicts: Name, LayerType, Inputs, Constants, Outputs (each tensor with its Datatype), Metadata."""
    layers = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        tensors = {k: [{"Name": t["name"], "Datatype": t["dtype"], "Format": t["fmt"].strip()}
                       for t in _TENSOR.finditer(m[k])] for k in ("inputs", "constants", "outputs")}
        layers.append({"Name": m["name"], "LayerType": m["type"].strip(), "Inputs": tensors["inputs"],
                       "Constants": tensors["constants"], "Outputs": tensors["outputs"],
                       "TacticName": m["tactic"], "Metadata": m["meta"]})
    return layers


def math_precision(layer: dict) -> tuple[str, str] | None:
    """('conv', 'matmul' or 'fused', 'INT8' / 'FP16' / 'FP16 x INT8' (activations x weights)) of a convolution,
    matrix multiplication or fused kernel (which may hold either); None for any other layer."""
    kind = next((k for k, pattern in KINDS if pattern.search(layer.get("LayerType", ""))), None)
    if kind is None:
        return None
    ins = [precision(t) for t in layer.get("Inputs", [])]
    # the second operand: another activation (attention's matmuls), else the first constant (the weights; the
    # constants after it are scales and biases)
    second = ins[1:2] or [precision(t) for t in layer.get("Constants", [])][:1]
    act = (ins or ["?"])[0]
    wt = (second or [act])[0]  # a fused kernel without a second operand: its input's precision
    return kind, act if act == wt else f"{act} x {wt}"


def compute_precision(layers: list[dict]) -> str:
    """What precision the engine's convolutions, matmuls and fused kernels get, counted as the builder listed
    them ('conv: 19 INT8, 3 FP16; matmul: 24 FP16; fused: 8 FP16'): activations x weights where they differ."""
    counts = Counter(mp for mp in map(math_precision, layers) if mp)
    if not counts:
        return "no convolution or matmul layer reported" if layers else "not reported by the builder"
    parts = []
    for kind, _ in KINDS:
        found = sorted(((n, p) for (k, p), n in counts.items() if k == kind), reverse=True)
        if found:
            parts.append(f"{kind}: " + ", ".join(f"{n} {p}" for n, p in found))
    return "; ".join(parts)


def int8_math(summary: str) -> int:
    """How many convolutions/matmuls a compute_precision summary lists with INT8 activations and weights."""
    return sum(int(n) for n in re.findall(r"(\d+) INT8(?![ \w]*x)", str(summary)))


def inspect_plan(fl: Flavour, plan: bytes, plugins=(), check=None) -> dict:
    """The engine inspector's JSON for a plan (needs a GPU the flavour runs on; plugins loaded after `check`);
    an error saying why not."""
    trt = fl.module()
    engine, _runtime, said = runner.deserialize(fl, plan, plugins, check)
    if engine is None:
        raise RuntimeError(f"{fl.label} could not deserialize the plan here: {' | '.join(said[-3:]) or 'no reason'}")
    inspector = engine.create_engine_inspector()
    if inspector is None:
        raise RuntimeError(f"{fl.label} gave no engine inspector")
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def ensure_inspected(engine: cache.Engine) -> str | bool:
    """Inspect a cached engine that was built where it could not be inspected, now that it runs here
    (True when inspected; else the reason, and nothing is rewritten)."""
    info = engine.layers()
    if info.get("inspected") is True:
        return True
    try:
        runner.runnable(engine)
        inspected = inspect_plan(engine.flavour, engine.plan.read_bytes(), engine.info.get("plugins", ()),
                                 engine.info.get("plugin_check"))
    except StageSkipped as why:
        return str(why)
    except Exception as err:  # best effort: the engine stays usable, its layers stay unknown, and say why
        return f"not inspected: {type(err).__name__}: {err}"
    io.write_json(engine.dir / cache.LAYERS, {**info, **inspected, "inspected": True})
    cache.update_record(engine, inspected=True)
    print(f"inspected {engine.dir.name} (built where it could not run)")
    return True


def layer_summary(engine_dir: Path | str) -> pd.DataFrame:
    """One row per engine layer from the engine inspector: type, ONNX nodes fused into it, precisions.

    An engine built elsewhere is inspected here first where it runs here."""
    import pandas as pd
    path = Path(engine_dir) / cache.LAYERS
    info = io.read_json(path)
    if isinstance(info, dict) and info.get("inspected") is not True and "Layers" not in info:
        if (Path(engine_dir) / cache.PLAN).is_file() and cache.cache_problem(engine_dir) is None:
            ensure_inspected(cache.load(Path(engine_dir) / cache.PLAN))
            info = io.read_json(path)
        if info.get("inspected") is not True:
            raise StageSkipped(f"engine layers: {info.get('inspected', 'not inspected')}")
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    rows = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise ValueError(f"{engine_dir}: the inspector gave layer names only ({layer!r}): the engine was built "
                             "without DETAILED profiling verbosity; rebuild it")
        name = str(layer.get("Name", ""))
        meta = str(layer.get("Metadata", ""))
        n_nodes = meta.count("[ONNX Layer:") or (name.count(" + ") + 1 if name else 0)
        myelin = "ForeignNode" in name or str(layer.get("LayerType", "")).lower() in ("myelin", "kgen")
        rows.append({
            "index": i, "name": name, "type": layer.get("LayerType", layer.get("ParameterType", "?")),
            "onnx_nodes": n_nodes, "fused": bool(n_nodes > 1 or myelin),
            "input_precision": "/".join(sorted({precision(t) for t in layer.get("Inputs", [])})) or "-",
            "output_precision": "/".join(sorted({precision(t) for t in layer.get("Outputs", [])})) or "-",
            "tactic": layer.get("TacticName", layer.get("TacticValue", "")), "metadata": meta,
        })
    return pd.DataFrame(rows, columns=["index", "name", "type", "onnx_nodes", "fused", "input_precision",
                                       "output_precision", "tactic", "metadata"])


ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]*)\]")


def onnx_layers(metadata: str) -> list[str]:
    """The ONNX node names a layer's metadata names ('[ONNX Layer: /act/MvSiLU]', one entry per fused node; the
    parser writes them for both flavours, in the inspector's JSON and the builder's DETAILED listing)."""
    return ONNX_LAYER.findall(str(metadata or ""))


def layer_totals(layers: pd.DataFrame) -> dict:
    """How many layers, how many fused, how many ONNX nodes they cover, and layers per output precision."""
    import pandas as pd
    return {"layers": len(layers), "fused_layers": int(layers["fused"].fillna(False).astype(bool).sum()),
            "onnx_nodes_covered": int(pd.to_numeric(layers["onnx_nodes"]).fillna(0).sum()),
            **{f"out_{p}": int(n) for p, n in layers["output_precision"].value_counts().items()}}
