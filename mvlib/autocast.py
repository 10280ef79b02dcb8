"""Models converted to a lower float type (FP16) by NVIDIA ModelOpt AutoCast, and their accuracy through
polygraphy's Comparator (notebook 03).

Serves: notebooks 03 to 05 (03: the conversion and its accuracy; 04: `to_fp16` makes the deployable FP16-float
variant of a Q/DQ model; 05: `ensure_fp16` reuses notebook 03's conversion).

Precision is decided in the ONNX graph (TensorRT 11 has no FP16 builder flag): AutoCast rewrites the FP32 model
into FP16 with Casts, keeps the graph's inputs and outputs FP32, and keeps in FP32 the nodes its rules flag. Every
variant stays an ONNX file that ONNX Runtime runs on the CPU, so its accuracy is measured here as well as in
TensorRT, by the one criterion of `mvlib.precisions`.
"""
import contextlib
import functools
import importlib.metadata
import io as _io
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd

from mvlib import accuracy, figures, io, metrics, ort_providers, precisions, tiers
from mvlib.quant_graph import canonical, constant_tensors
from mvlib.quant_graph import save as save_canonical
from mvlib.tensorrt import layers as trt_layers
from mvlib.tensorrt import shapes
from mvlib.tensorrt import table as trt_table

DATA_MAX = 512.0  # AutoCast's default: above 512 the FP16 spacing is >= 0.5, so such tensors stay FP32
CALIB_BATCHES = (4, 4)  # AutoCast's reference run: two batches of random images in the model's input range
AUTOCAST_LOGGER = "modelopt.onnx.autocast"
MOVES_DATA = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice", "Gather", "Flatten", "Identity",
              "Split", "Expand", "Tile", "Pad"}
NODE_COLUMNS = ["node", "op_type", "float_tensors", "rule", "autocast_reason", "effect"]
_SKIP = re.compile(r"^Skipping node (?P<node>.+?): (?P<why>.+)$", re.S)
_CONVERTED = re.compile(r"Converted (?P<low>\d+)/(?P<total>\d+) nodes")


# --- FP16 conversion ------------------------------------------------------------------------------------
@dataclass
class Fp16Model:
    """An AutoCast FP16 model: its path, the nodes that stayed FP32 (and why), and a summary."""
    path: Path
    fp32_nodes: pd.DataFrame
    summary: dict

    def summary_frame(self) -> pd.DataFrame:
        """The summary as a one-row table (AutoCast's warnings joined into one cell)."""
        row = {"file": self.path.name, **self.summary, "warnings": " | ".join(self.summary.get("warnings", [])),
               **{f"io_{k}": v for k, v in io_types(self.path).items()}}
        return pd.DataFrame([row])


class _Records(logging.Handler):
    """Collects a library's log messages (AutoCast's are its only record of why each node stayed FP32)."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the message and its level."""
        self.messages.append((record.levelno, record.getMessage()))


@contextlib.contextmanager
def captured_logs(name: str = "modelopt.onnx") -> Iterator[_Records]:
    """Run a ModelOpt call quietly: logger `name`'s messages (INFO and up) are collected on the handler this yields,
    other loggers show errors only, polygraphy warnings only, and what the call prints is shown (its tail) only
    if it fails. One line per node or tensor would otherwise drown the notebook."""
    from polygraphy.logger import G_LOGGER
    logger, root = logging.getLogger(name), logging.getLogger()
    handler, saved = _Records(), (logger.level, logger.propagate, root.level)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    root.setLevel(logging.ERROR)
    printed = _io.StringIO()
    try:
        with G_LOGGER.verbosity(G_LOGGER.WARNING), contextlib.redirect_stdout(printed), \
                contextlib.redirect_stderr(printed):
            yield handler
    except BaseException:
        said = [msg for lvl, msg in handler.messages if lvl >= logging.WARNING]
        print("\n".join(said + [printed.getvalue()])[-3000:])
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        root.setLevel(saved[2])


def _dtypes(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of a model (after ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({name: t.data_type for name, t in constant_tensors(g).items()})
    return types


def fp32_nodes(converted: onnx.ModelProto, skipped: dict[str, str]) -> pd.DataFrame:
    """Nodes that AutoCast kept FP32 or that still touch an FP32 tensor, with AutoCast's reason and the effect."""
    types = _dtypes(converted)
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    rows = []
    for node in converted.graph.node:
        if node.op_type == "Cast":
            continue
        tensors = [t for t in [*node.input, *node.output] if t]
        floats = {types.get(t) for t in tensors} & {f32, f16}
        if node.name not in skipped and f32 not in floats:
            continue
        if f32 not in floats:
            effect = "no float math (integer shape arithmetic only): FP32 here costs nothing"
        elif node.op_type in MOVES_DATA:
            effect = "moves FP32 data between Casts (no arithmetic, but two extra Casts)"
        else:
            effect = "computes in FP32"
        why = skipped.get(node.name, "not flagged by a rule; AutoCast's converter left an FP32 tensor here")
        rows.append({"node": node.name, "op_type": node.op_type, "float_tensors": "FP32" if f32 in floats else "none",
                     "rule": _rule(why), "autocast_reason": why, "effect": effect})
    return pd.DataFrame(rows, columns=NODE_COLUMNS)


def _rule(why: str) -> str:
    """Which AutoCast rule a reason string comes from."""
    for needle, rule in (("reference IO out of range", "data_max (activation range)"),
                         ("initializer", "init_max (weight range)"), ("depth of reduction", "reduction depth"),
                         ("DisabledOpTypes", "op type excluded"), ("DisabledNodeNameRegexRule", "node name excluded")):
        if needle in why:
            return rule
    return "other"


def lower_float(precision: str) -> str:
    """AutoCast's name of the lower float type of `precision` (ours: 'fp16'); ValueError for one it does not make."""
    p = precisions.get(precision)
    if p.quantized or p.torch_dtype in (None, "float32"):
        raise ValueError(f"AutoCast converts FP32 models to a lower float type; {p.label} is not one")
    return p.name


def to_fp16(src: Path | str, dst: Path | str, rules: bool = True, seed: int = 0, data_max: float = DATA_MAX,
            op_types_to_exclude: Sequence[str] = (), precision: str = "fp16"
            ) -> tuple[onnx.ModelProto, list[tuple[int, str]]]:
    """The one FP16 conversion: AutoCast `src` to FP16 (or another lower float `precision`) with I/O kept FP32;
    write `dst` atomically, checked, canonical.

    With `rules` (an FP32 model) AutoCast runs the model on random images and keeps in FP32 the nodes its rules
    flag (`data_max`, `op_types_to_exclude`). Without (a Q/DQ model: notebook 04's deployable variant) every float
    node goes FP16, as ModelOpt's own `high_precision_dtype="fp16"` does: a reference run of a Q/DQ model would
    measure the quantization, not FP16's range. Returns the model and AutoCast's log messages."""
    from modelopt.onnx.autocast import convert_to_f16, convert_to_mixed_precision
    src, low = Path(src), lower_float(precision)
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist; export the FP32 model first (export.ensure_exported)")
    with tempfile.TemporaryDirectory() as tmp, captured_logs(AUTOCAST_LOGGER) as log:
        if rules:
            calib = Path(tmp) / "calibration.json"  # polygraphy JSON, which AutoCast's reference runner reads
            _save_calibration(calib, shapes.onnx_input(src)[1][2], seed)
            model = convert_to_mixed_precision(
                str(src), low_precision_type=low, keep_io_types=True, data_max=data_max,
                op_types_to_exclude=list(op_types_to_exclude), calibration_data=str(calib),
                providers=["cpu"], trt_plugins=[])  # fresh lists: AutoCast appends to `providers` in place
        else:
            model = convert_to_f16(onnx.load(str(src)), low_precision_type=low, keep_io_types=True)
    # canonical: AutoCast's value_info order changes with the hash seed; checked before anything is written
    onnx.checker.check_model(canonical(model), full_check=True)
    save_canonical(model, dst)
    return model, log.messages


def _save_calibration(path: Path, img_size: int, seed: int) -> None:
    """AutoCast's reference images: CALIB_BATCHES fresh random batches (seed + 1), in polygraphy's JSON."""
    from polygraphy.json import save_json
    save_json(accuracy.feeds(CALIB_BATCHES, img_size, seed=seed + 1), str(path))


def convert_fp16(src: Path | str, dst: Path | str, seed: int = 0, data_max: float = DATA_MAX,
                 op_types_to_exclude: Sequence[str] = (), precision: str = "fp16") -> Fp16Model:
    """Convert FP32 `src` to FP16 (or `precision`) with AutoCast's rules (`to_fp16`); which nodes stayed FP32 and
    why, a summary."""
    model, messages = to_fp16(src, dst, True, seed, data_max, op_types_to_exclude, precision)
    skipped = {m["node"]: m["why"].strip() for lvl, msg in messages if (m := _SKIP.match(msg))}
    nodes = fp32_nodes(model, skipped)
    counts = next((m.groupdict() for _, msg in messages if (m := _CONVERTED.search(msg))), {})
    source = onnx.load(str(src), load_external_data=False)
    summary = {
        "nodes_before": len(source.graph.node), "nodes_after": len(model.graph.node),
        "casts_added": _count(model, "Cast") - _count(source, "Cast"),
        "autocast_fp16_nodes": int(counts.get("low", -1)), "autocast_nodes": int(counts.get("total", -1)),
        "kept_fp32_by_rule": len(skipped), "fp32_float_nodes": int((nodes["float_tensors"] == "FP32").sum()),
        "data_max": data_max, "calibration": f"{sum(CALIB_BATCHES)} random images in [0, 1], seed {seed + 1}",
        "warnings": [msg for lvl, msg in messages if lvl >= logging.WARNING],
    }
    for warning in summary["warnings"]:
        print(f"AutoCast warning: {warning}")
    return Fp16Model(Path(dst), nodes, summary)


def _count(model: onnx.ModelProto, op_type: str) -> int:
    """Number of nodes of one op type."""
    return sum(n.op_type == op_type for n in model.graph.node)


def tool_versions() -> dict:
    """ModelOpt's and onnx's versions, part of the reuse key of every file ModelOpt converts or quantizes."""
    return {"modelopt": importlib.metadata.version("nvidia-modelopt"), "onnx": onnx.__version__}


def conversion_key(src: Path | str, **settings) -> dict:
    """What an AutoCast conversion of `src` depends on: its bytes, ModelOpt and onnx, and the conversion's settings."""
    return {"source_sha256": io.sha256(src), **tool_versions(), **settings}


def ensure_fp16(src: Path | str, seed: int = 0, data_max: float = DATA_MAX, precision: str = "fp16") -> Fp16Model:
    """model.fp16.onnx (the model file of `precision`) beside `src`, reused when made from the same bytes with the
    same ModelOpt and settings."""
    src = Path(src)
    dst = src.with_name(precisions.get(precision).artifact)  # one file per precision: its cache key needs no name
    key = conversion_key(src, seed=seed, data_max=data_max, keep_io_types=True)

    def make(tmp: Path) -> dict:
        made = convert_fp16(src, tmp, seed=seed, data_max=data_max, precision=precision)
        return {"summary": list(made.summary.items()), "fp32_nodes": made.fp32_nodes.to_dict(orient="records")}

    _, reused = io.cached(dst, key, make, f"AutoCast {precisions.label(precision)}")
    record = io.stored_record(dst)
    result = Fp16Model(dst, pd.DataFrame(record["fp32_nodes"], columns=NODE_COLUMNS), dict(record["summary"]))
    if not reused:
        print(f"{dst.name}: {result.summary['autocast_fp16_nodes']}/{result.summary['autocast_nodes']} nodes "
              f"{precisions.label(precision)}, "
              f"{result.summary['kept_fp32_by_rule']} kept FP32 by a rule, {result.summary['fp32_float_nodes']} "
              "still touch FP32 data")
    return result


def io_types(onnx_path: Path | str) -> dict[str, str]:
    """Element type name of each graph input and output."""
    g = onnx.load(str(onnx_path), load_external_data=False).graph
    return {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in [*g.input, *g.output]}


# --- accuracy -----------------------------------------------------------------------------------------
def images(n_images: int, batches: Sequence[int], img_size: int, seed: int) -> np.ndarray:
    """At least `n_images` fresh random images, enough to fill whole batches of every size in `batches`."""
    if n_images < 1:
        raise ValueError(f"n_images={n_images}: compare at least one image (64 in the full profile)")
    n_total = max(math.ceil(n_images / b) * b for b in batches)
    return metrics.random_images(n_total, img_size, seed=seed)


def batch_feeds(imgs: np.ndarray, batches: Sequence[int], n_images: int) -> list[dict]:
    """Feeds of whole batches for each size in `batches`, each covering the first ceil(n/b)*b images."""
    data = []
    for b in batches:
        n = math.ceil(n_images / b) * b
        data += [{accuracy.INPUT: imgs[i:i + b]} for i in range(0, n, b)]
    return data


def compare_runners(runners: Sequence, reference: str, imgs: np.ndarray, batches: Sequence[int], n_images: int,
                    judged: dict[str, str], consistency: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every runner on the same images at each batch size; a table per runner and batch, and per-sample errors.

    Each runner is compared with runner `reference` at the same batch and judged by the criterion of its
    precision (`judged`: runner name -> precision name). With `consistency`, the reference gets a row too: at
    the first batch size it is the reference, at the others it is compared with itself at the first batch size
    (the batching noise floor).
    """
    return score(accuracy.run(list(runners), batch_feeds(imgs, batches, n_images)), reference, batches, judged,
                 consistency)


def score(results, reference: str, batches: Sequence[int], judged: dict[str, str],
          consistency: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """compare_runners' tables from the runners' outputs (`results`: runner name -> outputs per feed)."""
    outs = {name: _by_batch(iters) for name, iters in results.items()}  # runners keep the names we gave
    ref = outs[reference]
    rows, errors = [], []
    for name, by_batch in outs.items():
        for b in batches:
            out = by_batch[b]
            if name == reference:
                if not consistency:
                    continue
                if b == batches[0]:
                    rows.append(_reference_row(name, b, len(ref[b])))
                    continue
                n = min(len(out), len(ref[batches[0]]))  # the same images, fed one batch size and another
                base, out, base_name = ref[batches[0]][:n], out[:n], f"{reference} (batch {batches[0]})"
            else:
                base, base_name = ref[b], reference
            row, per_sample = _score(name, base_name, b, base, out, judged[name])
            rows.append(row)
            errors.append(per_sample)
    return combine(pd.DataFrame(rows), columns=COLUMNS), combine(*errors) if errors else _empty_errors()


def _by_batch(iters) -> dict[int, np.ndarray]:
    """A runner's logits concatenated per batch size, in feed order."""
    grouped: dict[int, list] = {}
    for it in iters:
        out = np.asarray(it[accuracy.OUTPUT])
        grouped.setdefault(out.shape[0], []).append(out)
    return {b: np.concatenate(v) for b, v in grouped.items()}


def _reference_row(name: str, batch: int, n: int) -> dict:
    """The reference's own row: no metrics, status 'reference'."""
    return {"runner": name, "reference": "-", "batch": batch, "n": n, "status": "reference"}


def _score(name: str, ref_name: str, batch: int, ref: np.ndarray, out: np.ndarray, precision: str):
    """Metrics over all samples, the criterion's verdict for `precision`, and the per-sample error rows."""
    tol = precisions.get(precision).tolerance
    m = metrics.compare(ref, out)
    fails, verdicts = accuracy.judge(ref, out, m, precision)
    row = {"runner": name, "reference": ref_name, "batch": batch, **m, "atol": tol.atol, "rtol": tol.rtol,
           "min_cosine": tol.min_cosine, "samples_within_tol": int(sum(verdicts)), "passed": not fails,
           "status": "ok" if not fails else "outside tolerance"}
    per_sample = pd.DataFrame({"runner": name, "reference": ref_name, "batch": batch, "sample": np.arange(len(ref)),
                               **metrics.per_sample(ref, out), "within_tol": verdicts})
    return row, per_sample


COLUMNS = ["runner", "reference", "batch", "n", "status", "passed", "max_abs", "mean_abs", "cosine_mean", "cosine_min",
           "top1_agreement", "samples_within_tol", "atol", "rtol", "min_cosine"]


def combine(*tables: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Stack tables (empty ones dropped), in a fixed column order."""
    kept = [t for t in tables if t is not None and len(t)]
    out = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame()
    if columns is not None:
        out = out.reindex(columns=list(columns))
    for col in ("batch", "n", "samples_within_tol", "sample"):  # counts stay integers next to empty rows
        if col in out:
            out[col] = out[col].astype("Int64")
    return out


def _empty_errors() -> pd.DataFrame:
    """A per-sample error table with no rows."""
    return pd.DataFrame(columns=["runner", "reference", "batch", "sample", "max_abs", "mean_abs", "cosine",
                                 "top1_agree", "within_tol"])


def skipped(reason: str, runners: Sequence[str], reference: str, batches: Sequence[int]):
    """Rows saying why a stage did not run (the reason its skip gave), and no per-sample errors."""
    reasons = [reason or "not run"]
    trt_ok, trt_why = tiers.runtime_status()
    if not trt_ok and trt_why not in reasons[0]:  # a skip's reason may name another missing piece (the GPU) alone
        reasons.insert(0, trt_why)
    status = f"skipped: {'; '.join(reasons)}"
    rows = [{"runner": r, "reference": reference, "batch": b, "status": status} for r in runners for b in batches]
    return combine(pd.DataFrame(rows), columns=COLUMNS), _empty_errors()


# --- the notebook's stages ----------------------------------------------------------------------------
def cpu_accuracy(model, fp32_onnx: Path, fp16_onnx: Path, imgs: np.ndarray, n_images: int, batches: Sequence[int],
                 precision: str = "fp16"):
    """PyTorch FP32, ONNX Runtime FP32 and FP16 (the file of `precision`) on the CPU, each against PyTorch FP32 at
    the same batch, each judged by its precision (runner onnxrt-<precision>)."""
    low = f"onnxrt-{precisions.get(precision).name}"
    torch_threads, ort_threads = cpu_threads()
    providers = ort_providers.providers_for_judging()  # chosen here: a spawned process starts with no on_cpu()
    makers = [functools.partial(accuracy.torch_runner, model, imgs.shape[-1], "pytorch-fp32"),
              functools.partial(accuracy.onnxrt_runner, fp32_onnx, "onnxrt-fp32", ort_threads, providers),
              functools.partial(accuracy.onnxrt_runner, fp16_onnx, low, ort_threads, providers)]
    judged = {"pytorch-fp32": "fp32", "onnxrt-fp32": "fp32", low: precision}
    # the three side by side, each on its share of the cores, not one after the other on all of them: ONNX Runtime's
    # numbers are the same either way, PyTorch's move in the last bits with its thread count (run_apart)
    results = accuracy.run_apart(makers, batch_feeds(imgs, batches, n_images), [torch_threads, 1, 1])
    return score(results, "pytorch-fp32", batches, judged)


def cpu_threads() -> tuple[int, int]:
    """cpu_accuracy's threads for PyTorch and for each ONNX Runtime runner: a third of the cores each, or all but
    two for PyTorch where ONNX Runtime judges on the CUDA EP (its runners then need a thread of their own only)."""
    cores = len(os.sched_getaffinity(0))
    if ort_providers.judge_on_gpu():
        return max(1, cores - 2), 1
    return accuracy.share(3), accuracy.share(3)


def engine_accuracy(engines: pd.DataFrame | None, fp32_onnx: Path, imgs: np.ndarray, n_images: int,
                    batches: Sequence[int]):
    """Each built engine (runner `trt-<engine>`, engines named by their precision) against ONNX Runtime FP32 at
    the profile's batches, judged by its precision's criterion."""
    made = trt_table.runners(engines, batches=batches)
    runners = [accuracy.onnxrt_runner(fp32_onnx, "onnxrt-fp32")] + [trt for _, _, trt in made]
    judged = {f"trt-{r.engine}": precisions.get(r.engine).name for r, _, _ in made}
    return compare_runners(runners, "onnxrt-fp32", imgs, batches, n_images, judged, consistency=False)


def engine_layers(engines: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every engine's layers (from the engine inspector, where the engine could be inspected) and a summary row each."""
    per_layer, totals = [], []
    for r in trt_table.built_rows(engines).itertuples():
        layers = trt_layers.layer_summary(Path(r.path).parent)
        per_layer.append(layers.assign(engine=r.engine))
        totals.append({"engine": r.engine, **trt_layers.layer_totals(layers),
                       "plan_mib": round(r.engine_bytes / 2**20, 2)})
    return pd.concat(per_layer, ignore_index=True), pd.DataFrame(totals)


# --- the figure ------------------------------------------------------------------------------------------
FLOOR = 1e-12  # log axes: smaller values (exact agreement included) are drawn at this floor


def error_figure(errors_csv: Path | str, table_csv: Path | str):
    """Distributions of per-sample max abs error and 1 - cosine, per runner and batch, from the saved tables."""
    errors, table = pd.read_csv(errors_csv), pd.read_csv(table_csv)
    groups = [(f"{r} @ {b}\nvs {ref}", g)
              for (r, b, ref), g in errors.groupby(["runner", "batch", "reference"], sort=False)]
    fig, axes = figures.new(1, 2, size=(12, 1.2 + 0.55 * max(len(groups), 1)), sharey=True)
    for ax, col, label in ((axes[0], "max_abs", "max |logit error| per image"),
                           (axes[1], "cosine", "1 - cosine similarity per image")):
        values = [np.maximum(g[col].to_numpy() if col != "cosine" else 1 - g[col].to_numpy(), FLOOR) for _, g in groups]
        if values:
            ax.boxplot(values, vert=False, showfliers=False, widths=0.5)
            for i, v in enumerate(values, start=1):
                ax.scatter(v, np.full(len(v), i) + np.random.default_rng(i).uniform(-0.15, 0.15, len(v)),
                           s=8, alpha=0.5, color="tab:blue")
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (log scale)")  # short: the two panels' labels sit side by side
        ax.grid(True, axis="x", alpha=0.3)
    if "atol" in table:
        for atol in sorted(table["atol"].dropna().unique()):
            axes[0].axvline(atol, color="tab:red", ls="--", lw=0.8)
            axes[0].text(atol, 0.45, f" atol {atol:g}", color="tab:red", fontsize=7, va="bottom")
    axes[0].set_yticks(range(1, len(groups) + 1), [g[0] for g in groups], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("Logit errors per image against the reference (same images at every batch size; "
                 f"values below {FLOOR:g} drawn at {FLOOR:g})")
    fig.tight_layout()
    return fig
