"""Which backend and precision to ship: one row per timed backend, read from the tables the run already wrote.

Nothing is measured here. Timing, memory, energy and what each backend ran from come from 06_benchmark.csv;
accuracy against the FP32 reference from the table of the notebook that measured it (06_accuracy.csv for the
backends notebook 06 checks itself, 03_accuracy.csv for ONNX Runtime FP32 / FP16 and the FP32 / FP16 engines,
04_int8_accuracy.csv (INT8 and FP8 files), 04_int8_trt_accuracy.csv and 04_fp8_trt_accuracy.csv for their engines,
05_plugin_accuracy.csv for the plugin engines);
engine bytes and build seconds from engines.csv. A number no table holds is the text "not measured: <why>".

The best-throughput quantities (throughput, its batch, peak GPU memory, power, energy per image) all belong to the
row's fastest batch. The Pareto front is over throughput and top-1 agreement with the FP32 reference: a row is on
it when no other row is at least as fast and at least as accurate, and better in one.

Its figure (06_decision.png) is mvlib.decision_plots.

Serves: notebook 06 (its last section: 06_decision.csv).
"""
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mvlib import precisions
from mvlib.energy import NOT_MEASURED
from mvlib.export import ARTIFACTS
from mvlib.precisions import QUANTIZED  # notebook 04's precisions: their accuracy is in its tables

COLUMNS = ["label", "backend", "device", "precision", "accuracy_reference", "cosine_mean", "cosine_min",
           "top1_agreement", "top1_labels", "accuracy_source", "latency_b1_p50_ms", "latency_b1_p99_ms",
           "best_throughput_ips", "best_batch", "timing_method", "peak_gpu_mem_mib", "engine_mem_mib", "artifact",
           "artifact_bytes", "build_s", "build_what", "power_w", "j_per_image", "pareto"]
ACCURACY = ("cosine_mean", "cosine_min", "top1_agreement")
REFERENCE = ("pytorch", "cpu", "fp32")  # the row that is the FP32 reference itself
EAGER = ("pytorch", "pytorch-eager")    # backends with no build or compile step
FRONT = "on the front"


@dataclass
class Tables:
    """A run's results tables, read once each (None where the run has no such table), and its manifest."""
    results: Path
    manifest: dict
    _cache: dict = field(default_factory=dict)

    def get(self, name: str) -> pd.DataFrame | None:
        """Table `name` of the run, or None where it was not written."""
        if name not in self._cache:
            path = Path(self.results) / name
            self._cache[name] = pd.read_csv(path) if path.is_file() else None
        return self._cache[name]


def number(value) -> float | None:
    """A table cell as a finite float, or None (blank, NaN, or a text such as 'not measured: ...')."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _text_or_number(value, reason: str):
    """A cell's number, its own text where it is one (a reason), or `reason` where it is blank."""
    x = number(value)
    if x is not None:
        return x
    if isinstance(value, str) and value.strip():
        return value if value.startswith(NOT_MEASURED) else NOT_MEASURED + value
    return NOT_MEASURED + reason


# --- accuracy ---------------------------------------------------------------------------------------------
def pooled(rows: pd.DataFrame, source: str) -> dict:
    """Accuracy over several rows of one runner (batches): means weighted by images, the worst cosine."""
    rows = rows[rows["cosine_mean"].map(number).notna()]
    n = rows["n"].astype(float) if "n" in rows else pd.Series(1.0, index=rows.index)
    refs = ", ".join(dict.fromkeys(str(r) for r in rows.get("reference", pd.Series(["FP32"])).dropna()))
    return {"accuracy_reference": refs,
            "cosine_mean": float(np.average(rows["cosine_mean"].astype(float), weights=n)),
            "cosine_min": float(rows["cosine_min"].astype(float).min()),
            "top1_agreement": float(np.average(rows["top1_agreement"].astype(float), weights=n)),
            "accuracy_source": f"{source}, {len(rows)} row(s), {int(n.sum())} comparisons"}


def _not_measured(reason: str) -> dict:
    """Every accuracy column saying why it is empty."""
    text = NOT_MEASURED + reason
    return {"accuracy_reference": text, **dict.fromkeys(ACCURACY, text), "accuracy_source": text}


def _runner_rows(t: Tables, name: str, runner: str) -> tuple[pd.DataFrame | None, str]:
    """Rows of `runner` in accuracy table `name` that hold numbers; else None and why."""
    table = t.get(name)
    if table is None:
        return None, f"{name} absent (its notebook did not run in this run)"
    rows = table[table["runner"] == runner]
    if rows.empty:
        return None, f"{name} has no {runner} rows"
    measured = rows[rows["cosine_mean"].map(number).notna()]
    if measured.empty:
        status = rows["status"].dropna().astype(str) if "status" in rows else pd.Series(dtype=str)
        why = status.iloc[0].removeprefix("skipped: ") if len(status) else "no numbers"
        return None, f"{name}, {runner}: {why}"
    return measured, ""


def _engine_reason(t: Tables, engine: str, fallback: str) -> str:
    """Why an engine has no accuracy, as the engines table says (or `fallback`)."""
    engines = t.get("engines.csv")
    if engines is not None:
        row = engines[engines["engine"] == engine]
        if len(row) and isinstance(row["accuracy"].iloc[0], str) and row["accuracy"].iloc[0].startswith("skipped"):
            return "engines.csv: " + row["accuracy"].iloc[0].removeprefix("skipped: ")
    return fallback


def _quantized_row(t: Tables, name: str, key: str, precision: str) -> pd.Series | None:
    """The row of notebook 04's table `name` for the model it chose for `precision` ('int8', 'fp8').

    `key` is 'file' (model.<precision>.onnx in 04_int8_accuracy.csv) or 'engine' (engine <precision> in
    04_<precision>_trt_accuracy.csv); the manifest's entry for the precision says which float type was written.
    """
    table = t.get(name)
    if table is None or key not in table:
        return None
    rows = table[table[key] == (precision if key == "engine" else ARTIFACTS[precision])]
    if len(rows) > 1 and "high_precision" in rows:  # the FP32-float fallback writes the chosen file a second time
        chosen = (t.manifest.get(precision) or {}).get("high_precision")
        rows = rows[rows["high_precision"] == chosen] if chosen in set(rows["high_precision"]) else rows.tail(1)
    return rows.iloc[-1] if len(rows) else None


def _quantized_accuracy(row: pd.Series | None, source: str, why: str) -> dict:
    """Accuracy columns from one row of notebook 04's tables (against ONNX Runtime FP32 on its evaluation images)."""
    if row is None or number(row.get("cosine_mean")) is None:
        return _not_measured(why)
    return {"accuracy_reference": "onnxrt-fp32 (notebook 04's evaluation images)",
            **{k: float(row[k]) for k in ACCURACY},
            "accuracy_source": f"{source}: {row.get('file', '')}, {int(row['n'])} images"}


def accuracy(t: Tables, label: str, backend: str, device: str, precision: str) -> dict:
    """The accuracy columns of one decision row, from the table of the notebook that measured them."""
    if (backend, device, precision) == REFERENCE:
        return {"accuracy_reference": "is the reference (PyTorch FP32)", "cosine_mean": 1.0, "cosine_min": 1.0,
                "top1_agreement": 1.0, "accuracy_source": "the FP32 reference itself"}
    own = t.get("06_accuracy.csv")
    if own is not None and (own["label"] == label).any():
        return pooled(own[own["label"] == label], "06_accuracy.csv")
    if backend == "onnxruntime" and precisions.get(precision).cpu_judge == precisions.FLOAT_JUDGE:
        rows, why = _runner_rows(t, precisions.FLOAT_JUDGE, f"onnxrt-{precision}")
        if rows is None and precision == "fp32":
            rows, why01 = _runner_rows(t, "01_export_accuracy.csv", "onnxrt-fp32")
            why = f"{why}; {why01}"
            return pooled(rows, "01_export_accuracy.csv") if rows is not None else _not_measured(why)
        return pooled(rows, "03_accuracy.csv") if rows is not None else _not_measured(why)
    if backend == "onnxruntime" and precision in QUANTIZED:
        return _quantized_accuracy(_quantized_row(t, "04_int8_accuracy.csv", "file", precision),
                                   "04_int8_accuracy.csv", f"04_int8_accuracy.csv absent or without "
                                   f"{ARTIFACTS[precision]} (notebook 04 writes it)")
    if backend.startswith("tensorrt"):
        engine = ("plugin_" if "plugin" in backend else "") + precision
        if engine in QUANTIZED:
            name = f"04_{engine}_trt_accuracy.csv"
            why = _engine_reason(t, engine, f"{name} absent (notebook 04 writes it on the trt tier)")
            return _quantized_accuracy(_quantized_row(t, name, "engine", engine), name, why)
        name = "05_plugin_accuracy.csv" if engine.startswith("plugin_") else "03_accuracy.csv"
        rows, why = _runner_rows(t, name, f"trt-{engine}")
        return pooled(rows, name) if rows is not None else _not_measured(_engine_reason(t, engine, why))
    return _not_measured(f"no accuracy table holds {label} (06_accuracy.csv checks the backends notebook 06 "
                         "runs itself)")


def labelled_top1(t: Tables, backend: str, precision: str) -> float | str:
    """Top-1 against true labels: notebook 04's, where its images were labelled; else why not."""
    images = t.manifest.get("int8_images") or {}
    if not images:
        return NOT_MEASURED + "no labelled images in this run (notebook 04 loads them; it did not run)"
    if not images.get("labelled"):
        return NOT_MEASURED + f"the run's images have no labels ({images.get('label', 'unlabelled')})"
    cells = {("onnxruntime", "fp32"): ("04_int8_accuracy.csv", "file", "top1_fp32"),
             **{("onnxruntime", q): ("04_int8_accuracy.csv", "file", "top1_quantized") for q in QUANTIZED},
             **{("tensorrt", q): (f"04_{q}_trt_accuracy.csv", "engine", "top1_quantized") for q in QUANTIZED}}
    if (backend, precision) not in cells:
        return NOT_MEASURED + "labelled images are used by notebook 04 only (INT8, FP8 and their FP32 reference)"
    name, key, col = cells[(backend, precision)]
    row = _quantized_row(t, name, key, "int8" if precision == "fp32" else precision)
    value = number(row.get(col)) if row is not None else None
    return value if value is not None else NOT_MEASURED + f"{name} has no {col}"


# --- everything else --------------------------------------------------------------------------------------
def _engine(t: Tables, backend: str, precision: str) -> pd.Series | None:
    """The engines-table row of a TensorRT backend's engine, where notebooks 03 to 05 recorded it."""
    engines = t.get("engines.csv")
    if engines is None:
        return None
    rows = engines[engines["engine"] == ("plugin_" if "plugin" in backend else "") + precision]
    return rows.iloc[-1] if len(rows) else None


def artifact(t: Tables, best: pd.Series) -> dict:
    """What the backend runs from and its bytes: the engine (engines.csv) or 06_benchmark's artifact columns."""
    if best["backend"].startswith("tensorrt"):
        eng = _engine(t, best["backend"], best["precision"])
        if eng is not None and number(eng.get("engine_bytes")) is not None:
            return {"artifact": f"engine {eng['engine']} ({eng['flavour']} {eng['flavour_version']}, {eng['target']})",
                    "artifact_bytes": float(eng["engine_bytes"])}
    if "artifact_bytes" not in best or number(best.get("artifact_bytes")) is None:
        why = NOT_MEASURED + ("engines.csv has no row for this engine (notebooks 03 to 05 record it)"
                              if best["backend"].startswith("tensorrt") else
                              "06_benchmark.csv has no artifact size for it")
        return {"artifact": why, "artifact_bytes": why}
    return {"artifact": best["artifact"], "artifact_bytes": float(best["artifact_bytes"])}


def build(t: Tables, best: pd.Series) -> dict:
    """Build or compile seconds: the engine build (engines.csv), none for eager PyTorch, else making the backend
    and its first call at the best batch (06_benchmark setup_s + prime_s)."""
    if best["backend"] in EAGER:
        return {"build_s": "none: eager PyTorch runs the module as loaded", "build_what": "no build step"}
    if best["backend"].startswith("tensorrt"):
        eng = _engine(t, best["backend"], best["precision"])
        if eng is None or number(eng.get("build_seconds")) is None:
            why = NOT_MEASURED + "engines.csv has no build of this engine (notebooks 03 to 05 record it)"
            return {"build_s": why, "build_what": why}
        when = "this run" if eng["status"] == "built" else "an earlier run; reused here"
        return {"build_s": float(eng["build_seconds"]),
                "build_what": f"TensorRT engine build ({eng['flavour']}, {eng['target']}; {when})"}
    parts = [number(best.get("setup_s")), number(best.get("prime_s"))]
    if None in parts:
        why = NOT_MEASURED + "06_benchmark.csv has no setup_s / prime_s for it"
        return {"build_s": why, "build_what": why}
    what = {"torch.compile": "torch.compile", "torch.compile+cudagraphs": "torch.compile and CUDA-graph capture",
            "onnxruntime": "ONNX Runtime session (graph optimisation)",
            **dict.fromkeys(("onnxruntime-cuda", "onnxruntime-trt", "onnxruntime-trtrtx"),
                            "ONNX Runtime GPU session of this batch (graph optimisation; the TensorRT EPs build their "
                            "engine) and its CUDA-graph capture")}.get(best["backend"], "setup")
    return {"build_s": sum(parts), "build_what": f"{what}: backend made, then its first call at batch "
                                                 f"{int(best['batch'])} (setup_s + prime_s)"}


def _energy(best: pd.Series) -> dict:
    """Power and energy per image at the best batch, or the benchmark's reason."""
    missing = "06_benchmark.csv has no energy columns (written before energy was measured)"
    return {"power_w": _text_or_number(best.get("power_w"), missing),
            "j_per_image": _text_or_number(best.get("energy_j_per_image"), missing)}


GPU_METHODS = ("CUDA graph", "RTX graph mode", "plain launches")  # the ways a GPU row's launches were timed


def timing_method(device: str, timing) -> str:
    """How a benchmark row's launches were timed, in two words, from its `timing` text (06_benchmark.csv):
    'CUDA graph' (our replay of a captured graph), 'RTX graph mode' (TensorRT-RTX capturing its own), 'plain
    launches' (each launch enqueued, no graph), 'host clock' (a CPU backend)."""
    text = str(timing) if isinstance(timing, str) else ""
    if device != "cuda":
        return "host clock"
    if "own CUDA-graph mode" in text:
        return "RTX graph mode"
    if "CUDA-graph replay" in text:
        return "CUDA graph"
    if "plain execute_async_v3" in text or "around each launch" in text:
        return "plain launches"
    return "not recorded"


def _memory(best: pd.Series) -> dict:
    """GPU memory at the best batch: an allocator peak for PyTorch rows, an engine's own device memory for
    TensorRT rows (two measures, never one column: bench.COLUMNS)."""
    if best["device"] != "cuda":
        cpu = NOT_MEASURED + "CPU backend (a process-wide RSS would mix backends)"
        return {"peak_gpu_mem_mib": cpu, "engine_mem_mib": cpu}
    if str(best["backend"]).startswith("tensorrt"):
        return {"peak_gpu_mem_mib": NOT_MEASURED + "an engine's memory is engine_mem_mib (TensorRT allocates it, "
                                                   "not PyTorch's allocator)",
                "engine_mem_mib": _text_or_number(best.get("engine_mem_mib"), "06_benchmark.csv has no "
                                                  "engine_mem_mib (written before engines reported their own)")}
    if str(best["backend"]).startswith("onnxruntime"):
        return {"peak_gpu_mem_mib": NOT_MEASURED + "ONNX Runtime allocates outside PyTorch's allocator (06_benchmark"
                                                   ".csv's device_mem_mib holds the device-wide memory it took)",
                "engine_mem_mib": NOT_MEASURED + "not an engine"}
    return {"peak_gpu_mem_mib": _text_or_number(best["peak_mem_mib"], "no peak memory recorded"),
            "engine_mem_mib": NOT_MEASURED + "not an engine (its memory is peak_gpu_mem_mib)"}


def _timing(rows: pd.DataFrame) -> dict:
    """Batch-1 latency, best throughput, its batch and how it was timed, and GPU memory there."""
    best = rows.loc[rows["throughput_ips"].astype(float).idxmax()]
    b1 = rows[rows["batch"] == 1]
    no_b1 = NOT_MEASURED + f"batch 1 was not timed (batches {sorted(int(b) for b in rows['batch'])})"
    return {"latency_b1_p50_ms": float(b1["median_ms"].iloc[0]) if len(b1) else no_b1,
            "latency_b1_p99_ms": float(b1["p99_ms"].iloc[0]) if len(b1) else no_b1,
            "best_throughput_ips": float(best["throughput_ips"]), "best_batch": int(best["batch"]),
            "timing_method": timing_method(best["device"], best.get("timing")), **_memory(best)}


def pareto(throughput: list[float | None], accuracy: list[float | None], labels: list[str],
           methods: list[str] | None = None) -> list[str]:
    """Per row: on the front, dominated by which row, or not placed (no accuracy). Where the dominating row was
    timed another way (`methods`: timing_method per row, e.g. a CUDA graph against plain launches), it says so:
    part of the difference is the launch method, not the backend."""
    out = []
    for i, (x, y) in enumerate(zip(throughput, accuracy, strict=True)):
        if x is None or y is None:
            out.append("not placed: accuracy not measured")
            continue
        better = [j for j, (x2, y2) in enumerate(zip(throughput, accuracy, strict=True))
                  if j != i and x2 is not None and y2 is not None and x2 >= x and y2 >= y and (x2 > x or y2 > y)]
        if not better:
            out.append(FRONT)
            continue
        j = max(better, key=lambda k: throughput[k])
        differ = methods and methods[j] != methods[i] and {methods[i], methods[j]} <= set(GPU_METHODS)
        out.append(f"dominated by {labels[j]}" + (f" (timed by {methods[j]}, this row by {methods[i]})"
                                                  if differ else ""))
    return out


def table(results: Path, manifest: dict) -> pd.DataFrame:
    """The decision table of a run: one row per label of 06_benchmark.csv, in its order."""
    t = Tables(Path(results), manifest)
    bench = t.get("06_benchmark.csv")
    if bench is None:
        raise FileNotFoundError(f"{Path(results) / '06_benchmark.csv'} not found: notebook 06 writes it first")
    rows = []
    for label in dict.fromkeys(bench["label"]):
        d = bench[bench["label"] == label]
        first = d.iloc[0]
        timing = _timing(d)
        best = d[d["batch"] == timing["best_batch"]].iloc[0]
        rows.append({"label": label, "backend": first["backend"], "device": first["device"],
                     "precision": first["precision"],
                     **accuracy(t, label, first["backend"], first["device"], first["precision"]),
                     "top1_labels": labelled_top1(t, first["backend"], first["precision"]),
                     **timing, **artifact(t, best), **build(t, best), **_energy(best)})
    out = pd.DataFrame(rows)
    out["pareto"] = pareto([number(x) for x in out["best_throughput_ips"]],
                           [number(y) for y in out["top1_agreement"]], list(out["label"]), list(out["timing_method"]))
    return out.reindex(columns=COLUMNS)
