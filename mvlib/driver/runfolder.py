"""Run folders: where a run is written (`<run>.incomplete`), kept (`<run>.previous`) and which folders the driver
refuses (anything the study did not make, committed results, a run inside a run).

Serves: the driver (every run folder).
"""
import shutil
from pathlib import Path

from mvlib import paths, rundir, stages, tiers
from mvlib.driver.verdicts import outcome


class Refused(Exception):
    """A run folder the driver will not use: replacing or moving it would touch what the study did not write."""


def previous_of(run: Path) -> Path:
    """Where the complete run that a newer complete run replaced is kept: `<run>.previous`."""
    return run.with_name(run.name + ".previous")


def incomplete_of(run: Path) -> Path:
    """Where a run is written until it is complete, and stays when it is not: `<run>.incomplete`."""
    return run.with_name(run.name + ".incomplete")


def lock_of(run: Path) -> Path:
    """The lock file a driver holds while it writes `run` (its `.incomplete`, `.previous`): `.<run>.lock` beside it."""
    return run.with_name(f".{run.name}.lock")


def _empty(folder: Path) -> bool:
    """Whether `folder` is absent or an empty folder."""
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def default_run_dir(profile: str, label: str, selected: list[Path]) -> Path:
    """build/runs/<profile>[_<variant>][_<notebooks>]: a selection of notebooks has a folder of its own."""
    name = profile + (f"_{label}" if label else "")
    if len(selected) != len(stages.all_notebooks()):
        name += "_" + "-".join(stages.short(nb.stem) for nb in selected)
    return paths.RUNS / name


def _enclosing_problem(run: Path) -> str:
    """Why no run folder can be made at `run` whatever it holds: inside a file, a study run or committed results."""
    for parent in run.parents:
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, so {run} cannot be a folder"
        if rundir.is_study_run(parent):
            return f"{run} is inside the study run {parent}, which the study replaces as a whole"
    for committed in (paths.RESULTS, paths.FIGURES, paths.NOTEBOOKS):
        if run == committed or committed in run.parents:
            return (f"{committed} holds what the project commits (results change only by a publish), so no run "
                    f"is written to {run}")
    return ""


def _folder_problem(run: Path) -> str:
    """Why `run` itself, its `.incomplete` or its `.previous` cannot be used ('' if they can)."""
    if run.is_symlink() or (run.exists() and not run.is_dir()):
        return f"{run} is a file or a link, not a folder the study made"
    if not _empty(run) and not rundir.is_study_run(run):
        return (f"{run} holds files the study did not write (it has no {rundir.MARKER}), and the study never "
                "moves or deletes those")
    for kept, role in ((incomplete_of(run), "an incomplete run"), (previous_of(run), "the replaced complete run")):
        if (kept.exists() or kept.is_symlink()) and not _empty(kept) and not rundir.is_study_run(kept):
            return (f"{role} of {run} would be kept as {kept}, but that is not a folder the study made "
                    f"(no {rundir.MARKER}); move it elsewhere")
    return ""


def usable(run: Path) -> bool:
    """Whether the driver would write a run into `run`."""
    return not _enclosing_problem(run) and not _folder_problem(run)


def suggestion(run: Path, default: Path) -> str:
    """How to fix a refused run folder: leave out --run-dir (the default), or a new folder the driver accepts."""
    if default != run and usable(default):
        return f"leave out --run-dir (the default is {default})"
    names = [f"{run.name}_study"] + [f"{run.name}_study{i}" for i in range(2, 100)]
    for parent in (run.parent, default.parent):
        for name in names:
            cand = parent / name
            if not cand.exists() and usable(cand):
                return f"pass --run-dir {cand}"
    return "pass --run-dir a new folder outside the project's committed folders"


def refusal(run: Path, default: Path | None = None) -> str:
    """Why `run` cannot be this run's folder, with a fix that works ('' if it can)."""
    why = _enclosing_problem(run) or _folder_problem(run)
    if not why:
        return ""
    return f"{why}; {suggestion(run, default or paths.RUNS / 'study')}"


def complete_run(run: Path) -> dict | None:
    """The manifest of the complete run in `run`, or None (absent, empty, unfinished or failed)."""
    manifest = rundir.read_manifest(run) if run.is_dir() and rundir.is_study_run(run) else None
    return manifest if manifest is not None and outcome(manifest) == "complete" else None


def start_run(run: Path, tier: str, info: dict) -> None:
    """Make the run folder, marked as the study's, with a manifest saying what this run is before any notebook runs."""
    rundir.claim(run)
    (run / "notebooks").mkdir()
    (run / "logs").mkdir()
    trt = rundir.tensorrt_choice({}, {"run": info})
    rundir.write_manifest(run, rundir.new_manifest(tier, tiers.limits(*trt)) | {"run": info})


def open_incomplete(run: Path, tier: str, info: dict) -> Path:
    """`<run>.incomplete`, fresh (replacing an earlier incomplete run the study made), with this run's manifest."""
    staging = incomplete_of(run)
    if staging.exists():
        if not _empty(staging) and not rundir.is_study_run(staging):  # checked before; the folder changed since
            raise Refused(f"{staging} is not a folder the study made")
        shutil.rmtree(staging)
    start_run(staging, tier, info)
    return staging


def promote(run: Path, staging: Path) -> Path | None:
    """Make the complete run in `staging` the run in `run`; the earlier run there goes to `<run>.previous`.

    Returns where the earlier run now is (None if `run` was empty). Two renames: at no moment is there no run.
    """
    previous = None
    if not _empty(run):
        previous = previous_of(run)
        if previous.exists():
            shutil.rmtree(previous)  # a run the study made (checked before the run)
        run.rename(previous)
    elif run.exists():
        run.rmdir()
    staging.rename(run)
    return previous
