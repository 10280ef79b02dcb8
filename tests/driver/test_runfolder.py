"""The driver writes only into run folders it made: it never moves or removes a folder of the user's."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from driver_fakes import fake_notebooks

from mvlib import io, paths, rundir, study
from mvlib.driver import runfolder
from mvlib.run import Run


def _users_folder(path):
    """A folder holding a file of the user's."""
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work")
    return path


def _study_run(path, manifest=None):
    """A run folder as the driver makes it."""
    runfolder.start_run(path, "cpu", {"profile": "smoke"})
    if manifest is not None:
        io.write_json(path / "manifest.json", manifest)
    return path


def _assert_untouched(folder):
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    assert (folder / "thesis.tex").read_text() == "three years of work"


def test_driver_refuses_a_folder_of_the_users_before_running_anything(tmp_path):
    results = _users_folder(tmp_path / "results")
    proc = subprocess.run([sys.executable, "-m", "mvlib.study", "--profile", "smoke", "--tier", "cpu",
                           "--run-dir", str(results), "--publish", "no"],
                          cwd=paths.ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "did not write" in proc.stderr and "--run-dir" in proc.stderr  # what is wrong, and the fix
    assert "-->" not in proc.stdout  # no notebook started
    _assert_untouched(results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no results.previous either


def test_run_dir_dot_in_a_users_folder_is_refused(tmp_path, monkeypatch, capsys):
    home = _users_folder(tmp_path / "home")
    monkeypatch.chdir(home)
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", ".", "--publish", "no"]) == 2
    assert "did not write" in capsys.readouterr().err
    _assert_untouched(home)


def test_a_previous_the_study_did_not_make_is_never_replaced(tmp_path, monkeypatch, capsys):
    run = _study_run(tmp_path / "run", {"stages": {}, "params": {}})
    previous = _users_folder(tmp_path / "run.previous")
    assert "run.previous" in runfolder.refusal(run)
    got = fake_notebooks(monkeypatch)
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run)]) == study.BAD_INPUT
    assert "run.previous" in capsys.readouterr().err and got == {}
    _assert_untouched(previous)
    assert (run / "manifest.json").is_file()


def test_a_complete_run_replaces_the_last_one_which_is_kept_as_previous(tmp_path):
    run = _study_run(tmp_path / "run", {"stages": {}, "params": {}, "rerun": {}})
    older = _study_run(tmp_path / "run.previous")
    (older / "results" / "old.csv").parent.mkdir()
    (older / "results" / "old.csv").write_text("x")
    staging = _study_run(runfolder.incomplete_of(run))
    assert runfolder.promote(run, staging) == tmp_path / "run.previous"
    assert not staging.exists() and not (tmp_path / "run.previous" / "results" / "old.csv").exists()
    assert (tmp_path / "run.previous" / rundir.MARKER).is_file() and (run / "notebooks").is_dir()


def test_new_and_empty_folders_are_used_and_marked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "new" / "run"):
        assert runfolder.refusal(folder) == ""
        runfolder.start_run(folder, "cpu", {"profile": "smoke"})
        assert rundir.is_study_run(folder) and io.read_json(folder / "manifest.json")["run"]["profile"] == "smoke"


def _suggested(message: str) -> Path | None:
    """The folder a refusal suggests with `pass --run-dir X`, if it names one."""
    found = re.search(r"pass --run-dir (\S+)", message)
    return Path(found.group(1)) if found else None


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_or_a_link_is_refused(tmp_path, kind):
    target = _users_folder(tmp_path / "elsewhere")
    run = tmp_path / "run"
    if kind == "file":
        run.write_text("notes")
    else:
        run.symlink_to(target)
    assert runfolder.refusal(run)
    _assert_untouched(target)


@pytest.mark.parametrize("case", ["inside a file", "inside a study run", "previous of the user's",
                                  "the default is the problem"])
def test_refusals_suggest_a_folder_the_driver_accepts(tmp_path, monkeypatch, case):
    """A fix that works: never a folder inside a file, nor inside the study's own run folder."""
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    default = paths.RUNS / "smoke"
    if case == "inside a file":
        (tmp_path / "notes.txt").write_text("mine")
        run = tmp_path / "notes.txt" / "run"
    elif case == "inside a study run":
        run = _study_run(tmp_path / "runs" / "smoke") / "notebooks"
    elif case == "previous of the user's":
        run = _study_run(tmp_path / "run", {"stages": {}, "params": {}})
        _users_folder(tmp_path / "run.previous")
    else:
        run = default
        _users_folder(default)
    why = runfolder.refusal(run, default)
    assert why, case
    suggested = _suggested(why) or (default if "leave out --run-dir" in why else None)
    assert suggested is not None and suggested != run, why
    assert runfolder.usable(suggested) and runfolder.refusal(suggested, default) == "", why
    assert not any(p.is_file() or rundir.is_study_run(p) for p in suggested.parents), why


def test_a_run_folder_inside_the_committed_results_is_refused(tmp_path):
    for folder in (paths.RESULTS, paths.RESULTS / "new", paths.FIGURES / "x", paths.NOTEBOOKS):
        assert "commits" in runfolder.refusal(folder), folder


def test_how_a_study_run_is_recognised(tmp_path):
    """The marker; or, for runs made before it, a manifest of the study's and nothing but a run's entries."""
    legacy = tmp_path / "legacy"
    (legacy / "results").mkdir(parents=True)
    io.write_json(legacy / "manifest.json", {"stages": {}, "params": {}})
    assert rundir.is_study_run(legacy)
    (legacy / "notes.txt").write_text("mine")
    assert not rundir.is_study_run(legacy)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    io.write_json(foreign / "manifest.json", {"name": "some other tool"})
    assert not rundir.is_study_run(foreign)


def test_a_notebook_run_marks_only_a_folder_it_creates(tmp_path):
    assert rundir.is_study_run(Run(tmp_path / "new", "99_test").dir)
    users = _users_folder(tmp_path / "mine")
    Run(users, "99_test")  # writes its outputs beside the user's file, but does not claim the folder
    assert not (users / rundir.MARKER).exists() and not rundir.is_study_run(users)
    assert "did not write" in runfolder.refusal(users)


# --- the last complete run stays until a newer complete run replaces it -------------------------------------------
def _driver(run, *args):
    """The driver (smoke profile, cpu tier) into `run`; its exit code."""
    return study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run), *args])


def test_failed_bad_and_partial_runs_never_evict_the_last_complete_run(tmp_path, monkeypatch, capsys):
    """A complete run, then a typo, a failing run and `--only 06`: the complete run stays where it was."""
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    run = paths.RUNS / "smoke"
    fake_notebooks(monkeypatch)
    assert study.main(["--profile", "smoke", "--tier", "cpu"]) == study.OK
    complete = io.read_json(run / "manifest.json")
    assert complete["outcome"]["status"] == "complete" and complete["run"]["folder"] == "smoke"

    assert study.main(["--profile", "smoke", "--tier", "cpu", "-p", "img_size", "255"]) == study.BAD_INPUT
    assert io.read_json(run / "manifest.json") == complete and not runfolder.incomplete_of(run).exists()

    fake_notebooks(monkeypatch, fail="04_int8")
    capsys.readouterr()
    assert study.main(["--profile", "smoke", "--tier", "cpu"]) == study.FAILED
    err = capsys.readouterr().err
    assert io.read_json(run / "manifest.json") == complete and f"the last complete run is still {run}" in err
    failed = io.read_json(runfolder.incomplete_of(run) / "manifest.json")
    assert failed["outcome"]["status"] == "failed" and failed["rerun"]["not_compared"] == "this run did not complete"
    assert any("05_silu_plugin" in p for p in failed["outcome"]["problems"])  # not run after the failure
    assert (failed["stages"]["04_int8/cell_3"]["status"], failed["stages"]["04_int8/cell_3"]["reason"]) == \
        ("failed", "ZeroDivisionError: division by zero")

    fake_notebooks(monkeypatch)
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--only", "06"]) == study.OK
    assert io.read_json(run / "manifest.json") == complete  # a partial run has a folder of its own
    assert io.read_json(paths.RUNS / "smoke_06" / "manifest.json")["run"]["notebooks"] == ["06_benchmark.ipynb"]

    assert study.main(["--profile", "smoke", "--tier", "cpu"]) == study.OK  # the next complete run replaces it
    assert io.read_json(runfolder.previous_of(run) / "manifest.json") == complete
    assert not runfolder.incomplete_of(run).exists()
    assert io.read_json(run / "manifest.json")["rerun"]["compared_with"] == str(runfolder.previous_of(run))


def test_a_selection_never_replaces_a_complete_run_of_other_notebooks(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    got = fake_notebooks(monkeypatch)
    assert _driver(run) == study.OK
    complete = io.read_json(run / "manifest.json")
    got.clear()
    assert _driver(run, "--only", "06") == study.BAD_INPUT
    err = capsys.readouterr().err
    assert "holds a complete run of notebooks 01, 02, 03, 04, 05, 06" in err and "--run-dir" in err
    assert got == {} and io.read_json(run / "manifest.json") == complete


def test_a_figure_names_the_run_not_its_incomplete_folder(tmp_path):
    staging = tmp_path / "full.incomplete"
    runfolder.start_run(staging, "cpu", {"folder": "full"})
    assert " run full " in Run(staging, "99_test").footer_text()
