"""INT8 and FP8 post-training quantization with ModelOpt (explicit Q/DQ): policies, the chosen model, its engines.

Serves notebook 04 (and notebook 05 through `chosen_path`). Every quantized model here is an ONNX file with
QuantizeLinear/DequantizeLinear pairs made by `modelopt.onnx.quantization.quantize` (calibrated with ONNX Runtime
on the CPU), so ONNX Runtime checks its accuracy anywhere and TensorRT builds it as a strongly typed network. The
precision (`int8` or `fp8`, E4M3: `mvlib.precisions.QUANTIZED`) is passed in everywhere; both go through the
same machinery (calibration images, policies, sensitivity, criterion, choice, cache). The policies:

- `all`: everything ModelOpt quantizes by default (for FP8 ModelOpt quantizes Conv, Gemm, MatMul and
  residual Adds only).
- `fp_attention`: LayerNorm, Softmax and the attention MatMuls (those with no constant operand, i.e.
  Q·Kᵀ and P·V) are excluded.
- `sensitivity`: quantize one group (stage, block or layer) at a time, rank the groups by the output
  error it causes, and exclude the worst groups until the model passes (`quant_eval.sensitivity`).

Q/DQ needs ONNX opset 19 for FP8 (and for FP16 scales); ModelOpt raises an older model to 19 with
`onnx.version_converter` before quantizing (`mvlib.fp8.opset_check` shows the FP32 graph is unchanged by it).
"""
import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import tempfile
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pandas as pd

from mvlib import calib_speed, fp8, io, ort_providers, precisions
from mvlib.accuracy import INPUT, OUTPUT
from mvlib.autocast import captured_logs, conversion_key, to_fp16, tool_versions
from mvlib.export import ARTIFACTS
from mvlib.progress import progress
from mvlib.quant_eval import Evaluator, criterion
from mvlib.quant_graph import (
    HIGH_PRECISION_OPS,
    attention_matmuls,
    isolate,
    qdq_types,
    resolve,
    save,
    summary,
    transplant_scales,
)
from mvlib.tensorrt import layers
from mvlib.tensorrt import table as engines_table

PRECISIONS = precisions.QUANTIZED
METHODS = ("max", "entropy")
SPIN = "session.intra_op.allow_spinning"  # ONNX Runtime's session config key: "0" = idle workers block
POLICIES = OrderedDict([
    ("all", "everything quantizable"),
    ("fp_attention", "LayerNorm, Softmax, attention MatMuls unquantized"),
    ("sensitivity", "worst groups unquantized until it passes"),
])


# ---------------------------------------------------------------- file names
def check_precision(precision: str) -> str:
    """`precision`, or a ValueError naming the quantized ones."""
    return precisions.quantized(precision).name


def chosen_name(precision: str) -> str:
    """File name of the chosen model of a precision (model.int8.onnx, model.fp8.onnx)."""
    return precisions.quantized(precision).artifact


def chosen_path(exported, precision: str) -> Path:
    """The chosen model of a precision, beside the export."""
    return exported.path(chosen_name(precision))


def record_path(exported, precision: str) -> Path:
    """The JSON that says which policy was chosen for a precision and why (or why none passed)."""
    return exported.path(ARTIFACTS[f"{check_precision(precision)}_record"])


def variant_path(exported, policy: str, method: str, precision: str = "int8") -> Path:
    """Where one policy/method's Q/DQ model (FP32 elsewhere) is kept beside the export."""
    return exported.path(f"model.{check_precision(precision)}.{policy}.{method}.onnx")


# ---------------------------------------------------------------- quantization
def quantize(onnx_path: Path | str, out_path: Path | str, calib: np.ndarray, method: str = "entropy",
             exclude_nodes: Sequence[str] = (), exclude_op_types: Sequence[str] = (),
             scales_from: Path | str | None = None, precision: str = "int8",
             histogram_threads: int | None = None) -> dict:
    """ModelOpt PTQ to `precision` (int8, fp8) with explicit Q/DQ, calibrated on the CUDA EP where it runs, else the
    CPU (mvlib.ort_providers.calibration_eps); excluded nodes read floats.

    The non-quantized parts stay FP32 here (`high_precision_dtype="fp32"`) so that ONNX
    Runtime measures the quantization's own error; `write_chosen` makes the deployable FP16 variant.
    With `scales_from` (a model this function made from the same input, images, method
    and precision) its activation scales replace the ones ModelOpt computes, so a second
    policy costs no second calibration pass: ModelOpt sees only the first image (its
    shape probes need one). ModelOpt's own calibration cache would do this for INT8 only
    (its FP8 path ignores `calibration_cache_path`), hence the transplant for both. The
    input is copied to a private folder first because ModelOpt writes intermediate files
    beside its input; the result is written atomically, in canonical form (same graph,
    same bytes). A result made from the same input bytes, images, method, precision,
    exclusions, scales and ModelOpt version is reused (io.cached keeps that key beside it). `entropy` makes its
    histograms on `histogram_threads` workers (default: every core; processes from 4; `mvlib.calib_speed`), the
    same bytes.
    """
    check_precision(precision)
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    if calib.ndim != 4 or len(calib) == 0:
        raise ValueError(f"calibration images must be a non-empty [N, 3, H, W] array, got shape {calib.shape}")
    excluded = resolve(onnx.load(str(onnx_path)), exclude_nodes, exclude_op_types)
    eps = ort_providers.calibration_eps()
    key = _quantize_key(onnx_path, calib, method, precision, excluded, exclude_op_types, scales_from, eps)

    def make(out: Path) -> None:
        from modelopt.onnx.quantization import quantize as modelopt_quantize
        with tempfile.TemporaryDirectory(prefix=f"mvlib-{precision}-") as tmp:
            src, dst = Path(tmp) / ARTIFACTS["fp32"], Path(tmp) / chosen_name(precision)  # scratch copies
            shutil.copyfile(onnx_path, src)
            # histograms only for a histogram method's real pass (a transplant's one image is not worth a pool)
            hist = histogram_threads if method in calib_speed.HISTOGRAM_METHODS and not scales_from else 1
            with captured_logs(), calib_speed.parallel_histograms(hist) as histograms:
                modelopt_quantize(str(src), quantize_mode=precision,
                                  calibration_data={INPUT: calib[:1] if scales_from else calib},
                                  calibration_method=method, calibration_eps=eps,
                                  nodes_to_exclude=[re.escape(n) + "$" for n in excluded] or None,
                                  op_types_to_exclude=list(exclude_op_types) or None,
                                  high_precision_dtype="fp32", output_path=str(dst), log_level="ERROR")
            if histograms and histograms.fallback:  # outside the captured logs: the reader sees it
                print(f"histograms on threads, not processes: {histograms.fallback}")
            model = onnx.load(str(dst))
        if scales_from:
            transplant_scales(model, scales_from)
        model = isolate(model, excluded)
        made = qdq_types(model)
        if made - {precision}:
            raise RuntimeError(f"ModelOpt was asked for {precision} and made Q/DQ of {sorted(made)}")
        save(model, out)

    io.cached(out_path, key, make, f"ModelOpt {precisions.label(precision)} Q/DQ")
    return summary(out_path, excluded)


def _quantize_key(onnx_path: Path | str, calib: np.ndarray, method: str, precision: str, excluded: Sequence[str],
                  op_types: Sequence[str], scales_from: Path | str | None, eps: Sequence[str]) -> dict:
    """Everything a quantized model depends on, as hashes and names (the reuse key of `quantize`); `eps`: the
    calibration's execution providers (the CUDA EP's scales differ slightly from the CPU's, so it is in the key)."""
    return {"source_sha256": io.sha256(onnx_path), "calib_shape": list(calib.shape),
            "calib_sha256": hashlib.sha256(calib.tobytes()).hexdigest(), "method": method, "precision": precision,
            "excluded": sorted(excluded), "op_types": sorted(op_types),
            "scales_sha256": io.sha256(scales_from) if scales_from else None,
            **tool_versions(), **({"calibration_eps": list(eps)} if list(eps) != ["cpu"] else {})}


def reusable(onnx_path: Path | str, out_path: Path | str, calib: np.ndarray, method: str, precision: str,
             exclude_nodes: Sequence[str] = (), exclude_op_types: Sequence[str] = (),
             scales_from: Path | str | None = None) -> bool:
    """Whether `quantize` with these arguments would reuse `out_path` instead of running ModelOpt."""
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    try:
        saved = io.read_json(io.key_path(out_path))
    except (OSError, ValueError):
        return False
    excluded = resolve(onnx.load(str(onnx_path)), exclude_nodes, exclude_op_types)
    want = _quantize_key(onnx_path, calib, method, precision, excluded, exclude_op_types, scales_from,
                         ort_providers.calibration_eps())
    want = json.loads(json.dumps(want, sort_keys=True, default=str))  # as io.cached stores it
    return Path(out_path).is_file() and saved.get("key") == want and saved.get("sha256") == io.sha256(out_path)


def policy_args(exported, policy: str, method: str, precision: str) -> tuple[list[str], tuple, Path | None]:
    """What `quantize` is given for a fixed policy: excluded nodes, excluded op types, and the model whose scales
    it reuses (the `all` model of the same method and precision, once it exists)."""
    if policy not in ("all", "fp_attention"):
        raise ValueError(f"{policy!r} is not a fixed policy (all, fp_attention)")
    base = variant_path(exported, "all", method, precision)
    if policy == "all":
        return [], (), None
    return attention_matmuls(exported.onnx), tuple(HIGH_PRECISION_OPS), base if base.exists() else None


# ---------------------------------------------------------------- the calibrations, side by side
def calibrate_all(exported, calib: np.ndarray, precisions_: Sequence[str] = PRECISIONS,
                  methods: Sequence[str] = METHODS, policies: Sequence[str] = ("all", "fp_attention"),
                  workers: int | None = None) -> pd.DataFrame:
    """Make the fixed policies' models of every precision and method side by side: first the `all` models (the
    only calibrations), then the policies that reuse their scales; one process per model up to the cores this
    process may use, each with its share of them as ONNX Runtime threads. The results are `quantize`'s own files
    and cache, so the policy steps that follow find them made, byte for byte what they would make. A failure is
    only reported here (its precision's own stage meets it again, so one precision's failure never costs the
    other's). The entropy calibrations, the long ones, share all the cores for their histograms (mvlib.calib_speed)
    while each process keeps its share as ONNX Runtime threads. One row per model: made, reused or failed, and seconds.
    """
    cores = len(os.sched_getaffinity(0))
    waves = [[p for p in policies if p == "all"], [p for p in policies if p != "all"]]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mvlib-calib-") as tmp, contextlib.ExitStack() as stack:
        images = Path(tmp) / "calib.npy"  # each process maps the images instead of receiving a pickled copy
        np.save(images, np.ascontiguousarray(calib, dtype=np.float32))
        pool = None
        for wave in waves:
            jobs = [(pol, p, m) for pol in wave for p in precisions_ for m in methods]
            todo = []
            for pol, p, m in jobs:
                out, args = variant_path(exported, pol, m, p), policy_args(exported, pol, m, p)
                if reusable(exported.onnx, out, calib, m, p, *args):
                    rows.append({"policy": pol, "precision": p, "method": m, "file": out.name, "status": "reused",
                                 "seconds": 0.0, "error": ""})
                else:
                    todo.append((pol, p, m, out, args))
            if not todo:
                continue
            n = max(1, min(len(todo), workers or cores))
            if pool is None and n > 1:
                threads = max(1, cores // n)
                print(f"quantizing side by side: {n} processes, {threads} ONNX Runtime thread(s) each")
                ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked ONNX Runtime threads
                pool = stack.enter_context(ProcessPoolExecutor(n, mp_context=ctx, initializer=_limit_threads,
                                                               initargs=(threads,)))
            hist = max(1, cores // max(1, sum(m == "entropy" for _, _, m, _, _ in todo)))
            calls = [(str(exported.onnx), str(out), str(images), m, p, *args, hist if m == "entropy" else 1)
                     for _, p, m, out, args in todo]  # max makes no histograms
            if pool is None:  # one core or one model: no process to start
                results = [_attempt(_calibrate, *c) for c in calls]
            else:
                results = [_attempt(f.result) for f in [pool.submit(_calibrate, *c) for c in calls]]
            for (pol, p, m, out, _), (seconds, error) in zip(todo, results, strict=True):
                rows.append({"policy": pol, "precision": p, "method": m, "file": out.name,
                             "status": "failed" if error else "made", "seconds": round(seconds, 1), "error": error})
                if error:
                    print(f"{p} {pol} {m} failed here ({error}); its precision's own stage meets it again")
    return pd.DataFrame(rows)


def _attempt(fn, *args) -> tuple[float, str]:
    """(fn(*args), '') or (NaN, the error): a calibration's failure is reported, not raised, here."""
    try:
        return fn(*args), ""
    except Exception as err:  # noqa: BLE001 (its precision's own stage raises it again, contained there)
        return float("nan"), f"{type(err).__name__}: {err}"


def _limit_threads(threads: int) -> None:
    """In a calibration process: ONNX Runtime sessions (ModelOpt's and its calibrators') use `threads` threads,
    which block instead of spinning when idle."""
    import onnxruntime as ort
    os.environ["OMP_NUM_THREADS"] = str(threads)

    class Limited(ort.SessionOptions):
        """SessionOptions with this process's share of the cores, and no spinning."""

        def __init__(self):
            super().__init__()
            self.intra_op_num_threads = threads
            # ONNX Runtime's idle workers spin by default. Side by side on the CUDA EP the model runs on the GPU
            # and only a few shape ops run on these threads, so 4 processes' spinning workers held most of the
            # cores the histogram threads need (mvlib.calib_speed); a blocking worker computes the same values.
            self.add_session_config_entry(SPIN, "0")
    ort.SessionOptions = Limited


def _calibrate(src: str, out: str, images: str, method: str, precision: str, exclude_nodes: Sequence[str],
               exclude_op_types: Sequence[str], scales_from: Path | None, histogram_threads: int) -> float:
    """One `quantize` in a worker process; its seconds."""
    start = time.perf_counter()
    quantize(src, out, np.load(images), method, exclude_nodes, exclude_op_types, scales_from, precision,
             histogram_threads)
    return time.perf_counter() - start


# ---------------------------------------------------------------- policies
def run_policy(exported, policy: str, method: str, calib: np.ndarray, ev: Evaluator,
               exclude_nodes: Sequence[str] = (), precision: str = "int8") -> dict:
    """Quantize with one policy and method to `precision`, evaluate against FP32; one table row.

    Policies other than `all` reuse the activation scales of the `all` model of
    the same method and precision when it exists (see `quantize`), so they cost no calibration.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    op_types: Sequence[str] = ()
    base = variant_path(exported, "all", method, precision)
    scales_from = base if policy != "all" and base.exists() else None
    if policy != "sensitivity":
        exclude_nodes, op_types, scales_from = policy_args(exported, policy, method, precision)
    path = variant_path(exported, policy, method, precision)
    start = time.perf_counter()
    info = quantize(exported.onnx, path, calib, method, exclude_nodes, op_types, scales_from, precision)
    row = {"precision": precision, "policy": policy, "method": method, "high_precision": "fp32", "file": path.name,
           "calib_images": len(calib), "scales_from": scales_from.name if scales_from else "",
           "quantize_s": round(time.perf_counter() - start, 1),
           **{k: v for k, v in info.items() if k != "quantized_per_op"}, **ev.evaluate(path, precision)}
    print(f"{precision} {policy:>12s} {method:>7s}: cosine {row['cosine_mean']:.5f}, top-1 agreement "
          f"{100 * row['top1_agreement']:.1f}%, {row['quantized_nodes']} nodes quantized -> "
          + ("passes" if row["passes"] else f"FAILS ({row['fails']})"))
    return row


def compare_policies(exported, calib: np.ndarray, ev: Evaluator, policies: Sequence[str] = ("all", "fp_attention"),
                     precision: str = "int8") -> pd.DataFrame:
    """Every policy x calibration method at `precision`; `all` first for each method, since the others reuse it.

    FP8 first checks that this ONNX Runtime runs FP8 Q/DQ on the CPU (else StageSkipped with the reason).
    """
    if precision == "fp8":
        print(fp8.require_onnxruntime())
    order = sorted(policies, key=lambda p: p != "all")
    steps = [(p, m) for m in METHODS for p in order]
    rows = {(p, m): run_policy(exported, p, m, calib, ev, precision=precision)  # prints a line per step
            for p, m in progress(steps, f"{precisions.label(precision)} policies x calibration methods", unit="model",
                                 lines=False)}
    return pd.DataFrame([rows[(p, m)] for p in policies for m in METHODS])


def best_method(table: pd.DataFrame, policy: str = "all") -> str:
    """The calibration method with the higher mean cosine under `policy`."""
    rows = table[table.policy == policy]
    return str(rows.sort_values("cosine_mean", ascending=False).iloc[0]["method"])


# ---------------------------------------------------------------- choice and deployment
def choose(table: pd.DataFrame) -> pd.Series | None:
    """The passing row that quantizes the most Conv/MatMul/Gemm (then the highest cosine); None if none passes."""
    ok = table[(table.passes == True) & (table.quantized_weighted_ops > 0)]  # noqa: E712 (pandas)
    if ok.empty:
        return None
    return ok.sort_values(["quantized_weighted_ops", "cosine_mean"], ascending=False).iloc[0]


def write_chosen(exported, table: pd.DataFrame, ev: Evaluator, high_precision: str = "fp16",
                 images: dict | None = None, precision: str = "int8") -> tuple[pd.DataFrame, dict]:
    """Write the chosen policy of `precision` as model.<precision>.onnx (float parts in `high_precision`) + JSON.

    Only the table's rows of `precision` compete. Returns the table with a row per
    written candidate and the JSON's content. If the FP16 conversion makes the chosen
    variant fail, its FP32-float variant (which passed) is written instead and the JSON
    says why. If no policy passes, no model.<precision>.onnx is left (an older one is
    removed) and the JSON says so (passes: false), so no later notebook picks up a
    model that failed. The FP16 conversion is reused while the chosen variant's bytes are the same (`fp16_floats`);
    the written model is evaluated on every call.
    """
    if high_precision not in ("fp16", "fp32"):
        raise ValueError(f"high_precision must be 'fp16' or 'fp32', not {high_precision!r}")
    mine = table[table.precision == check_precision(precision)]
    best = choose(mine)
    target, meta_path = chosen_path(exported, precision), record_path(exported, precision)
    meta = {"precision": precision, "criterion": criterion(precision), "images": images,
            "policies": list(mine.policy.unique())}
    if best is None:
        target.unlink(missing_ok=True)
        io.key_path(target).unlink(missing_ok=True)
        meta.update(passes=False, file=None, reason="no policy/method passes the criterion on the evaluation images")
        io.write_json(meta_path, meta)
        print(f"NO {precisions.label(precision)} POLICY PASSES: {meta['reason']}; {target.name} not written")
        return table, meta
    src = exported.path(best["file"])
    rows, note = [], ""
    if high_precision == "fp16":
        fp16_floats(src, target)
        m = ev.evaluate(target, precision)
        rows.append({**best.to_dict(), **m, "high_precision": "fp16", "file": target.name})
        if not m["passes"]:
            note = f"the FP16 conversion fails ({m['fails']}); written with FP32 float parts instead"
            print("WARNING: " + note)
    if high_precision == "fp32" or note:
        io.key_path(target).unlink(missing_ok=True)  # no longer AutoCast's output: a rerun must not take it for one
        io.write_bytes(target, src.read_bytes())
        m = ev.evaluate(target, precision)
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


def fp16_floats(src: Path, target: Path) -> bool:
    """`src` (a Q/DQ model) with every float node FP16 (`to_fp16` without rules) written to `target`; reused when made
    from the same bytes by the same ModelOpt and onnx (AutoCast's cleanup takes seconds even on mobilevit_xxs, and
    the conversion is deterministic: tests/test_quant.py). Whether it was reused."""
    key = conversion_key(src, float_parts="fp16", rules=False)
    _, reused = io.cached(target, key, lambda tmp: to_fp16(src, tmp, rules=False),
                          "AutoCast: the Q/DQ model's float parts in FP16")
    return reused


# ---------------------------------------------------------------- one precision's failure
@contextlib.contextmanager
def contained(run, name: str, failures: list[str], stale: Sequence[Path] = ()) -> Iterator[None]:
    """A block of one precision's stages whose failure must not cost the other's results: recorded, then passed.

    An exception inside is recorded in the manifest as failed stage `name` (unless a `run.stage` inside already
    recorded its own failure), appended to `failures` and printed; the notebook goes on, so INT8's tables,
    figures and engines are still written when FP8 fails. The files `stale` (the block's chosen model and JSON,
    maybe an earlier run's) are removed on failure, so no later notebook takes them for this run's. The driver
    still reads the failed stage and fails the run (exit 1). KeyboardInterrupt and other BaseExceptions pass.
    """
    def failed() -> set[str]:
        return {k for k, st in run.manifest()["stages"].items() if st["status"] == "failed"}

    before = failed()
    try:
        yield
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        if not failed() - before:  # the failure happened outside a recorded stage
            run.record(name, "cpu", "failed", reason, traceback=traceback.format_exc(limit=5))
        failures.append(f"{name}: {reason}")
        for path in stale:
            Path(path).unlink(missing_ok=True)
        print(f"[{name}] FAILED: {reason}\n    recorded; the other precision's results are still written, and the "
              "run will be marked failed")


# ---------------------------------------------------------------- TensorRT
def engine_name(file: str) -> str:
    """The engines-table name of a Q/DQ file: 'int8' / 'fp8' for a chosen model, '<precision>.<policy>.<method>'."""
    return Path(file).stem.removeprefix("model.")


def engine_specs(exported, table: pd.DataFrame, precision: str = "int8") -> list:
    """One engine per Q/DQ file of `precision` in the accuracy table (the chosen model and every policy variant)."""
    files = table[table.precision == check_precision(precision)].file
    return [engines_table.EngineSpec(engine_name(file), exported.path(file)) for file in dict.fromkeys(files)]


def source_row(exported, table: pd.DataFrame, file: str) -> pd.Series:
    """The accuracy-table row describing the file an engine was built from.

    A chosen model.<precision>.onnx can have two rows (FP16 floats that failed, then the FP32-float file
    written in its place): its float type is the one its JSON records, never simply the first row's.
    """
    rows = table[table.file == file]
    chosen = {chosen_name(p): p for p in PRECISIONS}
    if file in chosen and record_path(exported, chosen[file]).exists():
        written = io.read_json(record_path(exported, chosen[file])).get("high_precision")
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


def engine_accuracy(exported, table: pd.DataFrame, ev: Evaluator, engines: pd.DataFrame | None,
                    runnable=None) -> pd.DataFrame:
    """Each built Q/DQ engine against FP32 like the ONNX Runtime rows, with its layers per output precision.

    `runnable(engine)` returns the engine or raises StageSkipped saying why it cannot run here
    (default `runner.runnable`; FP8 engines also need a GPU with FP8, `fp8.runnable`). Each engine is judged
    by the criterion of the precision its source file was quantized to.
    """
    rows = []
    for r, engine, trt in engines_table.runners(engines, runnable):
        logits = collect_outputs(trt, ev.images, engine.profile)
        src = source_row(exported, table, r.onnx)
        rows.append({"engine": r.engine, "precision": src.precision, "policy": src.policy, "method": src.method,
                     "high_precision": src.high_precision, "file": r.onnx, **ev.metrics(logits, src.precision),
                     **layers.layer_totals(layers.layer_summary(engine.dir))})
    return pd.DataFrame(rows)
