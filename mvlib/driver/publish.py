"""Publishing: a complete run of the full profile becomes the committed figures/ and data/results/, as a whole.

Serves: the driver (`make publish`, `--publish`).
"""
import os
import shutil
import sys
from pathlib import Path

from mvlib import io, paths, rundir, stages, tiers
from mvlib.driver import BAD_INPUT, OK
from mvlib.driver.params import load_profile
from mvlib.driver.verdicts import outcome, selection


def published(name: str) -> bool:
    """Whether a publish writes (so replaces or removes) a file of this name in figures/ or data/results/: a
    notebook's table or figure (named after the notebook), the rerun comparison, the engines table, the manifest.
    Anything else there (another variant's folder, a user's file) is left alone."""
    own = any(name.startswith(stages.short(nb.stem) + "_") for nb in stages.all_notebooks())
    return (own and name.endswith((".csv", ".png"))) or (name.startswith("rerun_") and name.endswith(".csv")) \
        or name in ("engines.csv", "manifest.json")


def publish_dirs(label: str) -> tuple[Path, Path]:
    """figures/[<variant>/] and data/results/[<variant>/]."""
    return paths.FIGURES / label, paths.RESULTS / label


def variant_label(profile: str, params: dict) -> str:
    """'' for the profile's own model, else the run's variant (it names the run folder and the publish folder)."""
    return "" if params.get("variant") == load_profile(profile).get("variant") else str(params.get("variant"))


def publish_problems(manifest: dict, machine: dict, over: bool) -> list[str]:
    """Why a run may not be published (none: []): incomplete, partial, not the full profile, or, unless `over`,
    over a published run of another GPU or a higher tier."""
    info = manifest.get("run") or {}
    problems = []
    if info.get("profile") != "full":
        problems.append(f"only runs of the full profile are published (this is a {info.get('profile')} run)")
    missing = sorted({nb.name for nb in stages.all_notebooks()} - set(selection(manifest)))
    if missing:
        problems.append(f"only runs of every notebook are published (this one left out {', '.join(missing)})")
    _, results = publish_dirs(variant_label("full", info.get("params") or {}))
    held = rundir.read_manifest(results)
    if held is None or over:
        return problems
    gpu = lambda m: (m.get("gpu") or {}).get("gpu") or "no GPU"  # noqa: E731
    if gpu(held) != gpu(machine):
        problems.append(f"{results} holds a run on {gpu(held)}; this one is on {gpu(machine)}: pass "
                        "--publish-over to replace it")
    elif tiers.rank(held.get("tier", "cpu")) > tiers.rank(machine.get("tier", "cpu")):
        problems.append(f"{results} holds a tier {held.get('tier')} run; this one reached tier "
                        f"{machine.get('tier')}: pass --publish-over to replace it")
    return problems


def _replace(dest: Path, files: list[Path]) -> None:
    """Make `files` the published files of `dest`: staged first, then renamed in, stale ones removed, manifest last."""
    dest.mkdir(parents=True, exist_ok=True)
    stage = dest.parent / f".{dest.name or 'root'}.publishing"
    if stage.exists():
        shutil.rmtree(stage)  # a publish that stopped before its renames; it held copies only
    stage.mkdir()
    for f in files:
        io.write_bytes(stage / f.name, f.read_bytes())
    new = {f.name for f in files}
    for name in sorted(new - {"manifest.json"}):
        os.replace(stage / name, dest / name)
    for old in dest.iterdir():
        if old.is_file() and published(old.name) and old.name not in new:
            old.unlink()  # a file of an earlier publish that this run did not make
    if "manifest.json" in new:  # last: the manifest describes the files beside it
        os.replace(stage / "manifest.json", dest / "manifest.json")
    stage.rmdir()


def publish(run: Path, label: str = "") -> None:
    """Replace the committed figures and tables (or their `label`/ subfolders) by a complete run's, as a whole."""
    figures, results = publish_dirs(label)
    _replace(figures, sorted((run / "figures").glob("*.png")))
    _replace(results, sorted((run / "results").glob("*.csv")) + [run / "manifest.json"])
    print(f"published {run} to {figures} and {results}")


def publish_hint(run: Path, manifest: dict, machine: dict) -> str:
    """How to publish a complete run, or why it would not be, for the end of a run that did not publish."""
    problems = publish_problems(manifest, machine, over=False)
    command = f"python -m mvlib.study --publish-from {run}"
    if not problems:
        return f"not published (publishing is deliberate); to make this run the committed results: {command}"
    if all("--publish-over" in p for p in problems):
        return f"not published: {'; '.join(problems)} ({command} --publish-over)"
    return ""  # a smoke or partial run: nothing to say


def publish_from(folder: str, over: bool) -> int:
    """Publish an earlier complete run; exit code."""
    run = Path(folder).expanduser().resolve()
    if not run.exists():
        print(f"study: no run at {run} to publish: run `make study` (the full profile) first, then `make publish` "
              "(or --publish-from the folder of a complete full run)", file=sys.stderr)
        return BAD_INPUT
    manifest = rundir.read_manifest(run) if rundir.is_study_run(run) else None
    if manifest is None:
        print(f"study: {run} is not a run folder of the study (no {rundir.MARKER} and manifest.json)", file=sys.stderr)
        return BAD_INPUT
    problems = [] if outcome(manifest) == "complete" else [f"{run} holds a run that is {outcome(manifest)}, "
                                                          "not complete"]
    problems += publish_problems(manifest, {"gpu": manifest.get("gpu"), "tier": manifest.get("tier")}, over)
    if problems:
        print("study: not published:\n  " + "\n  ".join(problems), file=sys.stderr)
        return BAD_INPUT
    publish(run, variant_label("full", (manifest.get("run") or {}).get("params") or {}))
    return OK
