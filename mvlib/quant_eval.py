"""Q/DQ models measured against FP32: the evaluator, its criterion record and the per-group sensitivity analysis.

Serves notebook 04 (INT8 and FP8 alike, each judged by its precision's criterion in `mvlib.precisions`). Every
Q/DQ model is an ONNX file, so ONNX Runtime on the CPU measures it anywhere against the FP32 logits of the same
evaluation images. The sensitivity analysis quantizes one group (stage, block or layer) at a time by rewiring the
fully quantized model's Q/DQ (`quant_graph.isolate`), ranks the groups by the output error each causes, and
excludes the worst until the model passes.
"""
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pandas as pd

from mvlib import accuracy, io, metrics, ort_providers, precisions
from mvlib.accuracy import INPUT, OUTPUT
from mvlib.progress import progress
from mvlib.quant_graph import count_ops, isolate, quantized_nodes

GRANULARITIES = ("stage", "block", "layer")
JUDGES_AT_ONCE = 4  # sensitivity groups judged at a time on the CUDA EP (each its own session and evaluation images)


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

    def session(self, model: onnx.ModelProto | Path | str):
        """The ONNX Runtime session every model is judged in (the one place its provider is chosen): the CUDA EP
        where it runs, else the CPU (mvlib.ort_providers)."""
        import onnxruntime as ort
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        opts = ort.SessionOptions()
        # Basic optimizations only: Q/DQ pairs run as written (the ONNX semantics of the file, which TensorRT
        # also follows) instead of being fused into ONNX Runtime's own x86 int8 kernels, whose u8s8 arithmetic
        # can saturate on CPUs without VNNI and would measure ONNX Runtime rather than the model.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.log_severity_level = 3  # constant-folding notes about FP16 nodes are not our concern
        return ort.InferenceSession(src, opts, providers=ort_providers.providers_for_judging())

    def logits(self, model: onnx.ModelProto | Path | str, n: int | None = None) -> np.ndarray:
        """Logits of a model (proto or path) on the first `n` evaluation images, in `session`."""
        sess = self.session(model)
        x = self.images[:n]
        return np.concatenate([sess.run([OUTPUT], {INPUT: x[i:i + self.batch]})[0]
                               for i in range(0, len(x), self.batch)]).astype(np.float32)

    def metrics(self, out: np.ndarray, precision: str) -> dict:
        """Metrics of logits `out` against FP32 (first len(out) images), with `precision`'s verdict."""
        n = len(out)
        ref = self.reference[:n]
        m = metrics.compare(ref, out)
        mean = self.reference.mean(axis=0, keepdims=True)  # shared by every image; nearly all, with random weights
        m["cosine_centred"] = metrics.compare(ref - mean, out - mean)["cosine_mean"]
        if self.labels is not None:
            labels = self.labels[:n]
            m["top1_fp32"] = float(np.mean(ref.argmax(1) == labels))
            m["top1_quantized"] = float(np.mean(out.argmax(1) == labels))
            m["top1_drop_points"] = 100.0 * (m["top1_fp32"] - m["top1_quantized"])
        m["fails"] = "; ".join(accuracy.judge(ref, out, m, precision)[0])
        m["passes"] = not m["fails"]
        return m

    def evaluate(self, model: onnx.ModelProto | Path | str, precision: str, n: int | None = None) -> dict:
        """Run a model and measure it against `precision`'s criterion."""
        return self.metrics(self.logits(model, n), precision)

    def fingerprint(self) -> str:
        """SHA-256 of what every verdict depends on besides the model: the images, the FP32 logits, the labels."""
        h = hashlib.sha256()
        for part in (self.images, self.reference, self.labels):
            arr = np.ascontiguousarray(part if part is not None else np.empty(0))
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


def criterion(precision: str) -> dict:
    """The bounds a quantized precision is held to, as model.<precision>.json and the manifest record them."""
    tol = precisions.quantized(precision).tolerance
    return {"top1_agreement": tol.min_top1_agreement, "cosine_mean": tol.min_cosine_mean,
            "top1_drop_points": tol.max_top1_drop_points}


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
               "shared vector, and any quantization error larger than that small gap flips top-1, so top-1 "
               "agreement is a harsh test here." if flat else
               "The outputs depend clearly on the image, so cosine and top-1 agreement measure the image-dependent "
               "part too."))


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


def sensitivity(q_path: Path | str, ev: Evaluator, granularity: str = "block", n_images: int | None = None,
                precision: str = "int8") -> tuple[pd.DataFrame, list[str]]:
    """`analyse`'s table and exclusions, kept beside the model (`<model>.sensitivity.<granularity>.csv`): a rerun
    with the same model bytes, evaluator (images, FP32 logits, labels), settings, criterion and ONNX Runtime
    (version and judging providers) reads them back instead of judging every group again (io.cached keeps the
    key). A fresh analysis is read back from its file too, so a reuse returns the very same table."""
    import onnxruntime as ort
    q_path = Path(q_path)
    out = q_path.with_name(f"{q_path.stem}.sensitivity.{granularity}.csv")
    key = {"model_sha256": io.sha256(q_path), "evaluator": ev.fingerprint(), "granularity": granularity,
           "n_images": n_images, "precision": precision, "criterion": criterion(precision),
           "onnxruntime": ort.__version__, "providers": str(ort_providers.providers_for_judging())}

    def make(tmp: Path) -> dict:
        table, excluded = analyse(q_path, ev, granularity, n_images, precision)
        table.to_csv(tmp, index=False)
        return {"excluded": excluded}
    io.cached(out, key, make, f"{precisions.label(precision)} sensitivity analysis")
    table = pd.read_csv(out, keep_default_na=False, na_values=[""], float_precision="round_trip")
    return table, list(io.stored_record(out)["excluded"])


def analyse(q_path: Path | str, ev: Evaluator, granularity: str = "block", n_images: int | None = None,
            precision: str = "int8") -> tuple[pd.DataFrame, list[str]]:
    """Rank groups by the error each causes quantized alone; exclude the worst until the model passes.

    Both steps work on the fully quantized model by rewiring Q/DQ (`isolate`), so
    the calibration scales are the ones ModelOpt computed. Ranking uses the first
    `n_images` evaluation images; exclusion first screens on those, then goes on
    until the model also passes on all evaluation images (`checked_on` says which
    set a row's `*_after` metrics come from). The policy is then re-made by
    ModelOpt itself (`run_policy`) and checked like the others. Returns one row per
    group (labelled with the model's `precision`) and the excluded node names.
    """
    model = onnx.load(str(q_path))
    qnodes = quantized_nodes(model)
    grouped = groups(qnodes, granularity)
    rows = []
    for order, ((g, names), m) in enumerate(zip(grouped.items(), _alone_each(model, qnodes, grouped, ev, precision,
                                                                             n_images, granularity), strict=True)):
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
        m = ev.evaluate(isolate(model, excluded), precision, n)
        if nxt:  # the screened state, re-checked on more images
            table.loc[nxt - 1, ["cosine_after", "top1_agreement_after", "passes_after", "checked_on"]] = \
                [m["cosine_mean"], m["top1_agreement"], m["passes"], m["n"]]
        while not m["passes"] and nxt < len(table):
            excluded += grouped[table.group[nxt]]
            m = ev.evaluate(isolate(model, excluded), precision, n)
            table.loc[nxt, ["excluded", "cosine_after", "top1_agreement_after", "passes_after", "checked_on"]] = \
                [True, m["cosine_mean"], m["top1_agreement"], m["passes"], m["n"]]
            nxt += 1
    table.insert(0, "granularity", granularity)
    table.insert(0, "precision", precision)
    table["n_images"] = len(ev.images[:n_images])
    return table, excluded


def _alone_each(model: onnx.ModelProto, qnodes: Sequence[str], grouped: "OrderedDict[str, list[str]]",
                ev: Evaluator, precision: str, n_images: int | None, granularity: str) -> list[dict]:
    """Each group's metrics with only that group quantized, in the groups' order. On the CUDA EP, JUDGES_AT_ONCE
    groups are judged at a time (each in its own session: ONNX Runtime lets go of the GIL while it builds and runs
    one); on the CPU one at a time, as each session already has every core."""
    def alone(names: Sequence[str]) -> dict:
        inside = set(names)
        return ev.evaluate(isolate(model, [n for n in qnodes if n not in inside]), precision, n_images)
    with ThreadPoolExecutor(_judges(), thread_name_prefix="mvlib-sensitivity") as pool:
        pending = [pool.submit(alone, names) for names in grouped.values()]
        return [f.result() for f in progress(pending, f"sensitivity, one {granularity} at a time", unit="group")]


def _judges() -> int:
    """How many groups are judged at a time: JUDGES_AT_ONCE on the CUDA EP, else one."""
    return JUDGES_AT_ONCE if ort_providers.judge_on_gpu() else 1


def _ops(model: onnx.ModelProto, names: Sequence[str]) -> str:
    """A short op census of a group, e.g. 'Conv 3, Add 1'."""
    return ", ".join(f"{op} {k}" for op, k in sorted(count_ops(model, names).items(), key=lambda kv: -kv[1]))
