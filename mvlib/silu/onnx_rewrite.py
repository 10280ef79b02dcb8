"""SiLU surgery: every x*sigmoid(x) becomes one node of the SiLU plugin, and the result is proven on the CPU.
Serves notebooks 02 (the rewrite, its audit and CPU check) and 05 (through mvlib.silu.engines);
tests/silu/test_onnx_rewrite.py.

The plugin's identity (name, version, namespace) is defined once, in silu_plugin/silu_plugin_id.h;
this module reads it from there. TensorRT's ONNX parser maps a node it has no importer for to the
registered plugin whose name is the node's op_type, with the version and namespace taken from the
node's `plugin_version` and `plugin_namespace` string attributes (onnx-tensorrt, FallbackPluginImporter).
ONNX Runtime knows no such op, so the CPU check runs an in-memory copy of the rewritten graph with an
onnxruntime-extensions Python op standing in for the plugin.
"""
import collections
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from mvlib import accuracy, io, paths, precisions
from mvlib.tensorrt.plugins import PLUGIN_DOMAIN

PLUGIN_HEADER = paths.PLUGIN_SRC / "silu_plugin_id.h"
# The node domain of the plugin op in the file handed to TensorRT: NVIDIA's domain for TensorRT plugin ops
# (mvlib.tensorrt.plugins.PLUGIN_DOMAIN, which counts plugin nodes by it); a non-default domain also keeps
# onnx.checker from rejecting the file as using an unknown standard op.
TRT_DOMAIN = PLUGIN_DOMAIN
# onnxruntime-extensions registers its Python ops in this domain; only the in-memory CPU copy uses it.
ORT_DOMAIN = "ai.onnx.contrib"
# The CPU check's tolerance is each precision's rewrite_tolerance (mvlib.precisions), which says why.


@dataclass(frozen=True)
class PluginId:
    """The SiLU plugin's registry key: op_type == name, plus version and namespace attributes."""
    name: str
    version: str
    namespace: str


@functools.cache
def plugin_id(header: Path = PLUGIN_HEADER) -> PluginId:
    """Read SILU_PLUGIN_NAME / _VERSION / _NAMESPACE from the plugin's one header."""
    if not Path(header).is_file():
        raise FileNotFoundError(f"{header} is missing: it defines the SiLU plugin's name, version and namespace "
                                "(restore silu_plugin/silu_plugin_id.h from git)")
    found = dict(re.findall(r'^\s*#define\s+SILU_PLUGIN_(NAME|VERSION|NAMESPACE)\s+"([^"]*)"', Path(header).read_text(),
                            flags=re.M))
    missing = {"NAME", "VERSION", "NAMESPACE"} - set(found)
    if missing or not found.get("NAME"):
        raise ValueError(f"{header} must #define SILU_PLUGIN_NAME, SILU_PLUGIN_VERSION and SILU_PLUGIN_NAMESPACE as "
                         f"string literals; missing or empty: {sorted(missing) or ['NAME']}")
    return PluginId(found["NAME"], found["VERSION"], found["NAMESPACE"])


class NoSiluPairs(ValueError):
    """The model has no x*sigmoid(x) pair and no plugin node: nothing to rewrite."""


@dataclass
class RewriteReport:
    """What one rewrite did: pairs rewritten, plugin nodes in the output, node counts, and a sentence."""
    source: Path
    output: Path
    pairs: int
    plugin_nodes: int
    nodes_before: int
    nodes_after: int
    already_rewritten: bool = False
    rewritten: list[str] = field(default_factory=list)  # names of the new plugin nodes

    @property
    def message(self) -> str:
        """One sentence for a notebook or a log."""
        name = plugin_id().name
        if self.already_rewritten:
            return (f"{self.source.name} is already rewritten ({self.plugin_nodes} {name} nodes, no Sigmoid+Mul pair "
                    f"left): nothing changed" + ("" if self.source == self.output else f"; {self.output.name} is an "
                                                 "unchanged copy"))
        return (f"rewrote {self.pairs} Sigmoid+Mul pairs into {name} nodes: {self.source.name} -> {self.output.name} "
                f"({self.nodes_before} -> {self.nodes_after} nodes)")

    def as_row(self) -> dict:
        """A flat dict for a results table."""
        return {"source": self.source.name, "output": self.output.name, "pairs_rewritten": self.pairs,
                "plugin_nodes": self.plugin_nodes, "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
                "already_rewritten": self.already_rewritten, "plugin": plugin_id().name,
                "plugin_version": plugin_id().version, "plugin_namespace": plugin_id().namespace,
                "domain": TRT_DOMAIN}

    def __str__(self) -> str:
        return self.message


# --- finding and rewriting pairs -------------------------------------------------------------------------
def find_pairs(graph: gs.Graph) -> list[tuple[gs.Node, gs.Node]]:
    """Every (Sigmoid, Mul) with Mul(x, Sigmoid(x)) in either input order, both reading the very same tensor x.

    Not a pair: a Sigmoid whose output is also read elsewhere or is a graph output (it must stay), or a
    Mul whose x comes through another tensor, e.g. a second DequantizeLinear of the same quantized value.
    """
    outputs = {id(t) for t in graph.outputs}
    pairs = []
    for mul in graph.nodes:
        if mul.op != "Mul" or len(mul.inputs) != 2 or len(mul.outputs) != 1:
            continue
        for x, s in ((mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])):
            if isinstance(x, gs.Constant) or len(s.inputs) != 1:
                continue
            sig = s.inputs[0]
            if (sig.op == "Sigmoid" and len(sig.inputs) == 1 and sig.inputs[0] is x and len(sig.outputs) == 1
                    and id(s) not in outputs and len(s.outputs) == 1 and s.outputs[0] is mul):
                pairs.append((sig, mul))
                break
    return pairs


def plugin_nodes(graph: gs.Graph) -> list[gs.Node]:
    """Nodes that already are the SiLU plugin."""
    return [n for n in graph.nodes if n.op == plugin_id().name]


def _node_name(mul: gs.Node, taken: set[str], index: int) -> str:
    """The plugin node's name: the Mul's scope plus the plugin name (e.g. '/stem/bn/act/MvSiLU'), unique."""
    name = plugin_id().name
    base = (mul.name.rsplit("/", 1)[0] + "/" + name) if "/" in (mul.name or "") else f"{name}_{index}"
    out, k = base, 1
    while out in taken:
        out, k = f"{base}_{k}", k + 1
    taken.add(out)
    return out


def rewrite_graph(graph: gs.Graph) -> list[str]:
    """Replace each pair by one plugin node in place (at the Mul's position, so order stays topological)."""
    pid = plugin_id()
    pairs = find_pairs(graph)
    taken = {n.name for n in graph.nodes}
    new_names = []
    for i, (sig, mul) in enumerate(pairs):
        x, y = sig.inputs[0], mul.outputs[0]
        for node in (sig, mul):  # detach both; y keeps its name, dtype and shape
            node.inputs.clear()
            node.outputs.clear()
        node = gs.Node(op=pid.name, name=_node_name(mul, taken, i), domain=TRT_DOMAIN,
                       attrs={"plugin_version": pid.version, "plugin_namespace": pid.namespace},
                       inputs=[x], outputs=[y])
        graph.nodes[graph.nodes.index(mul)] = node
        graph.nodes.remove(sig)
        new_names.append(node.name)
    if pairs and not any(d.domain == TRT_DOMAIN for d in graph.import_domains):
        graph.import_domains.append(onnx.helper.make_opsetid(TRT_DOMAIN, 1))
    return new_names


def rewrite(in_path: Path | str, out_path: Path | str) -> RewriteReport:
    """Rewrite every x*sigmoid(x) of `in_path` into the SiLU plugin node; write `out_path` atomically.

    No pair and no plugin node: raises NoSiluPairs and writes nothing. Already rewritten (plugin nodes,
    no pair): changes nothing and says so; out_path, if another file, becomes an unchanged copy.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if not in_path.is_file():
        raise FileNotFoundError(f"{in_path} does not exist; export the model first (notebook 01, "
                                "mvlib.export.ensure_exported)")
    model = onnx.load(str(in_path))
    original = onnx.ModelProto()
    original.CopyFrom(model)  # graphsurgeon shares and edits the loaded protos
    graph = gs.import_onnx(model)
    before = len(graph.nodes)
    present = len(plugin_nodes(graph))
    names = rewrite_graph(graph)
    if not names:
        if not present:
            raise NoSiluPairs(f"{in_path} has no Sigmoid+Mul pair reading the same tensor (x*sigmoid(x)) and no "
                              f"{plugin_id().name} node: nothing to rewrite, no file written. Pass a model with SiLU "
                              "activations, e.g. the exported model.onnx.")
        if out_path.resolve() != in_path.resolve():
            io.write_bytes(out_path, in_path.read_bytes())
        report = RewriteReport(in_path, out_path, 0, present, before, before, already_rewritten=True)
        print(report)
        return report
    out = gs.export_onnx(graph)
    out.ir_version = original.ir_version  # keep what the exporter chose; readers of older IRs still load it
    _keep_original_nodes(original, out)
    with io.atomic_path(out_path) as tmp:
        onnx.save(out, str(tmp))
        onnx.checker.check_model(str(tmp))
    report = RewriteReport(in_path, out_path, len(names), present + len(names), before, len(out.graph.node),
                           rewritten=names)
    print(report)
    return report


def _keep_original_nodes(original: onnx.ModelProto, out: onnx.ModelProto) -> None:
    """Put back the original proto of every node the rewrite did not touch, byte for byte.

    graphsurgeon re-serialises some untouched nodes (a Constant's tensor gains an explicit empty name):
    the same graph, but "nothing else changes" should hold for the bytes too.
    """
    sig = lambda n: (n.name, n.op_type, n.domain, tuple(n.input), tuple(n.output))  # noqa: E731
    kept = {sig(n): n for n in original.graph.node}
    for node in out.graph.node:
        if sig(node) in kept:
            node.CopyFrom(kept[sig(node)])


def graph_diff(original: Path | str, rewritten: Path | str) -> list[str]:
    """What differs between two graphs besides the SiLU rewrite (empty when nothing else changed).

    Compares every node that is not a removed Sigmoid/Mul or an added plugin node (op, name, inputs,
    outputs, attributes), every initializer (name and bytes), the graph inputs and outputs, and checks that
    each plugin node replaced exactly one removed pair reading its input and writing its output.
    """
    a, b = onnx.load(str(original)), onnx.load(str(rewritten))
    name = plugin_id().name
    problems = []
    key = lambda n: n.SerializeToString(deterministic=True)  # noqa: E731
    plugins = [n for n in b.graph.node if n.op_type == name]
    old_plugins = {key(n) for n in a.graph.node if n.op_type == name}
    plugins = [n for n in plugins if key(n) not in old_plugins]
    produced = {o: n for n in a.graph.node for o in n.output}
    removed = []
    for p in plugins:
        mul = produced.get(p.output[0])
        sig = next((produced.get(i) for i in (mul.input if mul is not None else []) if i != p.input[0]), None)
        if (mul is None or mul.op_type != "Mul" or p.input[0] not in mul.input or sig is None
                or sig.op_type != "Sigmoid" or list(sig.input) != [p.input[0]]):
            problems.append(f"plugin node {p.name} does not replace a Mul(x, Sigmoid(x)) of the original")
            continue
        removed += [key(mul), key(sig)]
    rest_a = collections.Counter(key(n) for n in a.graph.node) - collections.Counter(removed)
    rest_b = collections.Counter(key(n) for n in b.graph.node if n.op_type != name or key(n) in old_plugins)
    if rest_a != rest_b:
        problems.append(f"{sum((rest_a - rest_b).values())} other nodes removed or changed, "
                        f"{sum((rest_b - rest_a).values())} added or changed")
    inits = lambda m: {i.name: i.SerializeToString(deterministic=True) for i in m.graph.initializer}  # noqa: E731
    ia, ib = inits(a), inits(b)
    if ia != ib:
        changed = sorted(k for k in set(ia) | set(ib) if ia.get(k) != ib.get(k))
        problems.append(f"{len(changed)} initializers differ, e.g. {changed[:3]}")
    for what in ("input", "output"):
        if list(getattr(a.graph, what)) != list(getattr(b.graph, what)):
            problems.append(f"graph {what}s differ")
    return problems


# --- the CPU stand-in for the plugin ----------------------------------------------------------------------
def _silu(x: np.ndarray) -> np.ndarray:
    """SiLU computed in float64 and rounded once to the input's type (the reference a plugin should meet)."""
    x64 = x.astype(np.float64)
    return (x64 / (1.0 + np.exp(-x64))).astype(x.dtype)


@functools.cache
def _register_ort_ops() -> str:
    """Register the plugin's op type with onnxruntime-extensions once per process; the library path.

    Its Python ops take float32 but not float16 (the api aborts the process on a float16 kernel), so
    cpu_model wraps FP16 plugin nodes in Casts: computed in float32, rounded once to float16.
    """
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    attrs = {"plugin_version": PyCustomOpDef.dt_string, "plugin_namespace": PyCustomOpDef.dt_string}
    onnx_op(op_type=plugin_id().name, inputs=[PyCustomOpDef.dt_float], outputs=[PyCustomOpDef.dt_float],
            attrs=attrs)(lambda x, plugin_version="", plugin_namespace="": _silu(x))
    return get_library_path()


def session_options():
    """ONNX Runtime SessionOptions with the SiLU stand-in registered (for graphs from cpu_model)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: constant-folding notes about Q/DQ graphs drown a notebook
    # Basic optimizations, as mvlib.quant_eval: Q/DQ pairs run as written. At the full level ONNX Runtime 1.30 fuses
    # ModelOpt's FP8 Q/DQ around a Conv into QLinearConv, which takes no FP8, and refuses the model at load.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.register_custom_ops_library(_register_ort_ops())
    return options


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the model declares (inputs, outputs, value_info, initializers)."""
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({i.name: i.data_type for i in g.initializer})
    return {k: v for k, v in types.items() if v}


def _inferred_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types by ONNX type inference, each plugin node standing in as an Identity (SiLU keeps the type)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for node in probe.graph.node:
        if node.op_type == plugin_id().name:
            node.op_type, node.domain = "Identity", ""
            del node.attribute[:]
    return _elem_types(onnx.shape_inference.infer_shapes(probe))


def _lower_floats() -> tuple[int, ...]:
    """The ONNX float types below float32 that some precision runs in (its numpy_dtype): FLOAT16."""
    found = {onnx.helper.np_dtype_to_tensor_dtype(np.dtype(p.numpy_dtype)) for p in precisions.TABLE.values()}
    return tuple(sorted(found - {onnx.TensorProto.FLOAT}))


def cpu_model(path: Path | str) -> onnx.ModelProto:
    """An in-memory copy of a rewritten graph that ONNX Runtime can run with the CPU stand-in.

    Plugin nodes move to the stand-in's domain; those of a lower float type (FP16) are wrapped as Cast(float32) ->
    plugin -> Cast(back). The file handed to TensorRT is not touched.
    """
    model = onnx.load(str(path))
    name = plugin_id().name
    plugins = [n for n in model.graph.node if n.op_type == name and n.domain == TRT_DOMAIN]
    types = _elem_types(model)
    if any(n.input[0] not in types for n in plugins):
        types.update(_inferred_types(model))
    nodes = []
    for node in model.graph.node:
        if node.op_type != name or node.domain != TRT_DOMAIN:
            nodes.append(node)
            continue
        node.domain = ORT_DOMAIN
        dtype = types.get(node.input[0])
        if dtype == onnx.TensorProto.FLOAT:
            nodes.append(node)
        elif dtype in _lower_floats():
            x, y = node.input[0], node.output[0]
            node.input[0], node.output[0] = f"{x}__f32", f"{y}__f32"
            nodes += [onnx.helper.make_node("Cast", [x], [node.input[0]], name=f"{node.name}__cast_in",
                                            to=onnx.TensorProto.FLOAT),
                      node,
                      onnx.helper.make_node("Cast", [node.output[0]], [y], name=f"{node.name}__cast_out",
                                            to=dtype)]
        else:
            runs = ", ".join(onnx.TensorProto.DataType.Name(d) for d in (onnx.TensorProto.FLOAT, *_lower_floats()))
            raise TypeError(f"{name} node {node.name} reads a tensor of type "
                            f"{onnx.TensorProto.DataType.Name(dtype) if dtype else 'unknown'}; the CPU stand-in "
                            f"runs {runs} only (the precisions' numpy_dtype, mvlib.precisions)")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if plugins and not any(o.domain == ORT_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(ORT_DOMAIN, 1))
    return model


def cpu_session(path: Path | str):
    """An ONNX Runtime CPU session that runs a rewritten graph, the plugin replaced by the stand-in."""
    import onnxruntime as ort
    return ort.InferenceSession(cpu_model(path).SerializeToString(), session_options(),
                                providers=["CPUExecutionProvider"])


def cpu_tolerance(precision: str) -> tuple[float, float]:
    """(atol, rtol) of the CPU check for a graph of `precision`; an error naming the fix for one without."""
    p = precisions.get(precision)
    if p.rewrite_tolerance is None:
        raise ValueError(f"{p.label} has no plugin model: give it plugin_artifact and rewrite_tolerance in "
                         "mvlib/precisions.py (what the stand-in's rounding can move in such a graph)")
    return p.rewrite_tolerance


def verify_cpu(original: Path | str, rewritten: Path | str, precision: str, img_size: int, batches=(1, 3),
               seed: int | None = None, atol: float | None = None, rtol: float | None = None):
    """Original vs rewritten graph of `precision` in ONNX Runtime on fresh random inputs; (table per batch, passed).

    Tolerances default to the precision's rewrite_tolerance (mvlib.precisions; FP32: max abs error <= 1e-6).
    """
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner
    default_atol, default_rtol = cpu_tolerance(precision)
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    original_session = lambda: ort.InferenceSession(str(original), session_options(),  # noqa: E731 (the same options)
                                                    providers=["CPUExecutionProvider"])
    runners = [OnnxrtRunner(original_session, name="onnxrt-original"),
               OnnxrtRunner(lambda: cpu_session(rewritten), name="onnxrt-silu-stand-in")]
    results = accuracy.run(runners, accuracy.feeds(batches, img_size, seed=seed))
    table = accuracy.table(results, reference="onnxrt-original")
    ref = results[next(k for k in results.keys() if k.startswith("onnxrt-original"))]
    absmax = collections.defaultdict(float)
    for it in ref:
        out = it[accuracy.OUTPUT]
        absmax[out.shape[0]] = max(absmax[out.shape[0]], float(np.abs(out.astype(np.float64)).max()))
    table.insert(0, "model", Path(rewritten).name)
    table.insert(1, "precision", precision)
    table["ref_absmax"] = table["batch"].map(absmax)
    table["atol"], table["rtol"] = atol, rtol
    table["passed"] = table["max_abs"] <= atol + rtol * table["ref_absmax"]
    return table, bool(table["passed"].all())


def audit(original: Path | str, rewritten: Path | str, model, report: RewriteReport | None = None) -> dict:
    """Check a rewrite against the PyTorch model: plugin nodes == SiLU calls, nothing else changed; one table row."""
    calls = count_torch_silu(model)
    graph = gs.import_onnx(onnx.load(str(rewritten)))
    plugins, left = len(plugin_nodes(graph)), len(find_pairs(graph))
    problems = graph_diff(original, rewritten)
    row = {"torch_silu_calls": calls, "plugin_nodes": plugins, "pairs_left": left,
           "pairs_rewritten": report.pairs if report else None,
           "other_changes": "; ".join(problems) or "none",
           "passed": plugins == calls and left == 0 and not problems}
    return row


# --- the SiLU activations of the PyTorch model -----------------------------------------------------------
def count_torch_silu(model, img_size: int = 64) -> int:
    """SiLU calls in one forward pass of `model` (aten.silu / silu_ at dispatch, so functional calls count too)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.silu, torch.ops.aten.silu_):
                Count.n += 1
            return func(*args, **(kwargs or {}))

    x = torch.from_numpy(accuracy.feeds([1], img_size, seed=0)[0][accuracy.INPUT])
    with torch.no_grad(), Count():
        model(x)
    return Count.n
