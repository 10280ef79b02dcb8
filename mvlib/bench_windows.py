"""The timing windows of mvlib.bench: launch timers, when a window has its answer, the statistics of its launches.

A window launches back to back for at least `min_iters` launches and stops at `seconds` at the latest, or earlier
once `StopRule` (nvbench's bounds) says its answer is known; CPU launches are timed with `perf_counter` around each
call (`time_host`), GPU launches with CUDA events around each launch on the stream, at most `IN_FLIGHT` queued
(`time_cuda`). `summarize` pools a row's windows (nearest-rank percentiles, as trtexec reports), and
`compare_throughput` says whether two rows differ (beyond the larger spread, and at least MIN_DIFF_PCT).

Serves: notebooks 05 and 06 (through mvlib.bench, mvlib.tensorrt.timing and mvlib.ort_gpu) and the driver's rerun
comparison.
"""
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

WARMUP_S = 0.2   # trtexec --warmUp: 200 ms
MIN_ITERS = 10   # trtexec --iterations: at least 10 launches per measurement
# Differences below this are never called: adjacent windows miss slow drift (clocks, temperature). Two
# back-to-back H200 runs of GPU-bound rows (CUDA graphs, batch 256) differed by up to 0.7% while most
# rows' windows spread 0.002-0.06%.
MIN_DIFF_PCT = 1.0
IN_FLIGHT = 2    # GPU launches queued at once, as trtexec keeps two enqueues in flight
MIB = 2 ** 20


# statistics ---------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (an observed value, as trtexec reports): the ceil(q/100 n)-th smallest."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    rank = max(1, math.ceil(q / 100 * x.size))
    return float(x[rank - 1])


def relative_range(values: Sequence[float]) -> float:
    """Spread of repeated measurements: (max - min) / median, in percent; NaN for fewer than two."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    return float(100 * (x.max() - x.min()) / np.median(x))


@dataclasses.dataclass
class Timing:
    """One measurement: per-launch latencies (ms) and the wall time (s) all launches took."""
    latencies_ms: np.ndarray
    wall_s: float
    batch: int

    @property
    def launches(self) -> int:
        """Number of timed launches."""
        return int(len(self.latencies_ms))

    @property
    def throughput(self) -> float:
        """Images per second: launches / wall time x batch."""
        return self.launches / self.wall_s * self.batch


def summarize(timings: Sequence[Timing]) -> dict:
    """Pool repeated measurements: latency statistics over all launches, throughput per repeat and overall."""
    if not timings:
        raise ValueError("no measurements to summarize")
    batch = timings[0].batch
    lat = np.concatenate([t.latencies_ms for t in timings])
    wall = sum(t.wall_s for t in timings)
    per_repeat = [t.throughput for t in timings]
    return {"batch": batch, "repeats": len(timings), "iterations": int(lat.size),
            "mean_ms": float(lat.mean()), "median_ms": float(np.median(lat)),
            "p90_ms": percentile(lat, 90), "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99),
            "throughput_ips": lat.size / wall * batch, "spread_pct": relative_range(per_repeat),
            "throughput_min_ips": float(min(per_repeat)), "throughput_max_ips": float(max(per_repeat)),
            "wall_s": float(wall)}


def compare_throughput(a: dict | pd.Series, b: dict | pd.Series) -> dict:
    """Throughput of row `a` against row `b`: ratio, difference and the threshold it must exceed to count.

    The threshold is the larger of the two rows' spreads, and at least MIN_DIFF_PCT.
    """
    spreads = (float(a["spread_pct"]), float(b["spread_pct"]))
    if any(math.isnan(s) for s in spreads):
        raise ValueError("a row has no spread (one repeat): measure with bench_repeats >= 2 to compare rows")
    ratio = float(a["throughput_ips"]) / float(b["throughput_ips"])
    diff_pct = 100 * (ratio - 1)
    threshold = max(*spreads, MIN_DIFF_PCT)
    if abs(diff_pct) <= threshold:
        verdict = "no difference"
    else:
        verdict = "faster" if diff_pct > 0 else "slower"
    return {"ratio": ratio, "diff_pct": diff_pct, "threshold_pct": threshold, "verdict": verdict}


def verdict(a: dict | pd.Series, b: dict | pd.Series) -> str:
    """'faster', 'slower' or 'no difference' (within the larger spread, or below MIN_DIFF_PCT) for `a` against `b`."""
    return compare_throughput(a, b)["verdict"]


# when a window has its answer ----------------------------------------------------------------------
def median_noise_pct(values: Sequence[float]) -> float:
    """The median's relative noise, in percent: the half-width of its distribution-free 95 % confidence interval
    (the order statistics 1.96 sqrt(n)/2 ranks either side of it) over the median. Two modes of equal weight give
    about the gap between them, not the small spread within each. NaN for fewer than two values."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        return float("nan")
    d = 0.98 * math.sqrt(n)  # the sample median's rank has a standard error of sqrt(n)/2; 1.96 of them
    lo, hi = max(0, math.floor((n - 1) / 2 - d)), min(n - 1, math.ceil((n - 1) / 2 + d))
    part = np.partition(x, [lo, hi])
    return float(100 * (part[hi] - part[lo]) / 2 / np.median(x))


def halves_drift_pct(values: Sequence[float]) -> float:
    """How far the medians of a window's first and second halves are apart, in percent of the whole median."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    half = x.size // 2
    return float(100 * abs(np.median(x[:half]) - np.median(x[half:])) / np.median(x))


@dataclasses.dataclass(frozen=True)
class StopRule:
    """When a timing window has its answer (nvbench's bounds: 0.5 %, at least 10 samples and 0.5 s).

    A window may stop once it has `min_samples` launches and `min_s` seconds, the median's 95 % confidence
    interval is within +-`max_noise_pct` of it (`median_noise_pct`) and its halves' medians are within
    `max_drift_pct` (`halves_drift_pct`: clocks still settling, or modes that alternate, keep it going).
    `bench_seconds` caps it.
    """
    max_noise_pct: float = 0.5
    min_samples: int = 10
    min_s: float = 0.5
    max_drift_pct: float = 0.5

    def settled(self, latencies_ms: Sequence[float], elapsed_s: float) -> bool:
        """Whether a window with these launch latencies after `elapsed_s` seconds has its answer (a pure function)."""
        if len(latencies_ms) < self.min_samples or elapsed_s < self.min_s:
            return False
        return (median_noise_pct(latencies_ms) <= self.max_noise_pct
                and halves_drift_pct(latencies_ms) <= self.max_drift_pct)

    def describe(self, cap_s: float) -> str:
        """The rule in words, as every row's `window` column and the README's method state it."""
        return (f"stops when the median's 95% CI is within +-{self.max_noise_pct:g}% and its halves agree within "
                f"{self.max_drift_pct:g}%, after >= {self.min_samples} launches and {self.min_s:g} s; "
                f"at most {cap_s:g} s")


# The CPU rows' rule: BenchmarkDotNet's default bound (2 %) instead of nvbench's. A CPU row answers how much faster
# the GPU rows are (10 to 100 times), and on a host its windows drift apart by more than 2 % whatever their length
# (3 s windows of one row differed by up to 11 % on a 2-core VM and spread 1-15 % on a 16-core GPU host), so the
# tighter bound only kept every CPU window at its cap (0 of 3 stopped early in most CPU rows of the 2026-12-07 run).
HOST_RULE = StopRule(max_noise_pct=2.0, max_drift_pct=2.0)
FIXED = "fixed: every window runs {cap:g} s (and >= {n} launches)"
CHECK_GROWTH = 1.25  # the rule is checked at 0.5 s, then each time the window is 25 % older: a handful of checks


class Window:
    """One timing window's stop decision: at least `min_iters` launches, at most `seconds`, earlier once `rule`
    says settled (None: a fixed window). The rule is checked only at a few times (`CHECK_GROWTH`), so the
    host's statistics take well under 0.2 % of a window; `stopped_early` says how it ended."""

    def __init__(self, seconds: float, min_iters: int = 10, rule: StopRule | None = None):
        self.seconds, self.min_iters, self.rule = seconds, min_iters, rule
        self.next_check = rule.min_s if rule else math.inf
        self.stopped_early = False
        self.check_s = 0.0  # host seconds spent deciding: the timers leave them out of the wall time

    def done(self, latencies_ms: Sequence[float], elapsed_s: float) -> bool:
        """Whether to stop after these launches, `elapsed_s` seconds into the window."""
        if len(latencies_ms) < self.min_iters:
            return False
        if elapsed_s >= self.seconds:
            return True
        if elapsed_s < self.next_check:
            return False
        t0 = time.perf_counter()
        self.next_check = elapsed_s * CHECK_GROWTH
        self.stopped_early = self.rule.settled(latencies_ms, elapsed_s)
        self.check_s += time.perf_counter() - t0
        return self.stopped_early


# timing loops -------------------------------------------------------------------------------------
def time_host(fn: Callable[[], Any], batch: int, seconds: float | Window, min_iters: int = MIN_ITERS) -> Timing:
    """Launch `fn` back to back, perf_counter around each call, until the window is done (`seconds`: a fixed
    window of >= `seconds` and >= `min_iters` calls; a Window: its rule)."""
    window = seconds if isinstance(seconds, Window) else Window(seconds, min_iters)
    clock = time.perf_counter
    lat: list[float] = []
    start = clock()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        lat.append((t1 - t0) * 1e3)
        if window.done(lat, t1 - start - window.check_s):
            break
    return Timing(np.asarray(lat), t1 - start - window.check_s, batch)


def time_cuda(fn: Callable[[], Any], batch: int, seconds: float | Window, min_iters: int = MIN_ITERS,
              in_flight: int = IN_FLIGHT) -> Timing:
    """Launch `fn` on the current stream with CUDA events around each launch, `in_flight` launches queued at most,
    until the window is done (as `time_host`; the rule sees the launches collected so far)."""
    import torch
    window = seconds if isinstance(seconds, Window) else Window(seconds, min_iters)
    stream = torch.cuda.current_stream()
    slots = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(in_flight)]
    busy = [False] * in_flight
    lat: list[float] = []

    def collect(k: int) -> None:
        if busy[k]:
            slots[k][1].synchronize()  # waits for that launch only: the other stays queued
            lat.append(slots[k][0].elapsed_time(slots[k][1]))
            busy[k] = False

    torch.cuda.synchronize()
    start = time.perf_counter()
    n = 0
    while True:
        k = n % in_flight
        collect(k)
        slots[k][0].record(stream)
        fn()
        slots[k][1].record(stream)
        busy[k] = True
        n += 1
        if n >= window.min_iters and window.done(lat, time.perf_counter() - start - window.check_s):
            break
    torch.cuda.synchronize()
    wall = time.perf_counter() - start - window.check_s
    for k in range(in_flight):
        collect(k)
    return Timing(np.asarray(lat), wall, batch)


def warm_up(fn: Callable[[], Any], seconds: float, sync: Callable[[], None] = lambda: None,
            min_calls: int = 3) -> float:
    """One priming call (compilation, graph capture), then calls for >= `seconds` and >= `min_calls`;
    the priming call's seconds."""
    t0 = time.perf_counter()
    fn()
    sync()
    prime_s = time.perf_counter() - t0
    start, calls = time.perf_counter(), 0
    while calls < min_calls or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync()
    return prime_s
