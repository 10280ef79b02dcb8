"""The benchmark harness: statistics on synthetic timings, the table's schema, a real CPU measurement, the figures."""
import copy
import json
import math
import re
import time

import numpy as np
import pandas as pd
import pytest
from bench_tables import synthetic_table

from mvlib import bench, bench_windows, energy, paths
from mvlib.skips import StageSkipped
from mvlib.tensorrt import shapes
from mvlib.tensorrt import timing as trt_timing


def timing(latencies, wall_s, batch=1):
    """A synthetic measurement."""
    return bench_windows.Timing(np.asarray(list(latencies), dtype=float), wall_s, batch)


# statistics ---------------------------------------------------------------------------------------
def test_percentile_is_nearest_rank():
    x = np.random.default_rng(0).permutation(np.arange(1, 101))  # order must not matter
    assert [bench_windows.percentile(x, q) for q in (0, 50, 90, 95, 99, 100)] == [1, 50, 90, 95, 99, 100]
    assert bench_windows.percentile([1, 2, 3, 4], 90) == 4  # an observed value, not an interpolation (3.7)
    assert bench_windows.percentile([1, 2, 3, 4], 50) == 2
    assert bench_windows.percentile([7.5], 99) == 7.5
    with pytest.raises(ValueError):
        bench_windows.percentile([], 50)
    with pytest.raises(ValueError):
        bench_windows.percentile([1.0], 101)


def test_summarize_pools_repeats():
    a = timing(range(1, 51), 2.0, batch=4)     # 50 launches in 2 s: 100 img/s
    b = timing(range(51, 101), 2.5, batch=4)   # 50 launches in 2.5 s: 80 img/s
    s = bench_windows.summarize([a, b])
    assert (s["repeats"], s["iterations"], s["batch"]) == (2, 100, 4)
    assert s["mean_ms"] == pytest.approx(50.5) and s["median_ms"] == pytest.approx(50.5)
    assert (s["p90_ms"], s["p95_ms"], s["p99_ms"]) == (90, 95, 99)
    assert s["throughput_ips"] == pytest.approx(100 / 4.5 * 4)  # launches / wall time x batch
    assert (s["throughput_min_ips"], s["throughput_max_ips"]) == (pytest.approx(80), pytest.approx(100))
    assert s["spread_pct"] == pytest.approx(100 * 20 / 90)  # range over the median of the repeats
    assert s["wall_s"] == pytest.approx(4.5)


def test_relative_range():
    assert bench_windows.relative_range([100, 110, 105]) == pytest.approx(100 * 10 / 105)
    assert bench_windows.relative_range([3.0, 3.0]) == 0
    assert math.isnan(bench_windows.relative_range([5.0]))


def test_no_difference_rule():
    ref = {"throughput_ips": 100.0, "spread_pct": 5.0}
    assert bench_windows.verdict({"throughput_ips": 104.0, "spread_pct": 2.0}, ref) == "no difference"
    assert bench_windows.verdict({"throughput_ips": 96.0, "spread_pct": 2.0}, ref) == "no difference"
    assert bench_windows.verdict({"throughput_ips": 106.0, "spread_pct": 2.0}, ref) == "faster"
    assert bench_windows.verdict({"throughput_ips": 90.0, "spread_pct": 2.0}, ref) == "slower"
    # within the larger spread
    assert bench_windows.verdict({"throughput_ips": 108.0, "spread_pct": 10.0}, ref) == "no difference"
    # below MIN_DIFF_PCT nothing is called, however tight both spreads are
    tight = {"throughput_ips": 100.0, "spread_pct": 0.01}
    least = bench_windows.MIN_DIFF_PCT
    assert bench_windows.verdict({"throughput_ips": 100.0 + 0.9 * least, "spread_pct": 0.01}, tight) == "no difference"
    assert bench_windows.verdict({"throughput_ips": 100.0 + 1.1 * least, "spread_pct": 0.01}, tight) == "faster"
    c = bench_windows.compare_throughput({"throughput_ips": 150.0, "spread_pct": 1.0}, ref)
    assert (c["ratio"], c["diff_pct"], c["threshold_pct"]) == (1.5, pytest.approx(50), 5.0)
    with pytest.raises(ValueError, match="bench_repeats"):
        bench_windows.verdict({"throughput_ips": 1.0, "spread_pct": float("nan")}, ref)


def test_settings_reject_what_cannot_be_compared():
    with pytest.raises(ValueError, match="at least 2"):
        bench.Settings(repeats=1)
    with pytest.raises(ValueError, match="bench_seconds"):
        bench.Settings(seconds=0)


def test_time_host_honours_window_and_minimum_launches():
    t = bench_windows.time_host(lambda: time.sleep(0.001), 2, seconds=0.05)
    assert t.wall_s >= 0.05 and t.launches >= 10 and t.latencies_ms.min() >= 1.0
    assert t.throughput == pytest.approx(t.launches / t.wall_s * 2)
    slow = bench_windows.time_host(lambda: time.sleep(0.01), 1, seconds=0.001)
    assert slow.launches == 10  # at least 10 launches even when the window is shorter


# the stopping rule, on realistic streams of launch latencies (ms) --------------------------------------------
def _stream(kind: str, seed: int, n: int = 20000) -> np.ndarray:
    """Latencies of a window's launches around 1 ms: steady, noisy (a busy CPU), drifting 10 % over 3 s (clocks,
    heat), 10 % slow launches (interrupts), alternating 0.4 s blocks 10 % apart (clock states), two equal modes."""
    r = np.random.default_rng(seed)
    jitter = r.lognormal(0, 0.01, n)
    return {"steady": r.lognormal(0, 0.02, n), "noisy": r.lognormal(0, 0.5, n),
            "drifting": np.minimum(1.0 + np.arange(n) / 30000, 1.1) * jitter,
            "slow tail": np.where(r.random(n) < 0.1, 1.5, 1.0) * jitter,
            "alternating": np.where(np.arange(n) // 400 % 2 == 0, 1.0, 1.1) * jitter,
            "two modes": np.where(r.random(n) < 0.5, 1.3, 1.0) * jitter}[kind]


def _window(lat: np.ndarray, seconds: float, rule) -> tuple[int, float, bool]:
    """Feed a stream to a Window as a timer would (elapsed = the launches' sum): (launches, seconds, early)."""
    window, elapsed = bench_windows.Window(seconds, bench_windows.MIN_ITERS, rule), 0.0
    for i, ms in enumerate(lat):
        elapsed += ms / 1e3
        if window.done(lat[:i + 1], elapsed):
            return i + 1, elapsed, window.stopped_early
    raise AssertionError("the stream ran out before the window's cap")


@pytest.mark.parametrize("kind", ["steady", "slow tail", "alternating"])
def test_a_window_stops_early_once_its_median_is_known(kind):
    for seed in range(5):
        lat = _stream(kind, seed)
        n, elapsed, early = _window(lat, 3.0, bench_windows.StopRule())
        fixed, _, _ = _window(lat, 3.0, None)  # the old fixed window: the whole 3 s
        assert early and elapsed < 1.5 and n >= bench_windows.MIN_ITERS
        assert np.median(lat[:n]) == pytest.approx(np.median(lat[:fixed]), rel=0.01)  # the same answer, sooner


@pytest.mark.parametrize("kind", ["noisy", "drifting"])
def test_a_window_whose_median_is_not_known_runs_to_its_cap(kind):
    for seed in range(5):
        n, elapsed, early = _window(_stream(kind, seed), 3.0, bench_windows.StopRule())
        assert not early and elapsed >= 3.0


def test_the_rule_needs_its_minimum_launches_and_seconds_and_a_cap_wins():
    rule = bench_windows.StopRule()
    flat = np.ones(5000)
    assert rule.settled(flat, 0.5) and not rule.settled(flat, 0.49) and not rule.settled(flat[:9], 10.0)
    n, elapsed, early = _window(flat, 0.2, rule)  # a cap under min_s: the fixed window (the smoke profile's)
    assert not early and elapsed == pytest.approx(0.2, abs=0.002)
    slow = np.full(100, 200.0)  # 200 ms launches: the 10 launches take 2 s, past the 0.5 s minimum
    assert _window(slow, 3.0, rule)[0] == bench_windows.MIN_ITERS


def test_median_noise_sees_two_modes_that_a_spread_within_each_would_hide():
    lat = _stream("two modes", 0)[:1000]
    mad_noise = 100 * 1.2533 * 1.4826 * np.median(np.abs(lat - np.median(lat))) / np.sqrt(lat.size) / np.median(lat)
    assert bench_windows.median_noise_pct(lat) > 5 > 0.5 > bench_windows.median_noise_pct(_stream("steady", 0)[:1000])
    assert bench_windows.halves_drift_pct(np.r_[np.ones(500), np.full(500, 1.02)]) == pytest.approx(2.0 / 1.01)
    assert mad_noise < 5  # the textbook MAD estimate would call this median known within a few percent
    assert math.isnan(bench_windows.median_noise_pct([1.0]))


def test_rows_state_their_window_rule():
    lenient = bench_windows.StopRule(max_noise_pct=1e6, max_drift_pct=1e6, min_s=0.05)  # settled as soon as allowed
    s = bench.Settings(seconds=5.0, repeats=2, warmup_s=0.0, rule=lenient)
    df = bench.measure_all(lambda settings: bench.Backend("fake", "cpu", "fp32", "fake", lambda b: lambda: None,
                                                          "perf_counter around each call"), [1], s)
    assert df.window.iloc[0] == s.describe_window() + "; 2 of 2 stopped early"
    assert df.wall_s.iloc[0] < 1.0 and "95% CI" in df.window.iloc[0] and "at most 5 s" in df.window.iloc[0]
    fixed = bench.Settings(seconds=0.05, repeats=2, rule=None)
    assert fixed.describe_window() == "fixed: every window runs 0.05 s (and >= 10 launches)"


def test_cpu_rows_stop_at_the_host_rule_and_gpu_rows_at_the_studys():
    """A CPU row's window stops at BenchmarkDotNet's 2 % where the study's 0.5 % would run on: a host stream whose
    median is known within 2 % but not 0.5 %; a fixed window or a rule someone chose is left as it is."""
    s = bench.Settings()
    assert s.on("cpu").rule == bench_windows.HOST_RULE and s.on("cuda") is s
    assert bench.Settings(rule=None).on("cpu").rule is None
    own = bench_windows.StopRule(max_noise_pct=0.1)
    assert bench.Settings(rule=own).on("cpu").rule == own
    r = np.random.default_rng(7)
    lat = 20.0 * (1 + 0.08 * r.standard_normal(20000).clip(-3, 3))  # 20 ms CPU launches, 8 % jitter
    n, elapsed, early = _window(lat, 3.0, bench_windows.HOST_RULE)
    assert early and elapsed < 2.5
    assert not _window(lat, 3.0, bench_windows.StopRule())[2]  # the study's bound: the full 3 s
    assert np.median(lat[:n]) == pytest.approx(np.median(lat[:150]), rel=0.02)
    assert "within +-2%" in s.on("cpu").describe_window()


def test_agreement_times_each_batch_both_ways_on_one_backend():
    """The table the lead's GPU check writes (tools/window_agreement.py): fixed and rule windows, interleaved."""
    made = []

    def factory(settings):
        made.append(settings)
        return bench.Backend("fake", "cpu", "fp32", "fake", lambda b: (lambda: time.sleep(0.001)), "perf_counter")

    quick = bench_windows.StopRule(max_noise_pct=1e6, max_drift_pct=1e6, min_s=0.02)
    s = bench.Settings(seconds=0.3, repeats=2, warmup_s=0.0, rule=quick)
    df = bench.agreement(factory, [1, 2], s)
    assert len(made) == 1 and list(df.columns) == bench.AGREEMENT_COLUMNS and list(df.batch) == [1, 2]
    assert (df.rule_wall_s < df.fixed_wall_s / 3).all() and (df.fixed_wall_s >= 2 * 0.3).all()
    assert (df.rule_stopped_early == "2 of 2").all() and (df.rule == s.describe_window()).all()
    assert (df.fixed == bench_windows.FIXED.format(cap=0.3, n=bench_windows.MIN_ITERS)).all()
    assert df.diff_pct.tolist() == pytest.approx((100 * (df.rule_ips / df.fixed_ips - 1)).tolist())
    assert df.median_diff_pct.tolist() == pytest.approx((100 * (df.rule_median_ms / df.fixed_median_ms - 1)).tolist())
    assert (df.fixed_median_ms > 1.0).all() and (df.rule_samples >= 2 * bench_windows.MIN_ITERS).all()
    assert (df.fixed_samples > df.rule_samples).all()  # the fixed windows ran longer, so launched more
    worst = df[["diff_pct", "median_diff_pct"]].abs().max(axis=1)
    assert (df.agrees == (worst <= bench.AGREEMENT_PCT)).all()


def test_measure_all_leaves_out_batches_a_backend_cannot_run():
    def prepare(batch):
        trt_timing.within(shapes.Profile(1, 1, 2), batch)
        return lambda: time.sleep(0.0005)

    def factory(settings):
        return bench.Backend("fake", "cpu", "fp32", "fake", prepare, "perf_counter around each call")

    s = bench.Settings(seconds=0.01, repeats=2, warmup_s=0.0)
    df = bench.measure_all(factory, [1, 2, 4], s)
    assert list(df.batch) == [1, 2]
    with pytest.raises(StageSkipped, match=r"outside.*\[1, 2\]"):
        bench.measure_all(factory, [8], s)


def test_missing_models_are_skipped_with_the_reason(tmp_path):
    s = bench.Settings(seconds=0.01, repeats=2)
    for name, maker in (("model.int8.onnx", "04_int8"), ("model.onnx", "01_export")):
        says = f"{name} not found (notebook {maker} makes it; looked in {tmp_path})"
        with pytest.raises(StageSkipped, match=re.escape(says)) as skip:
            bench.onnxruntime_cpu(s, tmp_path / name, "int8")
        assert skip.value.needs == (name,)  # the driver tells a left-out notebook from a failure by it
    with pytest.raises(StageSkipped, match=r"model\.fp16\.onnx"):  # before TensorRT is even imported
        trt_timing.tensorrt(s, tmp_path / "model.fp16.onnx", "fp16", shapes.Profile(1, 16, 32))


# a real CPU measurement and the table's schema ------------------------------------------------------
def test_real_cpu_measurement_gives_valid_rows(xxs):
    exported, _ = xxs
    s = bench.Settings(img_size=256, seconds=0.05, repeats=2, warmup_s=0.05, variant="mobilevit_xxs")
    df = bench.measure_all(bench.onnxruntime_cpu, [1, 2], s, exported.onnx, "fp32")
    assert list(df.columns) == bench.COLUMNS
    assert list(df.batch) == [1, 2] and set(df.backend) == {"onnxruntime"} and set(df.device) == {"cpu"}
    for _, r in df.iterrows():
        assert r.repeats == 2 and r.iterations >= 2 * bench_windows.MIN_ITERS
        assert 0 < r.median_ms <= r.p90_ms <= r.p95_ms <= r.p99_ms
        assert r.throughput_ips == pytest.approx(r.iterations / r.wall_s * r.batch)
        # back-to-back launches on the host: throughput and mean latency tell the same story
        assert r.throughput_ips == pytest.approx(1000 * r.batch / r.mean_ms, rel=0.2)
        assert r.throughput_min_ips <= r.throughput_ips <= r.throughput_max_ips and r.spread_pct >= 0
        assert math.isnan(r.peak_mem_mib) and r.transfers == bench.CPU_TRANSFERS
        assert r.variant == "mobilevit_xxs" and r.precision == "fp32"
        # what it ran from, what making it and priming each batch took
        assert r.artifact == "model.onnx" and r.artifact_bytes == exported.onnx.stat().st_size
        assert r.setup_s > 0 and r.prime_s > 0
        assert isinstance(r.power_w, str) or r.power_w > 0  # a number, or the reason there is none; never 0


def test_backends_are_checked_against_fp32_on_the_inputs_they_were_timed_on(xxs):
    exported, model = xxs
    s = bench.Settings(seconds=0.02, repeats=2, warmup_s=0.0, variant="mobilevit_xxs")
    ref = bench.Reference(model, s, chunk=2)  # chunks smaller than a batch: the reference is assembled in pieces
    bench.measure_all(bench.onnxruntime_cpu, [1, 3], s, exported.onnx, "fp32", accuracy=ref)
    acc = ref.table()
    assert list(acc.columns) == bench.ACCURACY_COLUMNS
    assert list(acc.batch) == [1, 3] and list(acc.n) == [1, 3] and set(acc.reference) == {bench.Reference.name}
    assert (acc.cosine_min > 0.99999).all() and (acc.top1_agreement == 1).all() and (acc.max_abs < 1e-3).all()
    # a model that is not the reference is caught: the classifier's weights negated negate the logits
    other = copy.deepcopy(model)
    head = [m for m in other.modules() if isinstance(m, __import__("torch").nn.Linear)][-1]
    head.weight.data.mul_(-1)
    head.bias.data.mul_(-1)
    wrong = bench.Reference(other, s)
    bench.measure_all(bench.onnxruntime_cpu, [3], s, exported.onnx, "fp32", accuracy=wrong)
    assert wrong.table().cosine_mean.iloc[0] < -0.99 and wrong.table().top1_agreement.iloc[0] == 0


def test_every_backend_is_timed_and_checked_on_bench_images():
    """bench.images is the one source of benchmark inputs: random in [0, 1], fixed by seed and batch, so the
    reference, the CPU and PyTorch backends and the TensorRT engines see the same images at each batch."""
    import inspect
    s = bench.Settings(img_size=64, seed=3)
    x = bench.images(4, s)
    assert x.shape == (4, 3, 64, 64) and x.dtype == np.float32 and 0 <= x.min() < 0.01 and 0.99 < x.max() <= 1
    assert np.array_equal(x, bench.images(4, s))
    assert not np.array_equal(x[:2], bench.images(2, s)) and not np.array_equal(x, bench.images(4, bench.Settings(
        img_size=64, seed=4)))
    assert "bench.images(batch, settings)" in inspect.getsource(trt_timing.tensorrt_engine)


def test_speedup_table_uses_same_batch_references_and_the_rule():
    df = synthetic_table()
    df.loc[(df.backend == "onnxruntime") & (df.batch == 8), "throughput_ips"] = 30.3  # within the 2 % spread
    sp = bench.speedup_table(df).set_index(["label", "batch"])
    assert sp.loc[("TensorRT FP16", 1), "vs_pytorch_cpu"] == pytest.approx(125)
    assert sp.loc[("TensorRT FP16", 1), "verdict_vs_pytorch_cpu"] == "faster"
    assert sp.loc[("TensorRT FP16", 32), "vs_pytorch_gpu_eager"] == pytest.approx(5)
    assert math.isnan(sp.loc[("TensorRT FP16", 32), "vs_pytorch_cpu"])  # no CPU row at batch 32
    assert sp.loc[("ONNX Runtime CPU FP32", 8), "verdict_vs_pytorch_cpu"] == "no difference"
    assert sp.loc[("PyTorch CPU FP32", 1), "verdict_vs_pytorch_cpu"] == "reference"
    assert sp.loc[("PyTorch eager FP32", 8), "verdict_vs_pytorch_gpu_eager"] == "reference"


@pytest.mark.gpu
def test_cuda_eager_measurement(xxs):
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch")
    _, model = xxs
    s = bench.Settings(seconds=0.5, repeats=2, warmup_s=0.05)  # windows long enough for NVML's counter to tick
    ref = bench.Reference(model, s)
    df = bench.measure_all(bench.pytorch_cuda, [1, 8], s, model, precision="fp16", channels_last=True,
                           accuracy=ref)
    assert list(df.columns) == bench.COLUMNS and set(df.device) == {"cuda"}
    assert (df.peak_mem_mib > 0).all() and (df.transfers == bench.GPU_TRANSFERS).all()
    assert (df.p99_ms >= df.median_ms).all() and (df.throughput_ips > 0).all()
    meter = energy.meter("cuda")
    if isinstance(meter, energy.NvmlMeter):  # a board with the counter: power above zero, a plausible board draw
        assert all(10 < w < 2000 for w in df.power_w) and (df.energy_j_per_image > 0).all()
    else:
        assert (df.power_w == "not measured: " + meter.reason).all()
    acc = ref.table()  # FP16 on the GPU against FP32 on the CPU, on the very images it was timed on
    assert list(acc.batch) == [1, 8] and (acc.cosine_min > 0.999).all() and (acc.top1_agreement >= 0.5).all()


# the notebook (test_notebooks checks the files it creates) ----------------------------------------------------
def test_notebook_06_smoke_run_tables(smoke_run):
    table = pd.read_csv(smoke_run / "results" / "06_benchmark.csv")
    assert list(table.columns) == bench.COLUMNS
    assert {"pytorch", "onnxruntime"} <= set(table.backend) and set(table.batch) == {1, 4}
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    stages = manifest["stages"]
    assert stages["06_benchmark/pytorch_cpu"]["status"] == "ok"
    # the decision table: a row per backend the run timed; where no counter exists, the energy columns say why
    choice = pd.read_csv(smoke_run / "results" / "06_decision.csv")
    assert list(choice.label) == list(dict.fromkeys(table.label)) and not choice.isna().any().any()
    for device, rows in choice.groupby("device"):
        idle = manifest["energy"][device]["idle_w"]
        if isinstance(idle, str):  # no counter on this machine: every row of that device says why
            assert (rows.power_w == idle).all() and (rows.j_per_image == idle).all()
    anchor = pd.read_csv(smoke_run / "results" / "06_anchor.csv").iloc[0]
    # mobilevit_xxs, never the anchor's model
    assert anchor.verdict == manifest["anchor"]["verdict"] == "not comparable"
    assert "mobilevit_xxs" in anchor.reason or "no torch.compile" in anchor.reason
    for name in ("pytorch_cuda_fp32", "torch_compile_cudagraphs_fp16", "tensorrt_fp16", "gpu_ceilings"):
        st = stages[f"06_benchmark/{name}"]
        assert st["status"] in ("ok", "skipped") and (st["status"] == "ok" or st["reason"])


# torch.compile's caches ------------------------------------------------------------------------------------
# (a later process finding them warm, on real Inductor: tests/driver/test_ahead.py)
def test_compile_caches_keep_a_folder_the_user_chose(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("TRITON_CACHE_DIR", default_cache_dir())  # not torch's value for Triton: a user's choice
    chosen = bench.compile_caches()
    assert chosen == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "mine"), "TRITON_CACHE_DIR": default_cache_dir()}
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch writes on first use
    assert bench.compile_caches()["TORCHINDUCTOR_CACHE_DIR"] == str(paths.CACHE / "torch" / "inductor")


def test_pytorch_on_the_gpu_runs_only_the_precisions_the_table_gives_a_torch_type(unknown_precision):
    """The torch type comes from the table of precisions: INT8 is refused naming the fix (no GPU touched)."""
    settings = bench.Settings(seconds=0.01, repeats=2, warmup_s=0.0)
    with pytest.raises(ValueError, match="PyTorch does not run INT8 here: it runs fp32, fp16"):
        bench.pytorch_cuda(settings, None, precision="int8")
    with pytest.raises(ValueError, match=f"unknown precision '{unknown_precision}'"):
        bench.pytorch_cuda(settings, None, precision=unknown_precision)


def test_describe_caches_counts_between_two_readings():
    before = {"fxgraph_hit": 2, "fxgraph_miss": 5, "fxgraph_bypass": 0, "aot_hit": 1, "aot_miss": 5, "aot_bypass": 1}
    after = {"fxgraph_hit": 3, "fxgraph_miss": 5, "fxgraph_bypass": 0, "aot_hit": 1, "aot_miss": 6, "aot_bypass": 1}
    assert bench.describe_caches(before, after) == ("FX-graph cache 1 hit, 0 miss, 0 bypass; "
                                                    "AOTAutograd cache 0 hit, 1 miss, 0 bypass")
    assert set(bench.cache_counts()) == set(after)  # torch's counters under the names describe_caches reads
