"""A second run of the same command: the artifacts it reused, and whether its tables agree with the first."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from mvlib import io, paths, rerun, study


def _bench(rows):
    """A benchmark table with the columns the comparison reads."""
    return pd.DataFrame(rows, columns=["label", "batch", "throughput_ips", "spread_pct"])


def test_timed_rows_agree_within_the_larger_spread():
    first = _bench([("eager", 1, 100.0, 2.0), ("compile", 32, 1000.0, 1.0), ("gone", 8, 5.0, 1.0)])
    second = _bench([("eager", 1, 103.0, 4.0), ("compile", 32, 900.0, 1.0), ("new", 8, 5.0, 1.0)])
    t = rerun.timed_agreement("06_benchmark.csv", first, second).set_index("row")
    assert list(t.index) == ["eager | 1", "compile | 32"]  # only rows both runs measured
    assert t.loc["eager | 1", "agrees"] and t.loc["eager | 1", "spread_pct"] == 4.0
    assert not t.loc["compile | 32", "agrees"] and t.loc["compile | 32", "diff_pct"] == pytest.approx(-10.0)


def test_kernel_bandwidth_spread_is_its_p10_p90_range():
    cols = ["impl", "dtype", "n", "gbps", "median_us", "p10_us", "p90_us"]
    first = pd.DataFrame([("ours", "float16", 1 << 24, 4000.0, 10.0, 9.9, 10.1)], columns=cols)
    close = pd.DataFrame([("ours", "float16", 1 << 24, 3930.0, 10.0, 9.8, 10.2)], columns=cols)  # 1.75% < 4%
    far = pd.DataFrame([("ours", "float16", 1 << 24, 3800.0, 10.0, 9.8, 10.2)], columns=cols)  # 5% > 4%
    assert rerun.timed_agreement("05_kernel_bandwidth.csv", first, close).agrees.all()
    assert not rerun.timed_agreement("05_kernel_bandwidth.csv", first, far).agrees.any()


def test_untimed_tables_identical_same_verdicts_or_not():
    a = pd.DataFrame({"runner": ["ort", "trt"], "max_abs": [1e-6, 2e-6], "passed": [True, True],
                      "quantize_s": [3.0, 4.0]})
    slower = a.assign(quantize_s=[9.0, 9.0])
    fresh = a.assign(max_abs=[1.5e-6, 2e-6])
    flipped = a.assign(passed=[True, False])
    assert rerun.table_identity("t.csv", a, slower)["status"] == "identical"  # durations are left out
    r = rerun.table_identity("t.csv", a, fresh)
    assert r["status"] == "same verdicts" and r["columns"] == "max_abs" and r["max_rel_diff"] == pytest.approx(0.5)
    assert rerun.table_identity("t.csv", a, flipped)["status"] == "verdicts differ"
    assert rerun.table_identity("t.csv", a, a.iloc[:1])["status"] == "verdicts differ"


def test_cache_use_tells_reused_from_rewritten(tmp_path):
    for name in ("keep.onnx", "change.onnx", "drop.onnx"):
        (tmp_path / name).write_bytes(b"x" * 10)
    before = rerun.snapshot([tmp_path])
    io.write_bytes(tmp_path / "change.onnx", b"y" * 12)  # atomic rewrite: a new file in its place
    (tmp_path / "drop.onnx").unlink()
    (tmp_path / "new.onnx").write_bytes(b"z")
    use = rerun.cache_use(before, rerun.snapshot([tmp_path])).set_index("file")
    status = {os.path.basename(k): v for k, v in use.status.items()}
    assert status == {"keep.onnx": "reused", "change.onnx": "rewritten", "drop.onnx": "removed", "new.onnx": "new"}


def test_runs_of_other_parameters_or_gpus_are_not_compared():
    m = {"run": {"params": {"variant": "mobilevit_s"}}, "gpu": {"gpu": "NVIDIA H200"}}
    assert rerun.comparable(m, m) == ""
    assert "other parameters" in rerun.comparable(m, {**m, "run": {"params": {"variant": "mobilevit_xs"}}})
    assert "NVIDIA A10" in rerun.comparable({**m, "gpu": {"gpu": "NVIDIA A10"}}, m)


def test_another_variant_publishes_into_its_own_folders(tmp_path, monkeypatch):
    assert study.variant_label("full", {"variant": "mobilevit_s"}) == ""
    assert study.variant_label("full", {"variant": "mobilevit_xs"}) == "mobilevit_xs"
    run = tmp_path / "run"
    for sub, name in (("figures", "06_throughput.png"), ("results", "06_benchmark.csv")):
        (run / sub).mkdir(parents=True)
        (run / sub / name).write_text("x")
    io.write_json(run / "manifest.json", {})
    monkeypatch.setattr(paths, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(paths, "RESULTS", tmp_path / "data" / "results")
    study.publish(run, "mobilevit_xs")
    assert (tmp_path / "figures" / "mobilevit_xs" / "06_throughput.png").exists()
    assert sorted(p.name for p in (tmp_path / "data" / "results" / "mobilevit_xs").iterdir()) == [
        "06_benchmark.csv", "manifest.json"]
    assert not (tmp_path / "figures" / "06_throughput.png").exists()


@pytest.mark.slow  # the driver three times, end to end
def test_second_run_of_the_same_command_reuses_and_agrees(tmp_path):
    """The driver twice (notebooks 01 and 02, smoke profile): the first run is kept and compared."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mvlib.study", "--profile", "smoke", "--tier", "cpu", "--only", "01,02",
           "--run-dir", str(run), "--publish", "no"]
    for _ in range(2):
        proc = subprocess.run(cmd, cwd=paths.ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    previous = tmp_path / "run.previous"
    assert (previous / "manifest.json").exists() and "run.previous" in proc.stdout
    info = io.read_json(run / "manifest.json")["rerun"]
    assert info["compared_with"] == str(previous) and info["tables_verdicts_differ"] == []
    tables = pd.read_csv(run / "results" / rerun.TABLES_TABLE)
    assert set(tables.table) == {p.name for p in (previous / "results").glob("0[12]_*.csv")}
    assert "identical" in set(tables.status)  # graph tables are deterministic
    cache = pd.read_csv(run / "results" / rerun.CACHE_TABLE).set_index("file")
    exported = [f for f in cache.index if f.endswith("/model.onnx") and "mobilevit_xxs_random-seed0" in f]
    assert exported and all(cache.status[f] == "reused" for f in exported)
    # a run with other parameters is kept aside but not compared
    proc = subprocess.run(cmd + ["-p", "seed", "1"], cwd=paths.ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = io.read_json(run / "manifest.json")["rerun"]
    assert info["compared_with"] is None and "other parameters" in info["not_compared"]
    assert not (run / "results" / rerun.TIMED_TABLE).exists()
