"""The evidence tools in tools/: the stage table of two runs, the window agreement table (on the CPU row), the
histogram speed table."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mvlib import paths


def _tool(name: str):
    """Import tools/<name>.py (tools/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", paths.ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest(total: float, books: dict, stages: dict) -> dict:
    """A hand-written manifest: the driver's timing and the stages' records."""
    return {"timing": {"total_s": total, "notebooks_s": books},
            "stages": {name: ({"status": "ok", "seconds": s} if s is not None else
                              {"status": "skipped", "reason": "no GPU"}) for name, s in stages.items()}}


BEFORE = _manifest(100.0, {"01_export": 20.0, "04_int8": 70.0},
                   {"01_export/export": 5.0, "01_export/verify_onnxrt": 10.0, "04_int8/calibrations": 50.0,
                    "04_int8/images": 8.0, "04_int8/gone": 2.0})
AFTER = _manifest(60.0, {"01_export": 18.0, "04_int8": 35.0, "06_benchmark": 4.0},
                  {"01_export/export": 5.0, "01_export/verify_onnxrt": 9.0, "04_int8/calibrations": 20.0,
                   "04_int8/images": 8.5, "06_benchmark/cpu": None})


def test_stage_table_sorts_by_the_before_seconds_and_totals(tmp_path):
    st = _tool("stage_table")
    (tmp_path / "before").mkdir()
    (tmp_path / "before" / "manifest.json").write_text(json.dumps(BEFORE))
    (tmp_path / "after.json").write_text(json.dumps(AFTER))
    table = st.rows(st.load(tmp_path / "before"), st.load(tmp_path / "after.json"))
    assert [r["name"] for r in table] == [
        "04_int8", "04_int8/calibrations", "04_int8/images", "04_int8/gone",
        "01_export", "01_export/verify_onnxrt", "01_export/export",
        "06_benchmark", "06_benchmark/cpu", "all stages", "run (timing.total_s)"]
    by = {r["name"]: r for r in table}
    assert (by["04_int8/gone"]["after_s"], by["06_benchmark/cpu"]["after_s"]) == (None, None)
    assert (by["all stages"]["before_s"], by["all stages"]["after_s"]) == (75.0, 42.5)
    assert (by["run (timing.total_s)"]["before_s"], by["run (timing.total_s)"]["after_s"]) == (100.0, 60.0)
    md = st.markdown(table).splitlines()
    assert md[0].startswith("| notebook / stage | before s | after s |") and len(md) == 2 + len(table)
    assert "| **04_int8** | 70.0 | 35.0 | -35.0 | -50 % |" in md
    assert "| &nbsp;&nbsp;calibrations | 50.0 | 20.0 | -30.0 | -60 % |" in md
    assert "| &nbsp;&nbsp;gone | 2.0 | - | - | - |" in md
    assert md[-1] == "| **run (timing.total_s)** | 100.0 | 60.0 | -40.0 | -40 % |"


def test_stage_table_command_prints_the_table_or_one_line_why_not(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(BEFORE))
    (tmp_path / "b.json").write_text(json.dumps(AFTER))
    tool = str(paths.ROOT / "tools" / "stage_table.py")
    ok = subprocess.run([sys.executable, tool, str(tmp_path / "a.json"), str(tmp_path / "b.json")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "| **01_export** | 20.0 | 18.0 | -2.0 | -10 % |" in ok.stdout
    bad = subprocess.run([sys.executable, tool, str(tmp_path / "a.json"), str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "cannot read a manifest" in bad.stderr


def test_stage_table_sorts_untimed_notebooks_by_their_stages():
    st = _tool("stage_table")
    published = {"stages": {"01_export/export": {"seconds": 1.0}, "02_graph/a": {"seconds": 3.0},
                            "02_graph/b": {"seconds": 2.0}, "03_fp16/a": {"seconds": 4.0}}}  # no timing
    names = [r["name"] for r in st.rows(published, published) if r["kind"] == "notebook"]
    assert names == ["02_graph", "03_fp16", "01_export"]


@pytest.mark.parametrize("value", [True, "3", None])
def test_stage_table_reads_only_numbers_as_seconds(value):
    st = _tool("stage_table")
    assert st.stage_seconds({"stages": {"01_export/x": {"seconds": value}}}) == {"01_export/x": None}


def test_window_agreement_times_a_cpu_row_both_ways_and_writes_its_tables(tmp_path):
    """The tool's own functions on the pytorch_cpu row (the GPU rows go through the same ones on the GPU)."""
    import torch

    from mvlib import bench, bench_windows
    from mvlib.skips import StageSkipped
    wa = _tool("window_agreement")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.SiLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 10))

    def missing(settings):
        raise StageSkipped("model.fp8.onnx not found\n(second line)")

    quick = bench_windows.StopRule(max_noise_pct=1e6, max_drift_pct=1e6, min_s=0.02)  # settles at its first check
    s = bench.Settings(img_size=32, seconds=0.3, repeats=2, warmup_s=0.0, rule=quick)
    specs = [("pytorch_cpu", bench.pytorch_cpu, (net,), {}), ("onnxruntime_cuda_fp8", missing, (), {})]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine two threads wait on each other: 0.06 ms launches took 30
    try:
        table = wa.agreement_table(specs, [1, 2], s)
    finally:
        torch.set_num_threads(threads)
    assert list(table.columns) == wa.COLUMNS and list(table.row) == ["pytorch_cpu"] * 2 + ["onnxruntime_cuda_fp8"]
    timed, skipped = table.iloc[:2], table.iloc[2]
    assert list(timed.batch) == [1, 2] and (timed.not_timed == "").all()
    assert skipped.not_timed == "StageSkipped: model.fp8.onnx not found"
    assert (timed.fixed_wall_s >= 2 * 0.3).all() and (timed.rule_wall_s < timed.fixed_wall_s / 3).all()
    assert (timed.fixed_samples > timed.rule_samples).all() and (timed.rule_samples >= 2 * s.min_iters).all()
    assert timed.median_diff_pct.tolist() == pytest.approx(
        (100 * (timed.rule_median_ms / timed.fixed_median_ms - 1)).tolist())
    worst = timed[["median_diff_pct", "throughput_diff_pct"]].abs().max(axis=1)
    assert (timed.within_2pct == (worst <= 2.0)).all()

    csv, md = wa.write(table, s, tmp_path / "out")
    back = __import__("pandas").read_csv(csv, keep_default_na=False)
    assert list(back.columns) == wa.COLUMNS and len(back) == 3
    text = md.read_text().splitlines()
    assert "stops when the median's 95% CI is within" in text[0] and "every window runs 0.3 s" in text[0]
    assert text[2].startswith("| row | batch | fixed median ms | stop-rule median ms | difference % |")
    first = [c.strip() for c in text[4].split("|")[1:-1]]
    assert first[:2] == ["pytorch_cpu", "1"] and first[-2] == ("yes" if timed.within_2pct.iloc[0] else "no")
    assert float(first[2]) == pytest.approx(timed.fixed_median_ms.iloc[0], rel=1e-3)
    assert first[4] == f"{timed.median_diff_pct.iloc[0]:+.2f}" and int(first[5]) == timed.fixed_samples.iloc[0]
    assert first[-1] == "" and "| within 2 % (median and throughput) | not timed |" in text[2]
    assert text[6].startswith("| onnxruntime_cuda_fp8 |") and text[6].endswith("| StageSkipped: model.fp8.onnx "
                                                                                "not found |")
    code, line = wa.verdict(table)
    assert code == (0 if timed.within_2pct.all() else 1)
    assert line.startswith(f"2 row-batches timed both ways, {int(timed.within_2pct.sum())} agree")
    assert line.endswith("; 1 rows not timed")


def _one_thread(fn, *args):
    """fn(*args) with torch on one thread: on a shared 2-core machine two threads wait on each other."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def test_window_agreement_main_times_the_profiles_rows_into_its_folder(tmp_path, monkeypatch):
    """main past its CUDA check (faked), on a CPU row in place of the GPU rows: the profile's settings are made as
    the notebooks make them, and the tables are written."""
    import torch

    from mvlib import bench, env
    wa = _tool("window_agreement")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    monkeypatch.setattr(env, "cuda_status", lambda: (True, ""))
    monkeypatch.setattr(wa, "gpu_rows", lambda p: [("pytorch_cpu", bench.pytorch_cpu, (net,), {})])
    code = _one_thread(wa.main, ["--profile", "smoke", "--batches", "1", "--seconds", "0.05", "--out",
                                  str(tmp_path / "o")])
    assert code in (0, 1) and (tmp_path / "o" / "agreement.csv").is_file()
    assert "halves agree within 0.5%" in (tmp_path / "o" / "agreement.md").read_text()  # the study's own rule
    _one_thread(wa.main, ["--profile", "smoke", "--batches", "1", "--seconds", "0.05", "--max-drift", "1.5",
                          "--out", str(tmp_path / "c")])
    head = (tmp_path / "c" / "agreement.md").read_text().splitlines()[0]
    assert "within +-0.5% and its halves agree within 1.5%" in head  # a candidate rule, the rest the study's
    s0 = bench.Settings()
    assert wa.with_rule(s0, None, None) is s0
    r = wa.with_rule(s0, 1.0, None).rule
    assert (r.max_noise_pct, r.max_drift_pct, r.min_samples, r.min_s) == (1.0, s0.rule.max_drift_pct,
                                                                         s0.rule.min_samples, s0.rule.min_s)
    s = bench.profile_settings({"img_size": 64, "bench_seconds": 2.0, "bench_repeats": 3, "seed": 5, "variant": "v"})
    assert (s.img_size, s.seconds, s.repeats, s.seed, s.variant, s.warmup_s) == (64, 2.0, 3, 5, "v", bench.WARMUP_S)


def test_window_agreement_without_cuda_says_so_in_one_line(tmp_path):
    """This machine has no GPU: the tool says why in one line and exits 2, before it exports or times anything."""
    tool = str(paths.ROOT / "tools" / "window_agreement.py")
    got = subprocess.run([sys.executable, tool, "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert got.returncode == 2, got.stderr
    assert got.stdout.count("\n") == 1 and got.stdout.startswith("window_agreement: needs a CUDA GPU: ")
    assert not (tmp_path / "out").exists()


def test_window_agreement_cpu_times_the_cpu_rows_without_a_gpu(tmp_path, monkeypatch):
    """--cpu: no GPU needed, the CPU rows at the profile's cpu_batches, a candidate rule in the table's words."""
    import pandas as pd
    import torch

    from mvlib import bench, env
    from mvlib.driver import params
    wa = _tool("window_agreement")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    monkeypatch.setattr(env, "cuda_status", lambda: (False, "no GPU here"))
    monkeypatch.setattr(wa, "cpu_rows", lambda p: [("pytorch_cpu", bench.pytorch_cpu, (net,), {})])
    code = _one_thread(wa.main, ["--cpu", "--profile", "smoke", "--seconds", "0.05", "--max-noise", "3",
                                  "--out", str(tmp_path / "o")])
    table = pd.read_csv(tmp_path / "o" / "agreement.csv")
    assert code in (0, 1) and list(table.batch) == params.load_profile("smoke")["cpu_batches"]
    head = (tmp_path / "o" / "agreement.md").read_text().splitlines()[0]
    assert "within +-3% and its halves agree within 0.5%" in head  # the candidate, the rest the study's rule


@pytest.mark.parametrize("same", [True, False])
def test_histogram_speed_times_both_ways_and_compares_the_files(xxs, tmp_path, monkeypatch, capsys, same):
    """tools/histogram_speed.py makes the model once with each way forced (threads, then processes), a row each,
    and exits 0 only when the two files are the same bytes; the CSV lies in its folder. (quantize is a stand-in
    here: that both ways make the same bytes is test_calib_speed's proof, on real calibrations.)"""
    from mvlib import calib_speed, quant
    tool = _tool("histogram_speed")
    ways = []

    def fake_quantize(src, out, calib, method, precision, histogram_threads):
        ways.append((calib_speed.use_processes(histogram_threads), method, precision, histogram_threads, len(calib)))
        Path(out).write_bytes(b"model" if same else str(len(ways)).encode())
    monkeypatch.setattr(quant, "quantize", fake_quantize)
    out = tmp_path / "hs"
    code = tool.main(["--variant", "mobilevit_xxs", "--weights", "random", "--images", "3", "--workers", "6",
                      "--out", str(out)])
    assert code == (0 if same else 1)
    assert ways == [(False, "entropy", "int8", 6, 3), (True, "entropy", "int8", 6, 3)]
    assert calib_speed.use_processes(6)  # the forced way is undone after
    table = pd.read_csv(out / "histogram_speed.csv")
    assert list(table.way) == ["threads", "processes"] and list(table.same_file) == [same, same]
    assert "processes:" in capsys.readouterr().out
