"""The build child: `python -m mvlib.tensorrt build SPEC.json RESULT.json` builds one engine with the raw API.

It runs in its own process (started by `cache.build`), so a builder crash fails one engine with the builder's
messages instead of the notebook's kernel. Every network is strongly typed (precision is decided in the ONNX
file) and TF32 is off. The builder logs at VERBOSE severity so that its closing layer listing (each layer's
type and data types) is kept: that is where it says what precision the convolutions and matmuls got.
Inspection with the engine inspector is best effort: where the engine cannot be deserialized here (no GPU, an
old driver, another GPU), the plan is kept and its layer information says `not inspected: <why>`.

Serves: notebooks 03 to 06 (every engine build runs in it).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from mvlib import io
from mvlib.tensorrt import cache, layers, plugins
from mvlib.tensorrt.flavours import installed
from mvlib.tensorrt.runner import logger

PLUGIN_TYPES = ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")


def counted(messages: list[str]) -> list[str]:
    """Each distinct message once, in first-seen order, with '(xN)' where the builder said it N > 1 times."""
    counts: dict[str, int] = {}
    for m in messages:
        counts[m] = counts.get(m, 0) + 1
    return [m + (f" (x{n})" if n > 1 else "") for m, n in counts.items()]


def split_log(said: list[str]) -> tuple[list[str], str]:
    """(warnings and errors, the builder's closing layer listing) from everything a VERBOSE logger kept."""
    kept = [m for m in said if not m.startswith(("VERBOSE:", "INFO:"))]
    listing = next((m.split(": ", 1)[1] for m in reversed(said) if m.startswith("VERBOSE: Layers:")), "")
    return kept, listing


def inspect(fl, plan: bytes, plugin_paths, check, runs_here: tuple[bool, str]) -> dict:
    """The engine inspector's information where the engine runs here (`runs_here`: the parent's verdict,
    Flavour.runs_here), else `inspected: not inspected: <why>`."""
    runs, why = runs_here
    if not runs:
        return {"inspected": f"not inspected: {why}"}
    try:
        return {**layers.inspect_plan(fl, plan, plugin_paths, check), "inspected": True}
    except Exception as err:  # a valid plan stays a build: its layers are simply unknown, and say why
        return {"inspected": f"not inspected: {type(err).__name__}: {err}"}


def build(spec: dict) -> dict:
    """Parse, configure and build one engine; the result the parent records (ok, messages, layer counts...)."""
    fl, why = installed(spec["flavour"])
    if fl is None:
        return {"ok": False, "messages": [why]}
    trt = fl.module()
    said: list[str] = []
    log = logger(fl, said, verbose=True)
    result: dict = {"ok": False, "messages": said}
    if spec["plugins"]:
        plugins.load_plugins(fl, spec["plugins"], spec.get("plugin_check"))
    builder = trt.Builder(log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(spec["onnx"]):
        result["messages"] = split_log(said)[0] + [f"PARSER: {parser.get_error(i)}" for i in range(parser.num_errors)]
        return result
    types = [network.get_layer(i).type.name for i in range(network.num_layers)]
    result.update(network_layers=len(types), layers_by_type=dict(sorted(Counter(types).items())),
                  plugin_layers=sum(t in PLUGIN_TYPES for t in types))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec["workspace_gb"] * (1 << 30)))
    config.clear_flag(trt.BuilderFlag.TF32)  # the "FP32" engine computes in true FP32
    # Layer types and precisions in the inspector need DETAILED; the builder's default, LAYER_NAMES_ONLY, hides them.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    fl.configure(config, spec["target"])
    name, shape = spec["input"], spec["shape"]
    lo, opt, hi = spec["profile"]
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (lo, *shape[1:]), (opt, *shape[1:]), (hi, *shape[1:]))
    config.add_optimization_profile(profile)
    tc_path = Path(spec["timing_cache"]) if spec.get("timing_cache") else None
    if tc_path is not None:
        tcache = config.create_timing_cache(tc_path.read_bytes() if tc_path.exists() else b"")
        config.set_timing_cache(tcache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    messages, listing = split_log(said)
    result["messages"] = messages
    if plan is None:
        messages.append("ERROR: build_serialized_network returned no engine")
        return result
    out = Path(spec["out"])
    io.write_bytes(out / cache.PLAN, bytes(plan))
    if tc_path is not None:
        io.write_bytes(tc_path, bytes(config.get_timing_cache().serialize()))
    builder_layers = layers.parse_builder_layers(listing)
    info = {"network": [{"name": network.get_layer(i).name, "type": types[i]} for i in range(len(types))],
            "builder_layers": builder_layers,
            **inspect(fl, bytes(plan), spec["plugins"], spec.get("plugin_check"), spec["runs_here"])}
    io.write_json(out / cache.LAYERS, info)
    result.update(ok=True, strongly_typed=True, tf32=False, profiling_verbosity=config.profiling_verbosity.name,
                  inspected=info["inspected"], compute_precision=layers.compute_precision(builder_layers))
    return result


def main(spec_path: str, result_path: str) -> int:
    """Build from a spec file; write the result file (also when the build fails); exit 0 only on success."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = build(spec)
    except Exception as err:  # reported to the parent with the builder's messages so far
        result = {"ok": False, "messages": [f"{type(err).__name__}: {err}"]}
    result["messages"] = counted(result.get("messages", []))
    Path(result_path).write_text(json.dumps(result))
    return 0 if result.get("ok") else 1
