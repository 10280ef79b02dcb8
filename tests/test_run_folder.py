"""The driver writes only into run folders it made: it never moves or removes a folder of the user's."""
import subprocess
import sys

import pytest

from mvlib import io, paths, study
from mvlib import run as run_mod
from mvlib.run import Run


def _users_folder(path):
    """A folder holding a file of the user's."""
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work")
    return path


def _study_run(path, manifest=None):
    """A run folder as the driver makes it."""
    study.start_run(path, "cpu", {"profile": "smoke"})
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


def test_a_previous_the_study_did_not_make_is_never_replaced(tmp_path):
    run = _study_run(tmp_path / "run", {"stages": {}, "params": {}})
    previous = _users_folder(tmp_path / "run.previous")
    assert "run.previous" in study.refusal(run)
    with pytest.raises(study.Refused):
        study.keep_previous(run)
    _assert_untouched(previous)
    assert (run / "manifest.json").is_file()


def test_an_earlier_study_run_is_kept_aside_replacing_an_older_one(tmp_path):
    run = _study_run(tmp_path / "run", {"stages": {}, "params": {}, "rerun": {}})
    older = _study_run(tmp_path / "run.previous")
    (older / "results" / "old.csv").parent.mkdir()
    (older / "results" / "old.csv").write_text("x")
    assert study.keep_previous(run) == tmp_path / "run.previous"
    assert not run.exists() and not (tmp_path / "run.previous" / "results" / "old.csv").exists()
    assert (tmp_path / "run.previous" / run_mod.MARKER).is_file()


def test_new_and_empty_folders_are_used_and_marked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "new" / "run"):
        assert study.refusal(folder) == "" and study.keep_previous(folder) is None
        study.start_run(folder, "cpu", {"profile": "smoke"})
        assert run_mod.is_study_run(folder) and io.read_json(folder / "manifest.json")["run"]["profile"] == "smoke"


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_or_a_link_is_refused(tmp_path, kind):
    target = _users_folder(tmp_path / "elsewhere")
    run = tmp_path / "run"
    if kind == "file":
        run.write_text("notes")
    else:
        run.symlink_to(target)
    assert study.refusal(run)
    with pytest.raises(study.Refused):
        study.keep_previous(run)
    _assert_untouched(target)


def test_how_a_study_run_is_recognised(tmp_path):
    """The marker; or, for runs made before it, a manifest of the study's and nothing but a run's entries."""
    legacy = tmp_path / "legacy"
    (legacy / "results").mkdir(parents=True)
    io.write_json(legacy / "manifest.json", {"stages": {}, "params": {}})
    assert run_mod.is_study_run(legacy)
    (legacy / "notes.txt").write_text("mine")
    assert not run_mod.is_study_run(legacy)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    io.write_json(foreign / "manifest.json", {"name": "some other tool"})
    assert not run_mod.is_study_run(foreign)


def test_a_notebook_run_marks_only_a_folder_it_creates(tmp_path):
    assert run_mod.is_study_run(Run(tmp_path / "new", "99_test").dir)
    users = _users_folder(tmp_path / "mine")
    Run(users, "99_test")  # writes its outputs beside the user's file, but does not claim the folder
    assert not (users / run_mod.MARKER).exists() and not run_mod.is_study_run(users)
    assert "did not write" in study.refusal(users)


def test_an_unfinished_earlier_run_is_not_compared(tmp_path):
    run = _study_run(tmp_path / "run", {"stages": {}, "params": {}, "run": {"params": {"a": 1}}})
    previous = study.keep_previous(run)
    study.start_run(run, "cpu", {"params": {"a": 1}})
    info = study.record_rerun(run, {"run": {"params": {"a": 1}}}, previous, {})
    assert info["compared_with"] is None and "finish" in info["not_compared"]
