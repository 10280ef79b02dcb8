"""A second run of the same command: the artifacts it reused, and whether its tables agree with the first."""
import os
import subprocess
import sys

import pandas as pd
import pytest
from driver_fakes import fake_notebooks

from mvlib import io, paths, rerun, study
from mvlib.driver import publish, runfolder


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


def test_tables_derived_from_timed_ones_are_not_compared_their_sources_are(tmp_path):
    """06_decision.csv and 06_anchor.csv move with the timings (throughput, energy, the front): the comparison
    leaves them out, while an untimed table beside them is compared."""
    first, second = tmp_path / "a", tmp_path / "b"
    for run, ips, front in ((first, 12885.0, "on the front"), (second, 12410.0, "dominated by TensorRT FP16")):
        (run / "results").mkdir(parents=True)
        pd.DataFrame([{"label": "torch.compile FP16", "best_throughput_ips": ips, "pareto": front}]).to_csv(
            run / "results" / "06_decision.csv", index=False)
        pd.DataFrame([{"label": "eager", "throughput_ips": ips / 3}]).to_csv(run / "results" / "06_anchor.csv",
                                                                          index=False)
        pd.DataFrame([{"op": "Conv", "count": 32}]).to_csv(run / "results" / "02_graph_ops.csv", index=False)
    timed, tables = rerun.compare_runs(first, second)
    assert {"06_decision.csv", "06_anchor.csv"} <= rerun.DERIVED
    assert list(tables.table) == ["02_graph_ops.csv"] and (tables.status == "identical").all() and timed.empty


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


def test_cache_use_never_calls_a_file_reused_that_the_run_may_not_have_used(tmp_path):
    """Left alone is "unchanged"; written again with the same bytes is told apart from changed bytes (which is
    what rebuilds whatever is keyed on the file)."""
    for name in ("keep.onnx", "same.onnx", "change.onnx", "drop.onnx"):
        (tmp_path / name).write_bytes(b"x" * 10)
    before = rerun.snapshot([tmp_path])
    os.utime(tmp_path / "same.onnx", ns=(1, 1))
    io.write_bytes(tmp_path / "change.onnx", b"y" * 10)  # atomic rewrite: a new file in its place, same size
    (tmp_path / "drop.onnx").unlink()
    (tmp_path / "new.onnx").write_bytes(b"z")
    use = rerun.cache_use(before, rerun.snapshot([tmp_path])).set_index("file")
    status = {os.path.basename(k): v for k, v in use.status.items()}
    assert status == {"keep.onnx": "unchanged", "same.onnx": "same bytes", "change.onnx": "changed",
                      "drop.onnx": "removed", "new.onnx": "new"}
    line = rerun.artifacts_line(rerun.summary(rerun.cache_use(before, rerun.snapshot([tmp_path]))))
    assert "reused" not in line and "1 unchanged (left as they were)" in line and "1 changed (rebuilt)" in line


def test_runs_of_other_notebooks_parameters_or_gpus_are_not_compared():
    m = {"run": {"params": {"variant": "mobilevit_s"}, "notebooks": ["01_export.ipynb", "02_graph.ipynb"]},
         "gpu": {"gpu": "NVIDIA H200"}}
    assert rerun.comparable(m, m) == ""
    why = rerun.comparable(m, {**m, "run": {**m["run"], "params": {"variant": "mobilevit_xs"}}})
    assert "other parameters: variant mobilevit_s -> mobilevit_xs" in why
    assert "NVIDIA A10" in rerun.comparable({**m, "gpu": {"gpu": "NVIDIA A10"}}, m)
    why = rerun.comparable(m, {**m, "run": {**m["run"], "notebooks": ["06_benchmark.ipynb"]}})
    assert why == "the earlier run ran notebooks 01, 02, this one 06"


def test_the_console_says_not_compared_and_why_never_0_of_0():
    assert rerun.comparison_line({"compared_with": None, "not_compared": "the earlier run ran notebooks 01, 02, "
                                  "this one 06"}) == "not compared: the earlier run ran notebooks 01, 02, this one 06"
    empty = {"compared_with": "x", "timed_rows": 0, "timed_rows_agree": 0, "max_abs_diff_pct": 0.0, "tables": 2,
             "tables_identical": 2, "tables_verdicts_differ": []}
    line = rerun.comparison_line(empty)
    assert "0 of 0" not in line and "no timed rows in common" in line and "2 of 2 untimed tables identical" in line


def _published_copy(run, manifest_update=None):
    """A complete run folder whose tables are the committed ones (data/results), the way a rerun would write them."""
    runfolder.start_run(run, "gpu", {})
    (run / "results").mkdir()
    for f in paths.RESULTS.glob("*.csv"):
        (run / "results" / f.name).write_bytes(f.read_bytes())
    manifest = io.read_json(paths.RESULTS / "manifest.json") | (manifest_update or {})
    io.write_json(run / "manifest.json", manifest)
    return run


def test_a_run_compares_with_the_committed_results_folder(tmp_path):
    """data/results holds tables beside its manifest (no results/, no notebooks): the comparison reads it."""
    run = _published_copy(tmp_path / "run")
    timed, tables = rerun.compare_runs(paths.RESULTS, run)
    expected = {f.name for f in paths.RESULTS.glob("*.csv")} - rerun.OWN_TABLES - rerun.DERIVED - set(rerun.TIMED)
    assert set(tables.table) == expected and (tables.status == "identical").all()
    assert len(timed) > 50 and timed.agrees.all()


def test_compare_with_runs_against_a_named_folder_and_says_how_the_runs_differ(tmp_path, monkeypatch, capsys):
    tables = {"06_benchmark": [paths.RESULTS / "06_benchmark.csv"],
              "01_export": [paths.RESULTS / "01_export_model.csv"]}
    fake_notebooks(monkeypatch, tables=tables)
    run = tmp_path / "run"
    rc = study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run), "--compare-with",
                     str(paths.RESULTS)])
    assert rc == study.OK
    info = io.read_json(run / "manifest.json")["rerun"]
    assert info["compared_with"] == str(paths.RESULTS) and info["tables_identical"] == info["tables"] == 1
    assert info["timed_rows"] > 0 and info["timed_rows_agree"] == info["timed_rows"]
    assert any("other parameters" in c for c in info["caveats"])  # compared as asked, unlike runs said so
    out = capsys.readouterr().out
    assert f"compared with {paths.RESULTS} (unlike runs:" in out


def test_compare_with_a_folder_without_a_manifest_is_bad_input(tmp_path, monkeypatch, capsys):
    got = fake_notebooks(monkeypatch)
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(tmp_path / "r"), "--compare-with",
                       str(tmp_path)]) == study.BAD_INPUT
    assert "no manifest.json" in capsys.readouterr().err and got == {}


def test_another_variant_publishes_into_its_own_folders(tmp_path, monkeypatch):
    assert publish.variant_label("full", {"variant": "mobilevit_s"}) == ""
    assert publish.variant_label("full", {"variant": "mobilevit_xs"}) == "mobilevit_xs"
    run = tmp_path / "run"
    for sub, name in (("figures", "06_throughput.png"), ("results", "06_benchmark.csv")):
        (run / sub).mkdir(parents=True)
        (run / sub / name).write_text("x")
    io.write_json(run / "manifest.json", {})
    monkeypatch.setattr(paths, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(paths, "RESULTS", tmp_path / "data" / "results")
    publish.publish(run, "mobilevit_xs")
    assert (tmp_path / "figures" / "mobilevit_xs" / "06_throughput.png").exists()
    assert sorted(p.name for p in (tmp_path / "data" / "results" / "mobilevit_xs").iterdir()) == [
        "06_benchmark.csv", "manifest.json"]
    assert not (tmp_path / "figures" / "06_throughput.png").exists()


@pytest.mark.slow  # the driver twice, notebooks 01 and 02
def test_second_run_of_the_same_command_reuses_agrees_and_keeps_the_console_quiet(tmp_path):
    """The driver twice (notebooks 01 and 02, smoke profile): the first run is kept and compared; nothing but the
    driver's own lines reaches the console (no kernel warnings, no colour codes)."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mvlib.study", "--profile", "smoke", "--tier", "cpu", "--only", "01,02",
           "--run-dir", str(run)]
    for _ in range(2):
        proc = subprocess.run(cmd, cwd=paths.ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        console = proc.stdout + proc.stderr
        for noise in ("without encryption", "KeyboardInterrupt", "\x1b[", "Traceback"):
            assert noise not in console, f"{noise!r} on the console:\n{console[-3000:]}"
    previous = runfolder.previous_of(run)
    assert (previous / "manifest.json").exists() and f"compared with {previous}" in proc.stdout
    assert "without encryption" in (run / "logs" / "01_export.log").read_text()  # kept, in the run's log
    info = io.read_json(run / "manifest.json")["rerun"]
    assert info["compared_with"] == str(previous) and info["tables_verdicts_differ"] == []
    tables = pd.read_csv(run / "results" / rerun.TABLES_TABLE)
    assert set(tables.table) == {p.name for p in (previous / "results").glob("0[12]_*.csv")}
    assert "identical" in set(tables.status)  # graph tables are deterministic
    cache = pd.read_csv(run / "results" / rerun.CACHE_TABLE).set_index("file")
    exported = [f for f in cache.index if f.endswith("/model.onnx") and "mobilevit_xxs_random-seed0" in f]
    assert exported and all(cache.status[f] == "unchanged" for f in exported)
    assert not any(cache.status[f] == "changed" for f in cache.index if f.endswith(".silu.onnx")), cache
