"""Benchmarks measured the trtexec way: warm-up, per-launch timing, percentiles, throughput, repeats and their spread.

Method (trtexec's; README, "Method and anchors"): each (backend, batch) is warmed up for at least
`warmup_s` (200 ms), then measured `repeats` times; one measurement (a window) launches back to back for at least
`min_iters` launches and stops at `seconds` at the latest, or earlier once its answer is known (`StopRule`, with
nvbench's bounds: the median's 95 % confidence interval within +-0.5 % after at least 10 launches and 0.5 s, and the
medians of the window's two halves within 0.5 %, so drift or alternating modes run to `seconds`; the host's own
checks are left out of the window's wall time). Each row's `window` column states the rule and how many of its
windows stopped early. CPU launches are timed with `perf_counter` around each call; GPU launches with CUDA events
recorded on the stream around each launch (or CUDA-graph replay), with at most two launches in flight, so an event
pair measures the GPU time of one launch. Throughput = launches / wall time x batch. Inputs are made once per batch and
already sit where the backend reads them: host-device transfers are excluded, and every row says so.
Around every measurement window the device's energy counter is read (mvlib.energy: NVML on the GPU, RAPL on the
CPU), outside the timed launches, giving each row's mean power and energy per image, or the reason there is none.
A backend whose launch returns logits is checked against the FP32 reference (`Reference`) after its windows, on
the inputs it was timed on. What the rows are held against (the model's cost, measured ceilings, the published
anchor) is mvlib.ceilings. The windows themselves (timers, the stop rule, the statistics) are mvlib.bench_windows.

Serves: notebooks 05 (the model-swap timing) and 06 (every benchmark row).
"""
import copy
import dataclasses
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvlib import energy, metrics, paths, precisions, stages
from mvlib.bench_windows import (
    FIXED,
    HOST_RULE,
    IN_FLIGHT,
    MIB,
    MIN_ITERS,
    WARMUP_S,
    StopRule,
    Timing,
    Window,
    compare_throughput,
    summarize,
    time_cuda,
    time_host,
    warm_up,
)
from mvlib.progress import progress
from mvlib.skips import StageSkipped

# The results table's schema: these columns, in this order (tests hold it fixed).
COLUMNS = ["backend", "device", "precision", "batch", "repeats", "iterations", "mean_ms", "median_ms",
           "p90_ms", "p95_ms", "p99_ms", "throughput_ips", "spread_pct", "peak_mem_mib", "notes",
           "label", "throughput_min_ips", "throughput_max_ips", "wall_s", "timing", "transfers",
           "variant", "img_size", "power_w", "energy_j_per_image", "setup_s", "prime_s", "artifact",
           "artifact_bytes", "window", "engine_mem_mib", "device_mem_mib"]
# peak_mem_mib: PyTorch's allocator peak (torch.cuda.max_memory_allocated) of a PyTorch backend; engine_mem_mib: a
# TensorRT engine's execution-context device memory (device_memory_size_v2, as trtexec reports it); device_mem_mib:
# the device memory a backend that allocates outside PyTorch (ONNX Runtime's CUDA EP) took while it ran, a
# device-wide cudaMemGetInfo delta. Three measures, so three columns: each row fills one and leaves the others empty.
# power_w, energy_j_per_image: over the timed windows (mvlib.energy), or "not measured: <why>"; setup_s: making the
# backend (loading, graph optimisation, engine build or reuse); prime_s: this batch's inputs and first call
# (compilation, CUDA-graph capture); artifact, artifact_bytes: what the backend runs from (ONNX file, engine, weights);
# window: the stopping rule of its timing windows and how many stopped before `bench_seconds` (StopRule.describe).
# The accuracy table's schema (results/06_accuracy.csv): each checked backend and batch against the FP32 reference.
ACCURACY_COLUMNS = ["label", "backend", "device", "precision", "batch", "reference", "n", "max_abs", "mean_abs",
                    "cosine_mean", "cosine_min", "top1_agreement", "variant", "img_size"]
GPU_TRANSFERS = "excluded: input already on the GPU, output left there"
CPU_TRANSFERS = "none: host memory"
# The speed-up table's references (the seed's two baselines): (backend, device, precision).
REFERENCES = {"pytorch_cpu": ("pytorch", "cpu", "fp32"), "pytorch_gpu_eager": ("pytorch-eager", "cuda", "fp32")}


class BatchSkipped(Exception):
    """A backend cannot run this batch size (e.g. outside a TensorRT engine's profile)."""


# how to measure -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
    """How to measure: input size and seed, timing window (its cap and stopping rule; None: fixed), repeats,
    warm-up and minimum launches."""
    img_size: int = 256
    seconds: float = 3.0
    repeats: int = 3
    seed: int = 0
    warmup_s: float = WARMUP_S
    min_iters: int = MIN_ITERS
    variant: str = ""
    rule: StopRule | None = StopRule()

    def window(self) -> Window:
        """A fresh window of these settings."""
        return Window(self.seconds, self.min_iters, self.rule)

    def describe_window(self) -> str:
        """The rule every window of these settings follows, in words."""
        return self.rule.describe(self.seconds) if self.rule else FIXED.format(cap=self.seconds, n=self.min_iters)

    def on(self, device: str) -> "Settings":
        """The settings a row on `device` is timed with: a CPU row stops at HOST_RULE's bound where these settings
        use the study's default rule (a fixed window, or another rule, stays as it is)."""
        if device == "cpu" and self.rule == StopRule():
            return dataclasses.replace(self, rule=HOST_RULE)
        return self

    def __post_init__(self):
        if self.repeats < 2:
            raise ValueError(f"bench_repeats={self.repeats}: use at least 2, the spread between repeats decides "
                             "whether two rows differ")
        if not self.seconds > 0 or self.warmup_s < 0 or self.min_iters < 1:
            raise ValueError(f"bench_seconds must be > 0 (got {self.seconds}), warm-up >= 0 (got {self.warmup_s}) "
                             f"and min_iters >= 1 (got {self.min_iters})")


def profile_settings(p: dict, seconds: float | None = None) -> Settings:
    """The timing settings of parameter values `p`, as notebooks 05 and 06 make them; `seconds` overrides the cap
    (tools/window_agreement.py, the compile-ahead child)."""
    return Settings(img_size=p["img_size"], seconds=seconds or p["bench_seconds"], repeats=p["bench_repeats"],
                    seed=p["seed"], variant=p["variant"])


# backends -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Backend:
    """One way of running the model; `prepare(batch)` makes inputs and returns a zero-argument launch."""
    backend: str
    device: str       # "cpu" or "cuda"
    precision: str    # fp32, fp16, int8
    label: str        # how figures name it
    prepare: Callable[[int], Callable[[], Any]]
    timing: str       # what one timed launch is, and the clock
    notes: str = ""
    engine_mem_mib: Callable[[], float] | None = None  # a TensorRT engine's own device memory (engine_mem_mib)
    device_mem_mib: Callable[[], float] | None = None  # device memory taken outside PyTorch (device_mem_mib)
    keep: list = dataclasses.field(default_factory=list)  # objects that must outlive the launches
    artifact: str = ""                # what it runs from: an ONNX file, an engine, weights in memory
    artifact_bytes: float = math.nan  # that artifact's size
    logits: Callable[[Any], np.ndarray] | None = None  # a launch's result as host logits, where a launch returns them
    setup_s: float = math.nan         # seconds its factory took (measure_all sets it)


class Reference:
    """The FP32 reference of the timed backends: PyTorch FP32 on the CPU, on each batch's benchmark images.

    `measure` checks a backend that returns logits once per batch, after its timing windows, on the very inputs it
    was timed on; the rows gather here (`table()`, results/06_accuracy.csv). Reference logits are computed once per
    batch, in chunks, and shared by every backend.
    """
    name = "pytorch-fp32 (CPU)"

    def __init__(self, model, settings: Settings, chunk: int = 32):
        self.net = copy.deepcopy(model).float().eval().cpu()
        self.settings, self.chunk = settings, chunk
        self._logits: dict[int, np.ndarray] = {}
        self.rows: list[dict] = []

    def logits(self, batch: int) -> np.ndarray:
        """The reference logits of batch `batch`'s benchmark images."""
        if batch not in self._logits:
            import torch
            x = images(batch, self.settings)
            with torch.inference_mode():
                self._logits[batch] = np.concatenate([self.net(torch.from_numpy(x[i:i + self.chunk])).numpy()
                                                      for i in range(0, batch, self.chunk)])
        return self._logits[batch]

    def check(self, backend: Backend, batch: int, out: np.ndarray) -> dict:
        """Compare one backend's logits for batch `batch` with the reference; the accuracy row (also kept)."""
        row = {"label": backend.label, "backend": backend.backend, "device": backend.device,
               "precision": backend.precision, "batch": batch, "reference": self.name,
               **metrics.compare(self.logits(batch), out), "variant": self.settings.variant,
               "img_size": self.settings.img_size}
        self.rows.append(row)
        return row

    def table(self) -> pd.DataFrame:
        """Every check so far, one row per backend and batch."""
        return pd.DataFrame(self.rows, columns=ACCURACY_COLUMNS)


def measure(backend: Backend, batch: int, settings: Settings, reference: Reference | None = None,
            meter: Any = None) -> dict:
    """Prepare one batch, warm up, measure `settings.repeats` times with the energy counter read around each
    window (`meter`: the device's, by default); check the logits against `reference`; one results-table row."""
    cuda = backend.device == "cuda"
    settings = settings.on(backend.device)
    meter = energy.meter(backend.device) if meter is None else meter
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if cuda:
        import torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        sync = torch.cuda.synchronize
    compiled = backend.backend.startswith("torch.compile")
    caches = cache_counts() if compiled else {}
    t0 = time.perf_counter()
    launch = backend.prepare(batch)
    prime_s = time.perf_counter() - t0 + warm_up(launch, settings.warmup_s, sync)
    if compiled:  # a compile that found the caches warm primes in seconds; a cold one in tens of seconds
        print(f"{backend.label} batch {batch}: compiled and warmed up in {prime_s:.1f} s; "
              f"{describe_caches(caches, cache_counts())}")
    timer = time_cuda if cuda else time_host
    windows, timings, early = energy.Windows(meter), [], 0
    for _ in range(settings.repeats):
        window = settings.window()
        with windows.window():  # counter reads outside the timer: its launches and wall time are untouched
            timings.append(timer(launch, batch, window))
        early += window.stopped_early
    peak = engine_mem = device_mem = float("nan")  # on the CPU, a process-wide RSS would mix backends: not reported
    if cuda and backend.engine_mem_mib is not None:
        engine_mem = backend.engine_mem_mib()
    elif cuda and backend.device_mem_mib is not None:
        device_mem = backend.device_mem_mib()
    elif cuda:
        peak = torch.cuda.max_memory_allocated() / MIB
    summary = summarize(timings)
    row = {"backend": backend.backend, "device": backend.device, "precision": backend.precision,
           **summary, "peak_mem_mib": float(peak), "notes": backend.notes, "label": backend.label,
           "timing": backend.timing, "transfers": GPU_TRANSFERS if cuda else CPU_TRANSFERS,
           "variant": settings.variant, "img_size": settings.img_size,
           **windows.columns(summary["iterations"] * batch), "setup_s": backend.setup_s, "prime_s": prime_s,
           "artifact": backend.artifact, "artifact_bytes": backend.artifact_bytes,
           "window": f"{settings.describe_window()}; {early} of {settings.repeats} stopped early",
           "engine_mem_mib": float(engine_mem), "device_mem_mib": float(device_mem)}
    if reference is not None and backend.logits is not None:
        reference.check(backend, batch, backend.logits(launch()))
    return {c: row[c] for c in COLUMNS}


def measure_all(factory: Callable[..., Backend], batches: Iterable[int], settings: Settings, *args: Any,
                accuracy: Reference | None = None, **kwargs: Any) -> pd.DataFrame:
    """Build a backend with `factory(settings, *args, **kwargs)` and measure it at each batch size
    (checked against `accuracy`, the FP32 reference, where given and the backend returns logits).

    The backend is built inside this call, so a stage whose tier the machine lacks never constructs it.
    Batches the backend cannot run (BatchSkipped) are printed and left out; all of them skipped skips the stage.
    """
    t0 = time.perf_counter()
    backend = factory(settings, *args, **kwargs)
    backend.setup_s = time.perf_counter() - t0
    rows, skipped = [], []
    for batch in progress(list(batches), backend.label, unit="batch", lines=False):  # a line per batch below
        try:
            row = measure(backend, int(batch), settings, accuracy)
        except BatchSkipped as why:
            skipped.append(f"batch {batch}: {why}")
            continue
        rows.append(row)
        print(f"{backend.label:42s} batch {row['batch']:4d}: {row['throughput_ips']:10.1f} img/s, median "
              f"{row['median_ms']:8.3f} ms, p99 {row['p99_ms']:8.3f} ms, spread {row['spread_pct']:5.1f}%"
              + (f", peak {row['peak_mem_mib']:.0f} MiB" if not math.isnan(row["peak_mem_mib"]) else "")
              + (f", engine {row['engine_mem_mib']:.0f} MiB" if not math.isnan(row["engine_mem_mib"]) else "")
              + (f", taken {row['device_mem_mib']:.0f} MiB" if not math.isnan(row["device_mem_mib"]) else "")
              + (f", {row['power_w']:.0f} W" if not isinstance(row["power_w"], str) else ""))
    for s in skipped:
        print(f"{backend.label}: skipped {s}")
    if not rows:
        raise StageSkipped(f"{backend.label}: no batch could run ({'; '.join(skipped)})")
    return pd.DataFrame(rows, columns=COLUMNS)


AGREEMENT_PCT = 2.0  # issue 29: the early-stopping windows must give the fixed windows' throughput within 2 %
AGREEMENT_COLUMNS = ["label", "backend", "device", "precision", "batch", "fixed_ips", "rule_ips", "diff_pct",
                     "fixed_spread_pct", "rule_spread_pct", "fixed_wall_s", "rule_wall_s", "rule_stopped_early",
                     "agrees", "rule", "fixed", "fixed_median_ms", "rule_median_ms", "median_diff_pct",
                     "fixed_samples", "rule_samples"]


def agreement(factory: Callable[..., Backend], batches: Iterable[int], settings: Settings, *args: Any,
              **kwargs: Any) -> pd.DataFrame:
    """Each batch of one backend timed both ways on the same warm launch, windows interleaved (fixed, rule, fixed,
    rule...), so drift hits both alike: the stopping rule's throughput against the fixed `bench_seconds` window's,
    agreeing within AGREEMENT_PCT, and so must the median launch times. One AGREEMENT_COLUMNS row per batch
    (diff_pct: throughput's; samples: launches over all repeats); batches it cannot run are left out."""
    backend = factory(settings, *args, **kwargs)
    rule = (settings if settings.rule else dataclasses.replace(settings, rule=StopRule())).on(backend.device)
    fixed = dataclasses.replace(settings, rule=None)
    cuda = backend.device == "cuda"
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if cuda:
        import torch
        sync = torch.cuda.synchronize
    timer = time_cuda if cuda else time_host
    rows = []
    for batch in batches:
        try:
            launch = backend.prepare(int(batch))
        except BatchSkipped as why:
            print(f"{backend.label} batch {batch}: skipped ({why})")
            continue
        warm_up(launch, settings.warmup_s, sync)
        got: dict[str, list[Timing]] = {"fixed": [], "rule": []}
        early = 0
        for _ in range(settings.repeats):
            for name, s in (("fixed", fixed), ("rule", rule)):
                window = s.window()
                got[name].append(timer(launch, int(batch), window))
                early += window.stopped_early
        a, b = summarize(got["fixed"]), summarize(got["rule"])
        diff = 100 * (b["throughput_ips"] / a["throughput_ips"] - 1)
        median_diff = 100 * (b["median_ms"] / a["median_ms"] - 1)
        rows.append({"label": backend.label, "backend": backend.backend, "device": backend.device,
                     "precision": backend.precision, "batch": int(batch), "fixed_ips": a["throughput_ips"],
                     "rule_ips": b["throughput_ips"], "diff_pct": diff, "fixed_spread_pct": a["spread_pct"],
                     "rule_spread_pct": b["spread_pct"], "fixed_wall_s": a["wall_s"], "rule_wall_s": b["wall_s"],
                     "rule_stopped_early": f"{early} of {settings.repeats}",
                     "agrees": max(abs(diff), abs(median_diff)) <= AGREEMENT_PCT,
                     "rule": rule.describe_window(), "fixed": fixed.describe_window(),
                     "fixed_median_ms": a["median_ms"], "rule_median_ms": b["median_ms"],
                     "median_diff_pct": median_diff,
                     "fixed_samples": a["iterations"], "rule_samples": b["iterations"]})
        print(f"{backend.label:42s} batch {batch:4d}: fixed {a['throughput_ips']:10.1f} img/s in {a['wall_s']:.1f} s, "
              f"rule {b['throughput_ips']:10.1f} img/s in {b['wall_s']:.1f} s ({diff:+.2f}%)")
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def images(batch: int, settings: Settings) -> np.ndarray:
    """Fresh random inputs in [0, 1], seeded by the run's seed and the batch size."""
    return metrics.random_images(batch, settings.img_size, seed=settings.seed * 1000 + batch)


def _host_logits(out) -> np.ndarray:
    """A PyTorch launch's output as float32 logits in host memory."""
    return out.detach().float().cpu().numpy()


def _weights(net, dtype: str) -> dict:
    """A PyTorch backend's artifact: its weights (parameters and buffers) in memory, and their bytes."""
    size = sum(t.numel() * t.element_size() for t in itertools.chain(net.parameters(), net.buffers()))
    return {"artifact": f"weights in memory ({dtype}, no file)", "artifact_bytes": float(size)}


def pytorch_cpu(settings: Settings, model) -> Backend:
    """PyTorch FP32 eager on the CPU, under inference_mode (the seed timed it without no_grad)."""
    import torch
    net = copy.deepcopy(model).float().eval()

    def prepare(batch: int) -> Callable[[], Any]:
        x = torch.from_numpy(images(batch, settings))

        def launch():
            with torch.inference_mode():
                return net(x)
        return launch
    return Backend("pytorch", "cpu", "fp32", "PyTorch CPU FP32", prepare, "perf_counter around each call",
                   notes=f"torch {torch.__version__}, {torch.get_num_threads()} threads", keep=[net],
                   logits=_host_logits, **_weights(net, "fp32"))


def onnxruntime_cpu(settings: Settings, onnx_path: Path | str, precision: str = "fp32") -> Backend:
    """ONNX Runtime's CPU execution provider on an ONNX file (FP32, or the INT8 Q/DQ model)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.exists():
        raise stages.missing(onnx_path, f"looked in {onnx_path.parent}")
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def prepare(batch: int) -> Callable[[], Any]:
        feed = {name: images(batch, settings)}
        return lambda: sess.run(None, feed)
    return Backend("onnxruntime", "cpu", precision, f"ONNX Runtime CPU {precisions.label(precision)}", prepare,
                   "perf_counter around each call",
                   notes=f"onnxruntime {ort.__version__}, {onnx_path.name}, default threads", keep=[sess],
                   artifact=onnx_path.name, artifact_bytes=float(onnx_path.stat().st_size),
                   logits=lambda out: np.asarray(out[0]))


def compile_caches() -> dict[str, str]:
    """Inductor's and Triton's on-disk caches under build/cache/torch (set before torch.compile runs), so a rerun
    of the same model, shape and mode reuses its compiled kernels instead of compiling again; a folder the user
    chose is kept. Torch writes its default (a temp folder) into the environment on first use, so that value is
    replaced too."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    root = paths.CACHE / "torch"
    wanted = {"TORCHINDUCTOR_CACHE_DIR": (root / "inductor", default_cache_dir()),
              "TRITON_CACHE_DIR": (root / "triton", None)}
    for name, (folder, default) in wanted.items():
        if os.environ.get(name) in (None, "", default):
            os.environ[name] = str(folder)
    return {name: os.environ[name] for name in wanted}


CACHES = {"fxgraph": ("inductor", "fxgraph_cache"), "aot": ("aot_autograd", "autograd_cache")}


def cache_counts() -> dict[str, int]:
    """Inductor's FX-graph and AOTAutograd cache hits, misses and bypasses so far in this process (torch's own
    counters): whether a compile found what an earlier one left (mvlib.driver.ahead) or compiled cold."""
    from torch._dynamo.utils import counters
    return {f"{short}_{what}": int(counters[group][f"{name}_{what}"])
            for short, (group, name) in CACHES.items() for what in ("hit", "miss", "bypass")}


def describe_caches(before: dict[str, int], after: dict[str, int]) -> str:
    """The cache counts between two cache_counts() readings, in words."""
    d = {k: after[k] - before.get(k, 0) for k in after}
    return "; ".join(f"{label} cache {d[f'{short}_hit']} hit, {d[f'{short}_miss']} miss, {d[f'{short}_bypass']} bypass"
                     for short, label in (("fxgraph", "FX-graph"), ("aot", "AOTAutograd")))


def pytorch_cuda(settings: Settings, model, precision: str = "fp32", channels_last: bool = False,
                 compile_mode: str | None = None) -> Backend:
    """PyTorch on the GPU: eager, or torch.compile ('default', or 'reduce-overhead' for CUDA graphs)."""
    import torch
    if compile_mode not in (None, "default", "reduce-overhead"):
        raise ValueError(f"compile_mode {compile_mode!r}: use None (eager), 'default' or 'reduce-overhead'")
    dtype = precisions.torch_dtype(precision)  # ValueError for a precision PyTorch does not run
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = copy.deepcopy(model).to("cuda", dtype).to(memory_format=fmt).eval()
    graphs = compile_mode == "reduce-overhead"
    if compile_mode:
        compile_caches()

    def prepare(batch: int) -> Callable[[], Any]:
        x = torch.from_numpy(images(batch, settings)).to("cuda", dtype).contiguous(memory_format=fmt)
        fn = net
        if compile_mode:
            torch._dynamo.reset()  # one static-shape compilation per batch, as a deployment would ship
            fn = torch.compile(net, mode=None if compile_mode == "default" else compile_mode, dynamic=False)

        def launch():
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()  # each call is a new inference step
            with torch.inference_mode():
                return fn(x)
        return launch

    if compile_mode is None:
        backend, label = "pytorch-eager", f"PyTorch eager {precisions.label(precision)}"
        timing = f"CUDA events around each launch, {IN_FLIGHT} in flight"
    else:
        backend = "torch.compile+cudagraphs" if graphs else "torch.compile"
        label = f"torch.compile {precisions.label(precision)}" + (" + CUDA graphs" if graphs else "")
        timing = ("CUDA events around each CUDA-graph replay" if graphs else "CUDA events around each launch") \
            + f", {IN_FLIGHT} in flight"
    if channels_last:
        label += " (channels_last)"
    notes = f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}" \
        + (", channels_last" if channels_last else "") \
        + (f", mode={compile_mode}, dynamic=False" if compile_mode else "") \
        + "; peak = torch.cuda.max_memory_allocated"
    return Backend(backend, "cuda", precision, label, prepare, timing, notes=notes, keep=[net],
                   logits=_host_logits, **_weights(net, precision))


# TensorRT engines are timed by mvlib.tensorrt.timing, with this module's Backend and measure.


# derived tables -----------------------------------------------------------------------------------
def _reference(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Rows of one speed-up reference, indexed by batch."""
    backend, device, precision = REFERENCES[key]
    ref = df[(df.backend == backend) & (df.device == device) & (df.precision == precision)]
    return ref.set_index("batch")


def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    """The seed's speed-up table, for every row: throughput ratio to PyTorch CPU and to PyTorch GPU eager FP32
    at the same batch, with the no-difference rule applied (NaN / empty where that reference was not measured)."""
    out = df[["label", "backend", "device", "precision", "batch", "throughput_ips", "spread_pct"]].copy()
    for key in REFERENCES:
        ref = _reference(df, key)
        ratios, verdicts = [], []
        for _, row in df.iterrows():
            if row.batch not in ref.index:
                ratios.append(float("nan"))
                verdicts.append("")
                continue
            c = compare_throughput(row, ref.loc[row.batch])
            ratios.append(c["ratio"])
            same = tuple(row[["backend", "device", "precision"]]) == REFERENCES[key]
            verdicts.append("reference" if same else c["verdict"])
        out[f"vs_{key}"] = ratios
        out[f"verdict_vs_{key}"] = verdicts
    return out.reset_index(drop=True)
