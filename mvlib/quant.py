"""INT8 post-training quantization with ModelOpt (explicit Q/DQ), precision policies and a sensitivity analysis.

Every INT8 model here is an ONNX file with QuantizeLinear/DequantizeLinear pairs
made by `modelopt.onnx.quantization.quantize` (calibrated with ONNX Runtime on
the CPU), so ONNX Runtime can check its accuracy anywhere and TensorRT builds
it as a strongly typed network. The policies:

- `all`: everything ModelOpt quantizes by default.
- `fp_attention`: LayerNorm, Softmax and the attention MatMuls (those with no
  constant operand, i.e. Q·Kᵀ and P·V) are excluded.
- `sensitivity`: quantize one group (stage, block or layer) at a time, rank the
  groups by the output error it causes, and exclude the worst groups until the
  model passes.

Excluding a node in ModelOpt keeps Q/DQ off its inputs only where it alone
reads them: ONNX Runtime's Q/DQ quantizer (which ModelOpt drives) shares one
pair among all readers of a tensor, so a LayerNorm that reads the residual
stream next to a quantized Add still reads INT8-rounded values. `isolate`
rewires excluded nodes to the float tensor, so "excluded" really means
"computes on unquantized inputs".
"""
import contextlib
import io as _io
import logging
import re
import shutil
import struct
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from onnx import numpy_helper

from mvlib import io, metrics, trt
from mvlib.accuracy import INPUT, OUTPUT
from mvlib.export import ARTIFACTS
from mvlib.progress import progress

METHODS = ("max", "entropy")
POLICIES = OrderedDict([
    ("all", "everything quantizable"),
    ("fp_attention", "LayerNorm, Softmax, attention MatMuls unquantized"),
    ("sensitivity", "worst groups unquantized until it passes"),
])
GRANULARITIES = ("stage", "block", "layer")
CRITERION = {"top1_agreement": 0.99, "cosine_mean": 0.999, "top1_drop_points": 0.5}
HIGH_PRECISION_OPS = ("LayerNormalization", "Softmax")
QDQ = ("QuantizeLinear", "DequantizeLinear")
IGNORED_READERS = ("Shape",)  # reading a tensor's shape does no arithmetic on its values
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")  # where INT8 saves time; counted to pick the policy


# ---------------------------------------------------------------- graph queries
def _load(model: onnx.ModelProto | Path | str) -> onnx.ModelProto:
    """A model proto from a proto or a path."""
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def attention_nodes(model: onnx.ModelProto | Path | str) -> list[str]:
    """LayerNorm and Softmax nodes, and MatMuls with no constant operand (Q·Kᵀ, P·V), in graph order."""
    graph = _load(model).graph
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node
            if n.op_type in HIGH_PRECISION_OPS or (n.op_type == "MatMul" and not any(i in consts for i in n.input))]


def attention_matmuls(model: onnx.ModelProto | Path | str) -> list[str]:
    """The attention MatMuls: those of `attention_nodes` that are MatMuls."""
    graph = _load(model).graph
    attn = set(attention_nodes(model))
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.name in attn]


def quantized_nodes(model: onnx.ModelProto | Path | str) -> list[str]:
    """Nodes (other than Q/DQ and shape reads) with at least one input from a DequantizeLinear, in graph order."""
    graph = _load(model).graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in graph.node
            if n.op_type not in QDQ + IGNORED_READERS and any(i in dq_out for i in n.input)]


def count_ops(model: onnx.ModelProto | Path | str, names: Iterable[str]) -> dict[str, int]:
    """How many of the named nodes there are per op type."""
    wanted = set(names)
    out: dict[str, int] = {}
    for n in _load(model).graph.node:
        if n.name in wanted:
            out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of initializers and Constant nodes by tensor name."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
    return values


def isolate(model: onnx.ModelProto | Path | str, names: Iterable[str]) -> onnx.ModelProto:
    """A copy in which nodes `names` read float tensors instead of DequantizeLinear outputs (others keep Q/DQ)."""
    wanted = set(names)
    out = onnx.ModelProto()
    out.CopyFrom(_load(model))
    graph = out.graph
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name not in wanted:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                node.input[k] = _float_source(dq, producer)
    _prune(graph)
    return out


def _float_source(dq: onnx.NodeProto, producer: dict) -> str:
    """Name of the float tensor a DequantizeLinear stands for: the input of its QuantizeLinear.

    ModelOpt keeps weights in float behind a Q/DQ pair too, so this also restores
    the original weights; a DQ of pre-quantized integer weights has no float
    original to return to, and is refused rather than approximated.
    """
    q = producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        raise ValueError(f"cannot unquantize through {dq.name!r}: its input {dq.input[0]!r} is not a QuantizeLinear "
                         "output (integer weights without their float originals?)")
    return q.input[0]


def _prune(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ and Constant nodes, and initializers, that nothing reads any more."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in QDQ + ("Constant",) and not any(o in used for o in n.output)]
        if not dead:
            break
        keep = [n for n in graph.node if n not in dead]
        graph.ClearField("node")
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    keep_init = [i for i in graph.initializer if i.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(keep_init)


# ---------------------------------------------------------------- quantization
class _DropNoise(logging.Filter):
    """Hide log lines that say nothing about this run (no NVML on a CPU host; Conv biases behind Identity)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("NVML" in msg or "Expected bias" in msg)


@contextlib.contextmanager
def _quiet_logs():
    """Keep ModelOpt's and ONNX Runtime's per-tensor chatter and progress bars out of the notebook.

    Their output is captured and shown (its tail) only if the block fails; errors
    that are not noise still reach the log handlers.
    """
    flt = _DropNoise()
    root, mo = logging.getLogger(), logging.getLogger("modelopt.onnx")  # ModelOpt re-creates its handlers per call
    root_level = root.level
    root.setLevel(logging.ERROR)
    mo.addFilter(flt)
    root.addFilter(flt)
    buf = _io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    except BaseException:
        print(buf.getvalue()[-3000:])
        raise
    finally:
        mo.removeFilter(flt)
        root.removeFilter(flt)
        root.setLevel(root_level)


def quantize(onnx_path: Path | str, out_path: Path | str, calib: np.ndarray, method: str = "entropy",
             exclude_nodes: Sequence[str] = (), exclude_op_types: Sequence[str] = (),
             scales_from: Path | str | None = None) -> dict:
    """ModelOpt INT8 PTQ with explicit Q/DQ, calibrated on the CPU; excluded nodes end up reading float inputs.

    The non-INT8 parts stay FP32 here (`high_precision_dtype="fp32"`) so that ONNX
    Runtime measures INT8's own error; `to_fp16` makes the deployable variant.
    With `scales_from` (a model this function made from the same input, images
    and method) its activation scales are handed to ModelOpt as a calibration
    cache, so a second policy costs no second calibration pass: a tensor's scale
    depends only on its FP32 values on the calibration images, not on which other
    nodes are quantized. ModelOpt then sees only the first image (for its shape
    probes). The input is copied to a private folder first because ModelOpt
    writes intermediate files beside its input; the result is written atomically.
    A result made from the same input bytes, images, method, exclusions, scales
    and ModelOpt version is reused (`<out>.json` holds that key), so a second run
    of the study spends no calibration time.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    if calib.ndim != 4 or len(calib) == 0:
        raise ValueError(f"calibration images must be a non-empty [N, 3, H, W] array, got shape {calib.shape}")
    source = onnx.load(str(onnx_path))
    excluded = _resolve(source, exclude_nodes, exclude_op_types)
    key = _quantize_key(onnx_path, calib, method, excluded, exclude_op_types, scales_from)
    out_path, meta_path = Path(out_path), Path(f"{out_path}.json")
    if out_path.exists() and meta_path.exists():
        saved = io.read_json(meta_path)
        if saved.get("key") == key and saved.get("sha256") == trt.sha256(out_path):
            print(f"reusing {out_path.name} (same model, images, method, exclusions and ModelOpt)")
            return summary(out_path, excluded)
    meta_path.unlink(missing_ok=True)  # the key goes last: a half-written result is never reused
    from modelopt.onnx.quantization import quantize as modelopt_quantize
    with tempfile.TemporaryDirectory(prefix="mvlib-int8-") as tmp:
        src, dst = Path(tmp) / ARTIFACTS["fp32"], Path(tmp) / ARTIFACTS["int8"]  # scratch copies, same names
        shutil.copyfile(onnx_path, src)
        cache = calibration_cache(scales_from, Path(tmp) / "calib.cache") if scales_from else None
        with _quiet_logs():
            modelopt_quantize(str(src), quantize_mode="int8", calibration_data={INPUT: calib[:1] if cache else calib},
                              calibration_method=method, calibration_eps=["cpu"],
                              calibration_cache_path=str(cache) if cache else None,
                              nodes_to_exclude=[re.escape(n) + "$" for n in excluded] or None,
                              op_types_to_exclude=list(exclude_op_types) or None,
                              high_precision_dtype="fp32", output_path=str(dst), log_level="ERROR")
        model = isolate(onnx.load(str(dst)), excluded)
    with io.atomic_path(out_path) as tmp_path:
        onnx.save(model, str(tmp_path))
    io.write_json(meta_path, {"key": key, "sha256": trt.sha256(out_path)})
    return summary(model, excluded)


def _quantize_key(onnx_path: Path | str, calib: np.ndarray, method: str, excluded: Sequence[str],
                  op_types: Sequence[str], scales_from: Path | str | None) -> dict:
    """Everything a quantized model depends on, as hashes and names (the reuse key of `quantize`)."""
    import hashlib
    import importlib.metadata
    return {"source_sha256": trt.sha256(onnx_path), "calib_shape": list(calib.shape),
            "calib_sha256": hashlib.sha256(calib.tobytes()).hexdigest(), "method": method,
            "excluded": sorted(excluded), "op_types": sorted(op_types),
            "scales_sha256": trt.sha256(scales_from) if scales_from else None,
            "modelopt": importlib.metadata.version("nvidia-modelopt"), "onnx": onnx.__version__}


def calibration_cache(q_model: onnx.ModelProto | Path | str, path: Path | str) -> Path:
    """Write a Q/DQ model's activation scales as a TensorRT-style calibration cache (the format ModelOpt reads)."""
    graph = _load(q_model).graph
    consts = _constants(graph)
    lines = ["TRT-8501-EntropyCalibration2"]  # header line; ModelOpt skips it
    for n in graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in consts:
            scale = np.float32(np.asarray(consts[n.input[1]]).reshape(-1)[0])
            lines.append(f"{n.input[0]}: {struct.pack('!f', scale).hex()}")
    if len(lines) == 1:
        raise ValueError("the model has no activation QuantizeLinear: nothing to reuse as a calibration cache")
    io.write_text(path, "\n".join(lines) + "\n")
    return Path(path)


def _resolve(model: onnx.ModelProto, names: Sequence[str], op_types: Sequence[str]) -> list[str]:
    """Exact node names from a list of names and op types; unknown names are an error."""
    known = {n.name for n in model.graph.node}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"nodes to exclude not in the model: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    return list(dict.fromkeys(list(names) + [n.name for n in model.graph.node if n.op_type in set(op_types)]))


def summary(model: onnx.ModelProto | Path | str, excluded: Sequence[str] = ()) -> dict:
    """What a Q/DQ model quantizes: Q/DQ count, quantized nodes per op type, excluded node count."""
    model = _load(model)
    qnodes = quantized_nodes(model)
    per_op = count_ops(model, qnodes)
    return {"qdq_nodes": sum(n.op_type in QDQ for n in model.graph.node), "quantized_nodes": len(qnodes),
            "int8_weighted_ops": sum(per_op.get(op, 0) for op in WEIGHTED_OPS), "excluded_nodes": len(excluded),
            "quantized_per_op": per_op}


def to_fp16(q_path: Path | str, out_path: Path | str) -> Path:
    """The deployable variant: the float parts of a Q/DQ model in FP16 (ModelOpt AutoCast, I/O kept FP32)."""
    from modelopt.onnx.autocast import convert_to_f16
    with _quiet_logs():
        model = convert_to_f16(onnx.load(str(q_path)), low_precision_type="fp16", keep_io_types=True)
    with io.atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return Path(out_path)


# ---------------------------------------------------------------- evaluation
class Evaluator:
    """Evaluation images, their FP32 logits (ONNX Runtime, CPU) and labels; measures a model against them."""

    def __init__(self, images: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None, batch: int = 32):
        self.images, self.reference, self.labels, self.batch = images, reference, labels, batch

    @classmethod
    def from_onnx(cls, onnx_path: Path | str, images: np.ndarray, labels: np.ndarray | None = None,
                  batch: int = 32) -> "Evaluator":
        """Run the FP32 model once to get the reference logits."""
        ev = cls(images, np.empty(0), labels, batch)
        ev.reference = ev.logits(onnx_path)
        return ev

    def logits(self, model: onnx.ModelProto | Path | str, n: int | None = None) -> np.ndarray:
        """Logits of a model (proto or path) on the first `n` evaluation images, ONNX Runtime on the CPU."""
        import onnxruntime as ort
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        opts = ort.SessionOptions()
        # Basic optimizations only: Q/DQ pairs run as written (the ONNX semantics of the file, which TensorRT
        # also follows) instead of being fused into ONNX Runtime's own x86 int8 kernels, whose u8s8 arithmetic
        # can saturate on CPUs without VNNI and would measure ONNX Runtime rather than the model.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.log_severity_level = 3  # constant-folding notes about FP16 nodes are not our concern
        sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        x = self.images[:n]
        return np.concatenate([sess.run([OUTPUT], {INPUT: x[i:i + self.batch]})[0]
                               for i in range(0, len(x), self.batch)]).astype(np.float32)

    def metrics(self, out: np.ndarray) -> dict:
        """Metrics of logits `out` against FP32 (first len(out) images), with the pass verdict."""
        n = len(out)
        ref = self.reference[:n]
        m = metrics.compare(ref, out)
        mean = self.reference.mean(axis=0, keepdims=True)  # shared by every image; nearly all, with random weights
        m["cosine_centred"] = metrics.compare(ref - mean, out - mean)["cosine_mean"]
        if self.labels is not None:
            labels = self.labels[:n]
            m["top1_fp32"] = float(np.mean(ref.argmax(1) == labels))
            m["top1_int8"] = float(np.mean(out.argmax(1) == labels))
            m["top1_drop_points"] = 100.0 * (m["top1_fp32"] - m["top1_int8"])
        m["fails"] = "; ".join(failures(m))
        m["passes"] = not m["fails"]
        return m

    def evaluate(self, model: onnx.ModelProto | Path | str, n: int | None = None) -> dict:
        """Run a model and measure it."""
        return self.metrics(self.logits(model, n))


def failures(m: dict) -> list[str]:
    """Which parts of the pass criterion (CRITERION) metrics `m` miss."""
    out = []
    if m["top1_agreement"] < CRITERION["top1_agreement"]:
        out.append(f"top-1 agreement {100 * m['top1_agreement']:.1f}% < {100 * CRITERION['top1_agreement']:.0f}%")
    if m["cosine_mean"] < CRITERION["cosine_mean"]:
        out.append(f"mean cosine {m['cosine_mean']:.5f} < {CRITERION['cosine_mean']}")
    if "top1_drop_points" in m and m["top1_drop_points"] > CRITERION["top1_drop_points"]:
        out.append(f"top-1 drop {m['top1_drop_points']:.2f} points > {CRITERION['top1_drop_points']}")
    return out


def reference_stats(ev: Evaluator) -> dict:
    """How input-dependent the FP32 logits are: spread across classes vs across images, top-1 margin."""
    ref = ev.reference.astype(np.float64)
    top2 = np.sort(ref, axis=1)[:, -2:]
    shared = ref.mean(axis=0, keepdims=True)
    return {"images": int(len(ref)), "distinct_top1_classes": int(len(np.unique(ref.argmax(1)))),
            "logit_std_across_classes": float(ref.std(axis=1).mean()),
            "logit_std_across_images": float(ref.std(axis=0).mean()),
            "share_of_logits_common_to_all_images": float(np.linalg.norm(np.broadcast_to(shared, ref.shape))
                                                          / np.linalg.norm(ref)),
            "median_top1_margin": float(np.median(top2[:, 1] - top2[:, 0]))}


def describe_reference(stats: dict) -> str:
    """A sentence on how input-dependent the FP32 logits are (from `reference_stats`), for the notebook."""
    flat = stats["share_of_logits_common_to_all_images"] > 0.9
    return (f"The FP32 logits of the {stats['images']} evaluation images share "
            f"{100 * stats['share_of_logits_common_to_all_images']:.1f}% of their norm (the vector common to all "
            f"images); they pick {stats['distinct_top1_classes']} distinct top-1 class(es); the median gap between "
            f"the first and second logit is {stats['median_top1_margin']:.4f}. "
            + ("The outputs are nearly flat across images (as with random weights): mean cosine mostly measures the "
               "shared vector, and any INT8 error larger than that small gap flips top-1, so top-1 agreement is a "
               "harsh test here." if flat else
               "The outputs depend clearly on the image, so cosine and top-1 agreement measure the image-dependent "
               "part too."))


# ---------------------------------------------------------------- policies
def variant_path(exported, policy: str, method: str) -> Path:
    """Where one policy/method's Q/DQ model (FP32 elsewhere) is kept beside the export."""
    return exported.path(f"model.int8.{policy}.{method}.onnx")


def run_policy(exported, policy: str, method: str, calib: np.ndarray, ev: Evaluator,
               exclude_nodes: Sequence[str] = ()) -> dict:
    """Quantize with one policy and method, evaluate against FP32; one table row.

    Policies other than `all` reuse the activation scales of the `all` model of
    the same method when it exists (see `quantize`), so they cost no calibration.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    op_types: Sequence[str] = ()
    if policy == "fp_attention":
        exclude_nodes, op_types = attention_matmuls(exported.onnx), HIGH_PRECISION_OPS
    base = variant_path(exported, "all", method)
    scales_from = base if policy != "all" and base.exists() else None
    path = variant_path(exported, policy, method)
    start = time.perf_counter()
    info = quantize(exported.onnx, path, calib, method, exclude_nodes, op_types, scales_from=scales_from)
    row = {"policy": policy, "method": method, "high_precision": "fp32", "file": path.name,
           "calib_images": len(calib), "scales_from": scales_from.name if scales_from else "",
           "quantize_s": round(time.perf_counter() - start, 1),
           **{k: v for k, v in info.items() if k != "quantized_per_op"}, **ev.evaluate(path)}
    print(f"{policy:>12s} {method:>7s}: cosine {row['cosine_mean']:.5f}, top-1 agreement "
          f"{100 * row['top1_agreement']:.1f}%, {row['quantized_nodes']} nodes quantized -> "
          + ("passes" if row["passes"] else f"FAILS ({row['fails']})"))
    return row


def compare_policies(exported, calib: np.ndarray, ev: Evaluator, policies: Sequence[str] = ("all", "fp_attention"),
                     methods: Sequence[str] = METHODS) -> pd.DataFrame:
    """Every policy x method; `all` first for each method, since the others reuse its calibration."""
    order = sorted(policies, key=lambda p: p != "all")
    steps = [(p, m) for m in methods for p in order]
    rows = {(p, m): run_policy(exported, p, m, calib, ev)  # run_policy prints a line per step: no extra lines
            for p, m in progress(steps, "INT8 policies x calibration methods", unit="model", lines=False)}
    return pd.DataFrame([rows[(p, m)] for p in policies for m in methods])


def best_method(table: pd.DataFrame, policy: str = "all") -> str:
    """The calibration method with the higher mean cosine under `policy`."""
    rows = table[table.policy == policy]
    return str(rows.sort_values("cosine_mean", ascending=False).iloc[0]["method"])


# ---------------------------------------------------------------- sensitivity
def group_of(name: str, granularity: str) -> str:
    """The group of a node: its stage, its block (a residual block, or a MobileViT block's transformer), or itself."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
    parts = [p for p in name.split("/") if p]
    if granularity == "layer" or not parts:
        return name
    if parts[0] != "stages" or len(parts) < 2:
        return parts[0]  # stem, final_conv, head
    if granularity == "stage" or len(parts) < 4:
        return parts[1]
    if parts[3] == "transformer":
        return f"{parts[2]}/transformer"  # the transformer layers of a MobileViT block
    return parts[2]


def groups(names: Sequence[str], granularity: str) -> "OrderedDict[str, list[str]]":
    """Node names grouped at `granularity`, in graph order; a MobileViT block's non-transformer part: '<block>/conv'."""
    raw: OrderedDict[str, list[str]] = OrderedDict()
    for n in names:
        raw.setdefault(group_of(n, granularity), []).append(n)
    split = {k.split("/")[0] for k in raw if "/" in k and granularity == "block"}
    return OrderedDict((f"{k}/conv" if k in split else k, v) for k, v in raw.items())


def sensitivity(q_path: Path | str, ev: Evaluator, granularity: str = "block",
                n_images: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Rank groups by the error each causes quantized alone; exclude the worst until the model passes.

    Both steps work on the fully quantized model by rewiring Q/DQ (`isolate`), so
    the calibration scales are the ones ModelOpt computed. Ranking uses the first
    `n_images` evaluation images; exclusion first screens on those, then goes on
    until the model also passes on all evaluation images (`checked_on` says which
    set a row's `*_after` metrics come from). The policy is then re-made by
    ModelOpt itself (`run_policy`) and checked like the others. Returns one row per
    group and the excluded node names.
    """
    model = onnx.load(str(q_path))
    qnodes = quantized_nodes(model)
    grouped = groups(qnodes, granularity)
    rows = []
    for order, (g, names) in enumerate(progress(list(grouped.items()), f"sensitivity, one {granularity} at a time",
                                                unit="group")):
        inside = set(names)
        m = ev.evaluate(isolate(model, [n for n in qnodes if n not in inside]), n_images)
        rows.append({"group": g, "order": order, "nodes": len(names), "ops": _ops(model, names),
                     "error_alone": 1.0 - m["cosine_mean"], "cosine_alone": m["cosine_mean"],
                     "top1_agreement_alone": m["top1_agreement"], "max_abs_alone": m["max_abs"]})
    table = pd.DataFrame(rows).sort_values("error_alone", ascending=False).reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    table = table.assign(excluded=False, cosine_after=np.nan, top1_agreement_after=np.nan, passes_after=False,
                         checked_on=0)
    excluded: list[str] = []
    nxt = 0
    screens = [n_images, None] if n_images is not None and n_images < len(ev.images) else [None]
    for n in screens:  # cheap screening on the ranking images, then the full evaluation set
        m = ev.evaluate(isolate(model, excluded), n)
        if nxt:  # the screened state, re-checked on more images
            table.loc[nxt - 1, ["cosine_after", "top1_agreement_after", "passes_after", "checked_on"]] = \
                [m["cosine_mean"], m["top1_agreement"], m["passes"], m["n"]]
        while not m["passes"] and nxt < len(table):
            excluded += grouped[table.group[nxt]]
            m = ev.evaluate(isolate(model, excluded), n)
            table.loc[nxt, ["excluded", "cosine_after", "top1_agreement_after", "passes_after", "checked_on"]] = \
                [True, m["cosine_mean"], m["top1_agreement"], m["passes"], m["n"]]
            nxt += 1
    table.insert(0, "granularity", granularity)
    table["n_images"] = len(ev.images[:n_images])
    return table, excluded


def _ops(model: onnx.ModelProto, names: Sequence[str]) -> str:
    """A short op census of a group, e.g. 'Conv 3, Add 1'."""
    return ", ".join(f"{op} {k}" for op, k in sorted(count_ops(model, names).items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------- choice and deployment
def choose(table: pd.DataFrame) -> pd.Series | None:
    """The passing row that runs the most Conv/MatMul/Gemm in INT8 (then the highest cosine); None if none passes."""
    ok = table[(table.passes == True) & (table.int8_weighted_ops > 0)]  # noqa: E712 (pandas)
    if ok.empty:
        return None
    return ok.sort_values(["int8_weighted_ops", "cosine_mean"], ascending=False).iloc[0]


def write_chosen(exported, table: pd.DataFrame, ev: Evaluator, high_precision: str = "fp16",
                 images: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Write the chosen policy as model.int8.onnx (float parts in `high_precision`) with model.int8.json beside it.

    Returns the table with a row per written candidate and the JSON's content.
    If the FP16 conversion makes the chosen variant fail, its FP32-float variant
    (which passed) is written instead and the JSON says why. If no policy
    passes, no model.int8.onnx is left (an older one is removed) and the JSON
    says so (passes: false), so no later notebook picks up a model that failed.
    """
    if high_precision not in ("fp16", "fp32"):
        raise ValueError(f"high_precision must be 'fp16' or 'fp32', not {high_precision!r}")
    best = choose(table)
    target, meta_path = exported.artifact("int8"), exported.artifact("int8_record")
    meta = {"criterion": CRITERION, "images": images, "policies": list(table.policy.unique())}
    if best is None:
        target.unlink(missing_ok=True)
        meta.update(passes=False, file=None, reason="no policy/method passes the criterion on the evaluation images")
        io.write_json(meta_path, meta)
        print("NO INT8 POLICY PASSES: " + meta["reason"] + "; model.int8.onnx not written")
        return table, meta
    src = exported.path(best["file"])
    rows, note = [], ""
    if high_precision == "fp16":
        to_fp16(src, target)
        m = ev.evaluate(target)
        rows.append({**best.to_dict(), **m, "high_precision": "fp16", "file": target.name})
        if not m["passes"]:
            note = f"the FP16 conversion fails ({m['fails']}); written with FP32 float parts instead"
            print("WARNING: " + note)
    if high_precision == "fp32" or note:
        io.write_bytes(target, src.read_bytes())
        m = ev.evaluate(target)
        rows.append({**best.to_dict(), **m, "high_precision": "fp32", "file": target.name})
    written = rows[-1]
    meta.update(passes=bool(m["passes"]), file=target.name, policy=best["policy"], method=best["method"],
                high_precision=written["high_precision"], source_variant=best["file"], note=note,
                excluded_nodes=int(best["excluded_nodes"]), quantized_nodes=int(best["quantized_nodes"]),
                metrics={k: v for k, v in m.items() if k != "fails"}, fails=m["fails"])
    io.write_json(meta_path, meta)
    print(f"wrote {target} ({best['policy']}, {best['method']}, float parts {written['high_precision']}): "
          + ("passes" if m["passes"] else f"FAILS ({m['fails']})"))
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True), meta


# ---------------------------------------------------------------- TensorRT
def engine_name(file: str) -> str:
    """The engines-table name of a Q/DQ file: 'int8' for the chosen model, 'int8.<policy>.<method>' for a variant."""
    return "int8" if file == ARTIFACTS["int8"] else Path(file).stem.removeprefix("model.")


def engine_specs(exported, table: pd.DataFrame) -> list:
    """One engine per Q/DQ file of the accuracy table (the chosen model.int8.onnx and every policy variant)."""
    from mvlib import trt
    return [trt.EngineSpec(engine_name(file), exported.path(file)) for file in dict.fromkeys(table.file)]


def source_row(exported, table: pd.DataFrame, file: str) -> pd.Series:
    """The accuracy-table row describing the file an engine was built from.

    model.int8.onnx can have two rows (FP16 floats that failed, then the FP32-float file written in its
    place): its float type is the one model.int8.json records, never simply the first row's.
    """
    rows = table[table.file == file]
    if file == exported.artifact("int8").name and exported.artifact("int8_record").exists():
        written = io.read_json(exported.artifact("int8_record")).get("high_precision")
        rows = rows[rows.high_precision == written]
    if rows.empty:
        raise ValueError(f"no accuracy-table row describes {file}")
    return rows.iloc[-1]


def collect_outputs(runner, images: np.ndarray, profile) -> np.ndarray:
    """Logits of `images` through `runner` in chunks the engine's profile accepts, each copied out as it arrives.

    Runners may return views of one host buffer they reuse on the next call (polygraphy's TrtRunner
    does): without the copy every chunk would end up holding the last chunk's logits.
    """
    outs = []
    with runner:
        for chunk, n in profile.chunks(images):
            outs.append(np.array(runner.infer({INPUT: chunk})[OUTPUT], dtype=np.float32, copy=True)[:n])
    return np.concatenate(outs)


def int8_engine_accuracy(exported, table: pd.DataFrame, ev: Evaluator, engines: pd.DataFrame | None) -> pd.DataFrame:
    """Each built INT8 engine against FP32 like the ONNX Runtime rows, with its layers per output precision."""
    from mvlib import trt
    rows = []
    for r in trt.built_rows(engines).itertuples():
        engine = trt.runnable(trt.load(r.path))
        logits = collect_outputs(trt.runner(engine, f"trt-{r.engine}"), ev.images, engine.profile)
        src = source_row(exported, table, r.onnx)
        rows.append({"engine": r.engine, "policy": src.policy, "method": src.method,
                     "high_precision": src.high_precision, "file": r.onnx, **ev.metrics(logits),
                     **trt.layer_totals(trt.layer_summary(engine.dir))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- figures
def plot_accuracy(table: pd.DataFrame, title: str = ""):
    """Error (1 - mean cosine) and top-1 agreement per policy and method, with the pass thresholds."""
    import matplotlib.pyplot as plt
    table = table.copy()
    # model.int8.onnx can appear twice (FP16 floats, then the FP32-float fallback when FP16 fails): one label each.
    chosen = ARTIFACTS["int8"]
    table["label"] = table.policy + np.where(table.file == chosen,
                                             f"\n({chosen}, " + table.high_precision + " floats)", "")
    labels = list(dict.fromkeys(table.label))
    methods = list(dict.fromkeys(table.method))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(methods)
    for j, meth in enumerate(methods):
        sub = table[table.method == meth].set_index("label")
        xs = [i + (j - (len(methods) - 1) / 2) * width for i, lab in enumerate(labels) if lab in sub.index]
        rows = [sub.loc[lab] for lab in labels if lab in sub.index]
        err = [max(1.0 - r.cosine_mean, 1e-9) for r in rows]
        agree = [100 * r.top1_agreement for r in rows]
        axes[0].bar(xs, err, width, label=meth)
        axes[1].bar(xs, agree, width, label=meth)
        for x, e, a, r in zip(xs, err, agree, rows, strict=True):
            mark = "pass" if r.passes else "fail"
            axes[0].text(x, e, f"{r.cosine_mean:.4f}\n{mark}", ha="center", va="bottom", fontsize=6)
            axes[1].text(x, a, f"{a:.1f}\n{mark}", ha="center", va="bottom", fontsize=6)
    axes[0].axhline(1 - CRITERION["cosine_mean"], color="k", ls="--", lw=1, label="pass if below")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("1 - mean cosine vs FP32 (lower is better)")
    axes[1].axhline(100 * CRITERION["top1_agreement"], color="k", ls="--", lw=1, label="pass if above")
    axes[1].set_ylabel("top-1 agreement with FP32 (%)")
    axes[1].set_ylim(max(0, 100 * table.top1_agreement.min() - 5), 106)
    for ax in axes:
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_sensitivity(table: pd.DataFrame, title: str = ""):
    """Error per group quantized alone (graph order, excluded groups in red) and the exclusion path."""
    import matplotlib.pyplot as plt
    by_order = table.sort_values("order")
    n = len(by_order)
    fig, axes = plt.subplots(1, 2, figsize=(13, max(4.0, 0.22 * n + 1.5)), gridspec_kw={"width_ratios": [3, 2]})
    colors = ["tab:red" if e else "tab:blue" for e in by_order.excluded]
    axes[0].barh(range(n), np.maximum(by_order.error_alone, 1e-12), color=colors)
    axes[0].set_xscale("log")
    axes[0].set_yticks(range(n), [_short(g) for g in by_order.group], fontsize=7 if n < 40 else 5)
    axes[0].invert_yaxis()  # input at the top, output at the bottom
    axes[0].set_xlabel("1 - mean cosine vs FP32 with only this group INT8")
    axes[0].set_title("red: excluded by the sensitivity policy", fontsize=9)
    path = table[table.excluded].sort_values("rank")
    ax = axes[1]
    if len(path):
        ax.plot(path["rank"], np.maximum(1 - path.cosine_after, 1e-12), "o-", label="1 - mean cosine")
        ax.axhline(1 - CRITERION["cosine_mean"], color="tab:blue", ls="--", lw=1, label="cosine threshold")
        ax.set_yscale("log")
        ax.set_xticks(list(path["rank"]))
        ax2 = ax.twinx()
        ax2.plot(path["rank"], 100 * path.top1_agreement_after, "s--", color="tab:green", label="top-1 agreement")
        ax2.axhline(100 * CRITERION["top1_agreement"], color="tab:green", ls=":", lw=1, label="top-1 threshold")
        ax2.set_ylim(min(90.0, 100 * path.top1_agreement_after.min() - 2), 100.5)
        ax2.set_ylabel("top-1 agreement with FP32 (%)")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="lower left")
    else:
        ax.text(0.5, 0.5, "passes with nothing excluded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("worst groups excluded (by rank)")
    ax.set_ylabel("1 - mean cosine after excluding")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _short(group: str) -> str:
    """A node or group name short enough for a tick label."""
    parts = [p for p in group.split("/") if p]
    return "/".join(parts[-2:]) if len(parts) > 2 else group
