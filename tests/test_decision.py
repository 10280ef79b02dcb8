"""The decision table: every number read from the table that measured it, a reason wherever none did, the Pareto
front, and the figure; on a run shaped like an A10 run with engines, and on a CPU-only run."""
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mvlib import autocast, bench, decision, decision_plots, metrics, precisions
from mvlib.run import Run
from mvlib.tensorrt import table as engines_table

ROOT = Path(__file__).resolve().parent.parent
RTX = ("tensorrt_rtx", "1.7.1.116", "sm86")


def _logits_pair(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference logits and a perturbed copy, as a lower precision gives them."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n, 1000))
    return ref, ref + noise * rng.normal(size=ref.shape)


def _bench_rows() -> pd.DataFrame:
    """06_benchmark.csv of an A10-like run: CPU rows, PyTorch on the GPU, and engines that ran."""
    spec = [("pytorch", "cpu", "fp32", "PyTorch CPU FP32", {1: 34, 8: 46}),
            ("onnxruntime", "cpu", "fp32", "ONNX Runtime CPU FP32", {1: 73, 8: 118}),
            ("onnxruntime", "cpu", "int8", "ONNX Runtime CPU INT8", {1: 25, 8: 39}),
            ("pytorch-eager", "cuda", "fp32", "PyTorch eager FP32", {1: 207, 16: 3347, 32: 4268}),
            ("torch.compile+cudagraphs", "cuda", "fp16", "torch.compile FP16 + CUDA graphs", {1: 1856, 16: 10761,
                                                                                               32: 12885}),
            ("tensorrt", "cuda", "fp16", "TensorRT-RTX FP16", {1: 2500, 16: 14000, 32: 15500}),
            ("tensorrt", "cuda", "int8", "TensorRT-RTX INT8", {16: 16500, 32: 17000}),
            ("tensorrt+plugin", "cuda", "fp16", "TensorRT-RTX FP16 + SiLU plugin", {1: 2300, 16: 12000, 32: 13000})]
    rows = []
    for backend, device, prec, label, thr in spec:
        for batch, ips in thr.items():
            ms = 1000 * batch / ips
            cuda = device == "cuda"
            rows.append({c: np.nan for c in bench.COLUMNS} | {
                "backend": backend, "device": device, "precision": prec, "label": label, "batch": batch,
                "repeats": 3, "iterations": 900, "mean_ms": ms, "median_ms": ms * 0.98, "p90_ms": ms * 1.05,
                "p95_ms": ms * 1.1, "p99_ms": ms * 1.3, "throughput_ips": float(ips), "spread_pct": 1.5,
                "peak_mem_mib": 40.0 * batch if cuda else np.nan, "variant": "mobilevit_s", "img_size": 256,
                "power_w": 110 + ips / 100 if cuda else "not measured: RAPL: no package counters",
                "energy_j_per_image": (110 + ips / 100) / ips if cuda else "not measured: RAPL: no package counters",
                "setup_s": 0.4, "prime_s": 35.0 if "compile" in backend else 0.05,
                # the engines' sizes are engines.csv's: their benchmark rows leave the artifact empty
                "artifact": "model.onnx" if backend == "onnxruntime" else
                "" if backend.startswith("tensorrt") else "weights in memory (fp32, no file)",
                "artifact_bytes": np.nan if backend.startswith("tensorrt") else 22_300_000.0})
    return pd.DataFrame(rows, columns=bench.COLUMNS)


def _accuracy_06() -> pd.DataFrame:
    """06_accuracy.csv: the GPU PyTorch backends against PyTorch FP32, one row per batch."""
    rows = []
    for label, backend, prec, noise in (("PyTorch eager FP32", "pytorch-eager", "fp32", 1e-6),
                                        ("torch.compile FP16 + CUDA graphs", "torch.compile+cudagraphs", "fp16",
                                         2e-3)):
        for k, batch in enumerate((1, 16, 32)):
            ref, out = _logits_pair(batch, noise, seed=k)
            rows.append({"label": label, "backend": backend, "device": "cuda", "precision": prec, "batch": batch,
                         "reference": bench.Reference.name, **metrics.compare(ref, out), "variant": "mobilevit_s",
                         "img_size": 256})
    return pd.DataFrame(rows, columns=bench.ACCURACY_COLUMNS)


def _accuracy_03() -> pd.DataFrame:
    """03_accuracy.csv: ONNX Runtime FP32 against PyTorch, TensorRT FP16 against ONNX Runtime FP32."""
    rows = [{"runner": "pytorch-fp32", "reference": "-", "batch": 1, "n": 64, "status": "reference"}]
    for runner, ref_name, noise in (("onnxrt-fp32", "pytorch-fp32", 1e-7), ("onnxrt-fp16", "pytorch-fp32", 1e-3),
                                    ("trt-fp16", "onnxrt-fp32", 1e-3)):
        for batch in (1, 32):
            ref, out = _logits_pair(64, noise, seed=batch)
            rows.append({"runner": runner, "reference": ref_name, "batch": batch, "status": "ok", "passed": True,
                         **metrics.compare(ref, out)})
    rows += [{"runner": "trt-fp32", "reference": "onnxrt-fp32", "batch": b, "status": "skipped: no runtime here"}
             for b in (1, 32)]
    return autocast.combine(pd.DataFrame(rows), columns=autocast.COLUMNS)


def _int8_04(labelled: bool) -> pd.DataFrame:
    """04_int8_accuracy.csv with each chosen file twice: model.int8.onnx with FP16 floats (failed), then the
    FP32-float fallback; model.fp8.onnx with FP16 floats (passed), then with FP32 floats (the same, measured again)."""
    rows = []
    for prec, hp, agree, cos, top1 in (("int8", "fp16", 0.988, 0.9995, 0.770), ("int8", "fp32", 0.992, 0.99962, 0.776),
                                       ("fp8", "fp16", 0.996, 0.99931, 0.779), ("fp8", "fp32", 0.994, 0.9991, 0.777)):
        row = {"images": "ImageNette", "precision": prec, "policy": "sensitivity", "method": "entropy",
               "high_precision": hp, "file": f"model.{prec}.onnx", "n": 256, "max_abs": 0.05, "mean_abs": 0.01,
               "cosine_mean": cos, "cosine_min": cos - 0.001, "top1_agreement": agree,
               "passes": hp == "fp32" or prec == "fp8"}
        if labelled:
            row |= {"top1_fp32": 0.781, "top1_quantized": top1, "top1_drop_points": 100 * (0.781 - top1)}
        rows.append(row)
    return pd.DataFrame(rows)


def _engines() -> pd.DataFrame:
    """engines.csv: the engines notebooks 03 to 05 built, INT8's accuracy not run (and why)."""
    rows = []
    for nb, engine, onnx, status, secs, size in (("03_fp32_fp16", "fp16", "model.fp16.onnx", "built", 4.1, 18.5e6),
                                                 ("04_int8", "int8", "model.int8.onnx", "reused", 5.2, 22.7e6),
                                                 ("05_silu_plugin", "plugin_fp16", "model.fp16.silu.onnx", "built",
                                                  4.9, 25.5e6)):
        rows.append({"notebook": nb, "engine": engine, "onnx": onnx, "flavour": RTX[0], "flavour_version": RTX[1],
                     "target": RTX[2], "status": status, "messages": "", "build_seconds": secs,
                     "engine_bytes": size, "ran": engine != "int8",
                     "accuracy": "skipped: the INT8 engine check needs notebook 04's images" if engine == "int8"
                     else "passed (cosine_min 0.999990)", "timing": "timed"})
    return pd.DataFrame(rows).reindex(columns=engines_table.ENGINE_COLUMNS)


def _plugin_05() -> pd.DataFrame:
    """05_plugin_accuracy.csv: the plugin engine against ONNX Runtime on the original model."""
    ref, out = _logits_pair(4, 1e-3, seed=7)
    return pd.DataFrame([{"runner": "trt-plugin_fp16", "reference": "onnxrt-original", "batch": 4,
                          **metrics.compare(ref, out), "precision": "fp16", "cosine_tolerance": 0.999,
                          "passed": True}])


def a10_run(tmp_path: Path, labelled: bool = True) -> tuple[Run, dict]:
    """A run folder holding every table an A10-like run writes, and its manifest."""
    run = Run(tmp_path / "run", "06_benchmark")
    for name, frame in (("06_benchmark.csv", _bench_rows()), ("06_accuracy.csv", _accuracy_06()),
                        ("03_accuracy.csv", _accuracy_03()), ("04_int8_accuracy.csv", _int8_04(labelled)),
                        ("engines.csv", _engines()), ("05_plugin_accuracy.csv", _plugin_05())):
        run.save_table(frame, name)
    run.set("int8", {"file": "model.int8.onnx", "high_precision": "fp32", "passes": True})
    run.set("fp8", {"file": "model.fp8.onnx", "high_precision": "fp16", "passes": True})
    run.set("int8_images", {"label": "ImageNette (10 classes)" if labelled else "shipped sample images",
                            "labelled": labelled})
    run.set("energy", {"cuda": {"source": "NVML board energy counter, NVIDIA A10", "idle_w": 21.5},
                       "cpu": {"source": "none", "idle_w": "not measured: RAPL: no package counters"}})
    return run, run.manifest()


def test_every_number_comes_from_the_table_that_measured_it(tmp_path):
    run, manifest = a10_run(tmp_path)
    d = decision.table(run.results, manifest).set_index("label")
    assert list(d.reset_index().columns) == decision.COLUMNS
    bench_t = pd.read_csv(run.table("06_benchmark.csv"))
    # timing, memory and energy: 06_benchmark at the row's fastest batch
    tc = d.loc["torch.compile FP16 + CUDA graphs"]
    assert (tc.best_throughput_ips, tc.best_batch) == (12885.0, 32)
    assert tc.peak_gpu_mem_mib == 40.0 * 32 and tc.power_w == pytest.approx(110 + 128.85)
    assert tc.latency_b1_p50_ms == pytest.approx(1000 / 1856 * 0.98)
    assert tc.build_s == pytest.approx(0.4 + 35.0) and "torch.compile" in tc.build_what
    # accuracy: 06's own check, pooled over its batches by images
    acc = pd.read_csv(run.table("06_accuracy.csv"))
    mine = acc[acc.label == tc.name]
    assert tc.cosine_mean == pytest.approx(np.average(mine.cosine_mean, weights=mine.n))
    assert tc.cosine_min == mine.cosine_min.min() and "06_accuracy.csv" in tc.accuracy_source
    # ONNX Runtime FP32 from 03 (against PyTorch), INT8 from 04's chosen file with the fallback's floats
    ort = d.loc["ONNX Runtime CPU FP32"]
    a03 = pd.read_csv(run.table("03_accuracy.csv"))
    assert ort.cosine_mean == pytest.approx(a03[a03.runner == "onnxrt-fp32"].cosine_mean.mean())
    assert ort.accuracy_reference == "pytorch-fp32" and ort.top1_labels == 0.781
    assert (ort.artifact, ort.artifact_bytes) == ("model.onnx", 22_300_000.0)
    int8 = d.loc["ONNX Runtime CPU INT8"]
    assert (int8.top1_agreement, int8.cosine_mean, int8.top1_labels) == (0.992, 0.99962, 0.776)
    # engines: bytes and build seconds from engines.csv, accuracy from 03 / 05, or the engines table's reason
    fp16 = d.loc["TensorRT-RTX FP16"]
    assert (fp16.artifact_bytes, fp16.build_s) == (18.5e6, 4.1) and "sm86" in fp16.artifact
    assert fp16.accuracy_reference == "onnxrt-fp32" and "03_accuracy.csv" in fp16.accuracy_source
    plugin = d.loc["TensorRT-RTX FP16 + SiLU plugin"]
    assert plugin.artifact_bytes == 25.5e6 and "05_plugin_accuracy.csv" in plugin.accuracy_source
    trt8 = d.loc["TensorRT-RTX INT8"]
    assert trt8.cosine_mean == "not measured: engines.csv: the INT8 engine check needs notebook 04's images"
    assert trt8.latency_b1_p50_ms.startswith("not measured: batch 1 was not timed")
    assert "earlier run" in trt8.build_what  # reused: built by an earlier run
    # the reference row and the eager rows say what they are instead of leaving blanks
    ref = d.loc["PyTorch CPU FP32"]
    assert ref.cosine_mean == 1.0 and ref.build_s.startswith("none:")
    assert ref.peak_gpu_mem_mib.startswith("not measured: CPU backend")
    assert ref.power_w == "not measured: RAPL: no package counters"
    assert len(bench_t.label.unique()) == len(d)
    saved = run.save_table(decision.table(run.results, manifest), "06_decision.csv")
    back = pd.read_csv(saved)
    assert not back.isna().any().any()  # never a blank cell: a number or a reason


def test_pareto_front_over_throughput_and_top1(tmp_path):
    run, manifest = a10_run(tmp_path)
    d = decision.table(run.results, manifest).set_index("label")
    front = set(d.index[d.pareto == decision.FRONT])
    # full agreement at the highest throughput wins; INT8 engines are not placed (no accuracy); ORT INT8 is slower
    # and less accurate than TensorRT FP16
    assert front == {"TensorRT-RTX FP16"}
    assert d.loc["ONNX Runtime CPU INT8", "pareto"] == "dominated by TensorRT-RTX FP16"
    assert d.loc["TensorRT-RTX INT8", "pareto"].startswith("not placed")
    assert decision.pareto([1.0, 2.0, 3.0], [1.0, 0.9, None], list("abc")) == [
        decision.FRONT, decision.FRONT, "not placed: accuracy not measured"]  # a real trade-off keeps both
    assert decision.pareto([2.0, 2.0], [1.0, 1.0], ["a", "b"]) == [decision.FRONT, decision.FRONT]  # ties


def test_each_row_says_how_it_was_timed_and_a_plain_row_is_not_ranked_silently_against_a_graph_row(tmp_path):
    """The timing text of each 06_benchmark row (the texts mvlib.tensorrt.timing and bench write) in two words; a
    row dominated by one timed another way on the GPU says so (part of the gap is the launch method); engine rows
    carry the engine's own memory, PyTorch rows their allocator peak, each in its own column."""
    from mvlib.tensorrt import timing
    why = "TensorRT-RTX 1.7.1.116: the execution context is not stream-capturable"
    assert decision.timing_method("cuda", timing.GRAPH_TIMING) == "CUDA graph"
    assert decision.timing_method("cuda", timing.RTX_GRAPH_TIMING.format(why=why)) == "RTX graph mode"
    assert decision.timing_method("cuda", timing.PLAIN_TIMING.format(why=why)) == "plain launches"
    assert decision.timing_method("cuda", "CUDA events around each launch, 2 in flight") == "plain launches"
    assert decision.timing_method("cuda", "CUDA events around each CUDA-graph replay") == "CUDA graph"
    assert decision.timing_method("cpu", "perf_counter around each call") == "host clock"
    run, manifest = a10_run(tmp_path)
    b = pd.read_csv(run.table("06_benchmark.csv"))
    texts = {"TensorRT-RTX FP16": timing.GRAPH_TIMING, "TensorRT-RTX FP16 + SiLU plugin": timing.PLAIN_TIMING,
             "TensorRT-RTX INT8": timing.RTX_GRAPH_TIMING}
    other = {"cpu": "perf_counter around each call", "cuda": "CUDA events around each CUDA-graph replay"}
    b["timing"] = [texts.get(label, other[dev]) for label, dev in zip(b.label, b.device, strict=True)]
    trt = b.backend.str.startswith("tensorrt")
    b.loc[trt, "engine_mem_mib"], b.loc[trt, "peak_mem_mib"] = 12.5, np.nan
    run.save_table(b, "06_benchmark.csv")
    d = decision.table(run.results, manifest).set_index("label")
    plugin = d.loc["TensorRT-RTX FP16 + SiLU plugin"]
    assert plugin.timing_method == "plain launches" and d.loc["TensorRT-RTX INT8"].timing_method == "RTX graph mode"
    assert plugin.pareto == "dominated by TensorRT-RTX FP16 (timed by CUDA graph, this row by plain launches)"
    assert d.loc["ONNX Runtime CPU INT8", "pareto"] == "dominated by TensorRT-RTX FP16"  # CPU against GPU: plain
    assert plugin.engine_mem_mib == 12.5 and plugin.peak_gpu_mem_mib.startswith("not measured: an engine's memory")
    tc = d.loc["torch.compile FP16 + CUDA graphs"]
    assert tc.peak_gpu_mem_mib == 40.0 * 32 and tc.engine_mem_mib.startswith("not measured: not an engine")


def test_unlabelled_images_and_missing_tables_give_reasons(tmp_path):
    run, manifest = a10_run(tmp_path, labelled=False)
    for name in ("06_accuracy.csv", "03_accuracy.csv", "engines.csv"):
        run.table(name).unlink()
    d = decision.table(run.results, manifest).set_index("label")
    assert d.loc["ONNX Runtime CPU INT8", "top1_labels"] == "not measured: the run's images have no labels " \
                                                            "(shipped sample images)"
    assert d.loc["PyTorch eager FP32", "cosine_mean"].startswith("not measured: no accuracy table holds")
    ort = d.loc["ONNX Runtime CPU FP32", "cosine_mean"]
    assert "03_accuracy.csv absent" in ort and "01_export_accuracy.csv absent" in ort
    assert d.loc["TensorRT-RTX FP16", "artifact_bytes"].startswith("not measured: engines.csv has no row")
    assert d.loc["TensorRT-RTX FP16", "build_s"].startswith("not measured: engines.csv has no build")
    with pytest.raises(FileNotFoundError, match="notebook 06"):
        decision.table(tmp_path / "nothing", manifest)


def test_a_cpu_run_has_its_rows_and_says_why_energy_is_empty(tmp_path):
    run, manifest = a10_run(tmp_path)
    cpu = pd.read_csv(run.table("06_benchmark.csv"))
    run.save_table(cpu[cpu.device == "cpu"], "06_benchmark.csv")
    d = decision.table(run.results, manifest)
    assert list(d.label) == ["PyTorch CPU FP32", "ONNX Runtime CPU FP32", "ONNX Runtime CPU INT8"]
    assert d.power_w.str.startswith("not measured: RAPL").all() and d.j_per_image.str.startswith("not measured").all()
    fig = decision_plots.tradeoffs(d, manifest)
    energy_panel = fig.axes[1]
    assert not energy_panel.axison and "no energy measured" in energy_panel.texts[0].get_text()


def test_committed_tables_of_an_earlier_run_still_give_a_table(tmp_path):
    """The published H200 run's tables (written before energy and artifacts were recorded) read without error."""
    src = ROOT / "data" / "results"
    if not (src / "06_benchmark.csv").is_file():
        pytest.skip("no published run in data/results")
    for f in src.glob("*.csv"):
        shutil.copy(f, tmp_path / f.name)
    manifest = json.loads((src / "manifest.json").read_text())
    d = decision.table(tmp_path, manifest)
    bench_t = pd.read_csv(src / "06_benchmark.csv")
    assert len(d) == bench_t.label.nunique()
    for r in d.itertuples():
        assert r.best_throughput_ips == bench_t[bench_t.label == r.label].throughput_ips.max()
        for col in ("power_w", "j_per_image", "artifact_bytes", "build_s", "cosine_mean", "top1_labels"):
            value = getattr(r, col)
            assert decision.number(value) is not None or (isinstance(value, str) and value), (r.label, col)


def test_figure_shows_the_front_energy_and_what_it_leaves_out(tmp_path):
    run, manifest = a10_run(tmp_path)
    d = decision.table(run.results, manifest)
    fig = decision_plots.tradeoffs(d, manifest)
    acc_ax, energy_ax = fig.axes
    fig.canvas.draw()
    # every row has a number; the key under the panels names it with its place on the front
    keys = {str(k): label for k, label in enumerate(d.label, start=1)}
    key_text = "\n".join(t.get_text() for t in fig.texts)
    for k, label in keys.items():
        assert f"{k}  {label} (" in key_text
    placed = [str(k) for k, v in enumerate(d.top1_agreement, start=1) if decision.number(v) is not None]
    assert sorted(t.get_text() for t in acc_ax.texts) == sorted(placed)
    assert "(no accuracy): 7: engines.csv" in key_text  # the INT8 engine is left off the panel, with why
    front = [line for line in acc_ax.get_lines() if line.get_label() == "Pareto front"]
    assert len(front) == 1 and acc_ax.get_xscale() == "log" and acc_ax.get_ylim()[1] > 100
    fx, fy = front[0].get_data()
    best = d[d.pareto == decision.FRONT].iloc[0]
    assert best.best_throughput_ips in fx and 100 * best.top1_agreement in fy  # the staircase passes the front
    # energy panel: GPU rows on log axes, the idle draw in its title, CPU rows left out with their reason
    assert energy_ax.get_yscale() == "log" and "GPU idle 22 W" in energy_ax.get_title()
    assert sorted(t.get_text() for t in energy_ax.texts) == [str(k) for k in range(4, 9)]
    assert "(no energy): 1, 2, 3, nor the CPU idle draw: RAPL: no package counters" in key_text  # said once
    sizes = [c.get_sizes()[0] for c in acc_ax.collections[:-1]]  # the last collection rings the front
    assert max(sizes) > min(sizes) and not any(math.isnan(x) for x in sizes)  # marker area follows J/image
    path = run.save_figure(fig, "06_decision.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_h200_run_puts_the_fp8_row_beside_fp16(tmp_path):
    """H200-shaped: no engine ran (TensorRT-RTX refuses 9.0), torchao's FP8 row timed and checked like FP16."""
    run = Run(tmp_path / "run", "06_benchmark")
    bench_rows, acc_rows = [], []
    for label, prec, ips, noise in (("torch.compile FP16 + CUDA graphs (channels_last)", "fp16", 16161.0, 2e-3),
                                    ("torch.compile FP8 (Linear) + FP16 + CUDA graphs (channels_last)", "fp8",
                                     17500.0, 3e-2)):
        for batch in (1, 256):
            thr = ips if batch == 256 else 1856.0
            bench_rows.append({c: np.nan for c in bench.COLUMNS} | {
                "backend": "torch.compile+cudagraphs", "device": "cuda", "precision": prec, "label": label,
                "batch": batch, "median_ms": 1000 * batch / thr, "p99_ms": 1200 * batch / thr, "throughput_ips": thr,
                "peak_mem_mib": 2100.0, "power_w": 450.0, "energy_j_per_image": 450.0 / thr, "setup_s": 0.3,
                "prime_s": 41.0, "artifact": "weights in memory", "artifact_bytes": 9e6})
            ref, out = _logits_pair(batch, noise, seed=batch)
            acc_rows.append({"label": label, "backend": "torch.compile+cudagraphs", "device": "cuda",
                             "precision": prec, "batch": batch, "reference": bench.Reference.name,
                             **metrics.compare(ref, out)})
    run.save_table(pd.DataFrame(bench_rows, columns=bench.COLUMNS), "06_benchmark.csv")
    run.save_table(pd.DataFrame(acc_rows, columns=bench.ACCURACY_COLUMNS), "06_accuracy.csv")
    d = decision.table(run.results, run.manifest()).set_index("precision")
    fp8 = d.loc["fp8"]
    assert fp8.best_throughput_ips == 17500.0 and fp8.j_per_image == pytest.approx(450 / 17500)
    assert "06_accuracy.csv" in fp8.accuracy_source and decision.number(fp8.top1_agreement) is not None
    assert fp8.build_s == pytest.approx(41.3)
    # faster but less accurate than FP16: a real trade-off, so both are on the front
    assert fp8.top1_agreement < d.loc["fp16", "top1_agreement"]
    assert d.loc["fp16", "pareto"] == fp8.pareto == decision.FRONT
    fig = decision_plots.tradeoffs(d.reset_index()[decision.COLUMNS], run.manifest())
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["1", "2"]


def test_fp8_rows_read_notebook_04s_fp8_file_and_engine_with_the_float_type_it_chose(tmp_path):
    """ONNX Runtime and TensorRT FP8 rows: accuracy and labelled top-1 from notebook 04's FP8 rows (model.fp8.onnx
    with the float type the manifest's `fp8` entry names, not INT8's; engine fp8 in 04_fp8_trt_accuracy.csv)."""
    run, _ = a10_run(tmp_path)
    bench_t = pd.read_csv(run.table("06_benchmark.csv"))
    fp8_rows = bench_t[bench_t.label.isin(["ONNX Runtime CPU INT8", "TensorRT-RTX INT8"])].assign(
        precision="fp8", label=lambda f: f.label.str.replace("INT8", "FP8"))
    run.save_table(pd.concat([bench_t, fp8_rows], ignore_index=True), "06_benchmark.csv")
    ref, out = _logits_pair(256, 2e-2, seed=3)
    trt_fp8 = {"engine": "fp8", "policy": "sensitivity", "method": "entropy", "high_precision": "fp16",
               "file": "model.fp8.onnx", **metrics.compare(ref, out), "top1_fp32": 0.781, "top1_quantized": 0.774}
    run.save_table(pd.DataFrame([trt_fp8]), "04_fp8_trt_accuracy.csv")
    d = decision.table(run.results, run.manifest()).set_index("label")
    ort8 = d.loc["ONNX Runtime CPU FP8"]
    assert (ort8.top1_agreement, ort8.cosine_mean, ort8.top1_labels) == (0.996, 0.99931, 0.779)  # FP16 floats
    assert "04_int8_accuracy.csv" in ort8.accuracy_source
    assert d.loc["ONNX Runtime CPU INT8", "top1_labels"] == 0.776  # INT8 keeps its own choice (FP32 floats)
    trt8 = d.loc["TensorRT-RTX FP8"]
    assert trt8.cosine_mean == pytest.approx(trt_fp8["cosine_mean"]) and trt8.top1_labels == 0.774
    assert "04_fp8_trt_accuracy.csv" in trt8.accuracy_source
    run.set("fp8", {"file": "model.fp8.onnx", "high_precision": "fp32", "passes": True})
    d = decision.table(run.results, run.manifest()).set_index("label")
    assert d.loc["ONNX Runtime CPU FP8", "top1_labels"] == 0.777  # the FP32-float row, as the manifest says


def test_a_new_float_precision_s_cpu_accuracy_is_read_from_the_table_its_row_names(tmp_path, monkeypatch):
    """ONNX Runtime's row of a precision added to the table (its cpu_judge: 03_accuracy.csv) finds its runner there,
    with no list of float precisions in decision.py."""
    bf16 = dataclasses.replace(precisions.get("fp16"), name="bf16", label="BF16", marker="P")
    monkeypatch.setitem(precisions.TABLE, "bf16", bf16)
    run, manifest = a10_run(tmp_path)
    acc = _accuracy_03()
    acc = pd.concat([acc, acc[acc["runner"] == "onnxrt-fp16"].assign(runner="onnxrt-bf16")], ignore_index=True)
    run.save_table(acc, "03_accuracy.csv")
    got = decision.accuracy(decision.Tables(run.results, manifest), "ONNX Runtime CPU BF16", "onnxruntime", "cpu",
                            "bf16")
    want = decision.accuracy(decision.Tables(run.results, manifest), "ONNX Runtime CPU FP16", "onnxruntime", "cpu",
                             "fp16")
    assert got["accuracy_source"].startswith("03_accuracy.csv") and got["cosine_mean"] == want["cosine_mean"]


def test_an_idle_draw_not_measured_for_the_cpu_rows_reason_is_said_once():
    """The CPU rows' energy and the CPU's idle draw both lack RAPL: one line under the figure says both; an idle
    draw missing for a reason of its own keeps a line of its own."""
    from mvlib import decision_plots
    rapl = "RAPL: no package counters under /sys/class/powercap/intel-rapl:*"
    notes = [f"not on the right (no energy): 1, 2, 3: {rapl}"]
    assert decision_plots._with_idle(notes, [("CPU", rapl)]) == [
        f"not on the right (no energy): 1, 2, 3, nor the CPU idle draw: {rapl}"]
    assert decision_plots._with_idle(notes, [("GPU", "NVML: no energy counter")]) == [
        *notes, "GPU idle draw not measured: NVML: no energy counter"]
    _, why = decision_plots._idle({"energy": {"cpu": {"idle_w": f"not measured: {rapl}"}, "cuda": {"idle_w": 71.0}}})
    assert why == [("CPU", rapl)]
