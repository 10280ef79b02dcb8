"""Publishing is deliberate and whole: only a complete run, as a unit, never over another machine's by accident."""
import shutil

import pytest
from driver_fakes import fake_notebooks

from mvlib import io, paths, stages, study
from mvlib.driver import params, publish, runfolder

H200 = {"gpu": "NVIDIA H200", "capability": "9.0"}
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0"}


def _state(*folders):
    """Every file under `folders` with its bytes and modification time."""
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for d in folders for f in sorted(d.rglob("*"))
            if f.is_file()}


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A copy of the committed figures/ and data/results/ (a GPU run, tier gpu, and the mobilevit_xxs variant)
    standing in for the real ones."""
    figures, results = tmp_path / "figures", tmp_path / "data" / "results"
    shutil.copytree(paths.FIGURES, figures)
    shutil.copytree(paths.RESULTS, results)
    monkeypatch.setattr(paths, "FIGURES", figures)
    monkeypatch.setattr(paths, "RESULTS", results)
    return figures, results


def _complete_run(run, gpu=None, tier="cpu", profile="full", notebooks=None, status="complete", variant=None):
    """A run folder as the driver leaves a finished run: two tables, one figure, its manifest."""
    runfolder.start_run(run, tier, {})
    for sub, name in (("results", "06_benchmark.csv"), ("results", "01_export_model.csv"),
                      ("figures", "06_throughput.png")):
        (run / sub).mkdir(exist_ok=True)
        (run / sub / name).write_text(f"new {name}")
    values = params.load_profile("full") | ({"variant": variant} if variant else {})
    manifest = io.read_json(run / "manifest.json") | {
        "gpu": gpu or {}, "tier": tier, "outcome": {"status": status}, "rerun": {},
        "run": {"profile": profile, "params": values, "expected_tier": tier,
                "notebooks": notebooks or [nb.name for nb in stages.all_notebooks()]}}
    io.write_json(run / "manifest.json", manifest)
    return run


def test_the_readmes_first_command_changes_no_committed_file(tmp_path, monkeypatch, capsys):
    """`make study` on a laptop (full profile, no GPU): nothing under figures/ or data/results/ changes, and the
    driver says how publishing would go."""
    before = _state(paths.FIGURES, paths.RESULTS)
    fake_notebooks(monkeypatch)
    assert study.main(["--profile", "full", "--tier", "auto", "--run-dir", str(tmp_path / "run")]) == study.OK
    assert _state(paths.FIGURES, paths.RESULTS) == before
    out = capsys.readouterr().out
    assert "not published" in out and f"--publish-from {tmp_path / 'run'}" in out
    committed_gpu = io.read_json(paths.RESULTS / "manifest.json")["gpu"]["gpu"]  # the committed run is on a GPU
    assert committed_gpu.startswith("NVIDIA") and committed_gpu in out and "--publish-over" in out


def test_a_partial_run_is_never_published(tmp_path, monkeypatch, published, capsys):
    before = _state(*published)
    got = fake_notebooks(monkeypatch)
    rc = study.main(["--profile", "full", "--tier", "cpu", "--only", "01,02", "--publish-over",
                     "--run-dir", str(tmp_path / "run")])
    assert rc == study.BAD_INPUT and got == {} and "every notebook" in capsys.readouterr().err
    assert _state(*published) == before
    partial = _complete_run(tmp_path / "partial", notebooks=["01_export.ipynb"])
    assert publish.publish_from(str(partial), over=True) == study.BAD_INPUT
    failed = _complete_run(tmp_path / "failed", status="failed")
    assert publish.publish_from(str(failed), over=True) == study.BAD_INPUT
    smoke = _complete_run(tmp_path / "smoke", profile="smoke")
    assert publish.publish_from(str(smoke), over=True) == study.BAD_INPUT
    assert _state(*published) == before


def test_publish_never_replaces_another_gpus_run_or_a_higher_tier_unless_asked_by_name(tmp_path, published,
                                                                                       capsys):
    before = _state(*published)
    gpu = io.read_json(published[1] / "manifest.json")["gpu"]  # the committed run's GPU
    laptop = _complete_run(tmp_path / "laptop")
    assert publish.publish_from(str(laptop), over=False) == study.BAD_INPUT
    err = capsys.readouterr().err
    assert gpu["gpu"] in err and "no GPU" in err and "--publish-over" in err
    other = _complete_run(tmp_path / "other", gpu=H200 if gpu["gpu"] != H200["gpu"] else H100, tier="gpu")
    assert publish.publish_from(str(other), over=False) == study.BAD_INPUT
    assert "--publish-over" in capsys.readouterr().err
    lower = _complete_run(tmp_path / "lower", gpu=gpu, tier="cpu")
    assert publish.publish_from(str(lower), over=False) == study.BAD_INPUT
    assert "tier gpu" in capsys.readouterr().err
    assert _state(*published) == before
    same = _complete_run(tmp_path / "same", gpu=gpu, tier="gpu")
    assert publish.publish_from(str(same), over=False) == study.OK


def test_publish_replaces_the_folder_as_a_whole(tmp_path, published):
    """No file of the earlier publish survives beside the new manifest; other variants and foreign files stay."""
    figures, results = published
    (results / "notes.txt").write_text("a file the study never wrote")
    variant_before = _state(figures / "mobilevit_xxs", results / "mobilevit_xxs")
    run = _complete_run(tmp_path / "run")
    assert publish.publish_from(str(run), over=True) == study.OK
    assert sorted(p.name for p in figures.iterdir() if p.is_file()) == ["06_throughput.png"]
    assert sorted(p.name for p in results.iterdir() if p.is_file()) == ["01_export_model.csv", "06_benchmark.csv",
                                                                        "manifest.json", "notes.txt"]
    assert io.read_json(results / "manifest.json") == io.read_json(run / "manifest.json")
    assert (results / "06_benchmark.csv").read_text() == "new 06_benchmark.csv"
    assert _state(figures / "mobilevit_xxs", results / "mobilevit_xxs") == variant_before
    assert not list(tmp_path.rglob("*.publishing"))


def test_another_variant_replaces_only_its_own_folders(tmp_path, published):
    figures, results = published
    main_before = {k: v for k, v in _state(*published).items() if "mobilevit_xxs" not in k}
    run = _complete_run(tmp_path / "run", variant="mobilevit_xxs")
    assert publish.publish_from(str(run), over=True) == study.OK
    assert sorted(p.name for p in (results / "mobilevit_xxs").iterdir()) == [
        "01_export_model.csv", "06_benchmark.csv", "manifest.json"]
    assert {k: v for k, v in _state(*published).items() if "mobilevit_xxs" not in k} == main_before


def test_a_complete_run_publishes_with_publish(tmp_path, monkeypatch, published):
    figures, results = published
    io.write_json(results / "manifest.json", io.read_json(results / "manifest.json") | {"gpu": {}, "tier": "cpu"})
    tables = {"06_benchmark": [paths.ROOT / "data" / "results" / "06_benchmark.csv"]}
    fake_notebooks(monkeypatch, tables=tables)
    run = tmp_path / "run"
    assert study.main(["--profile", "full", "--tier", "cpu", "--run-dir", str(run), "--publish"]) == study.OK
    assert io.read_json(results / "manifest.json") == io.read_json(run / "manifest.json")
    assert sorted(p.name for p in results.iterdir() if p.is_file()) == ["06_benchmark.csv", "manifest.json",
                                                                        "rerun_cache.csv"]


def test_publish_with_no_full_run_says_to_run_the_study_first(tmp_path, capsys):
    """`make publish` before any full run: run `make study` first, not 'not a run folder'."""
    assert study.main(["--publish-from", str(tmp_path / "runs" / "full")]) == study.BAD_INPUT
    err = capsys.readouterr().err
    assert f"no run at {tmp_path / 'runs' / 'full'}" in err and "run `make study` (the full profile) first" in err
