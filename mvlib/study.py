"""The batch driver: run every notebook in order with papermill, then check the manifest against the tier.

    python -m mvlib.study --profile smoke [--tier cpu|gpu|trt|auto] [-p name value ...] [--only 01,03]
    python -m mvlib.study --publish-from build/runs/full      # make a complete run the committed results

Every parameter name and value, the notebook selection and the run folder are checked before anything is
written. The driver decides the weights (weights=auto: pretrained where the hub serves them, else seeded random)
and the TensorRT flavour and target once per run and hands every notebook those concrete choices.

A run is written into `<run>.incomplete` and becomes `<run>` only once it is complete (every selected notebook
ran and every stage of the expected tier ran); the complete run it replaces is kept as `<run>.previous` and the
two are compared. A failed, interrupted or partial run never displaces the last complete run. The driver writes
only into folders it made (marked `.mvlib-run`); anything else is refused and left as it is. The committed
results (`figures/`, `data/results/`) change only by a deliberate publish of a complete run (`--publish`,
`--publish-from`), as a whole.
"""
import argparse
import ast
import datetime as _dt
import difflib
import functools
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mvlib import env, io, paths, rerun, stages, tiers
from mvlib import run as run_mod

OK, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = f"""exit codes:
  {OK}    the run completed and reached its tier (or --publish-from published)
  {FAILED}    the run failed: a notebook failed, or a stage of the expected tier was skipped; the last complete run
       stays in place and this one is kept in <run>.incomplete
  {BAD_INPUT}    bad input: an unknown or invalid parameter, notebook, tier, profile or folder, or a publish that is
       refused; nothing was run or written
  {INTERRUPTED}  interrupted (Ctrl-C); recorded in <run>.incomplete/manifest.json"""


class BadInput(ValueError):
    """Input the driver refuses before it touches anything (exit code 2)."""


# --- notebooks, profiles and parameters ------------------------------------------------------------------------
def load_profile(name: str) -> dict:
    """Parameters of a named profile (mvlib/profiles/<name>.yaml)."""
    path = paths.PROFILES / f"{name}.yaml"
    if not path.exists():
        raise BadInput(f"unknown profile {name!r}; choose one of {', '.join(profile_names())}")
    return yaml.safe_load(path.read_text())


def profile_names() -> list[str]:
    """The profiles there are (mvlib/profiles/*.yaml)."""
    return sorted(p.stem for p in paths.PROFILES.glob("*.yaml"))


def all_notebooks() -> list[Path]:
    """The numbered notebooks in order."""
    return sorted(paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def notebooks(only: str = "") -> list[Path]:
    """The numbered notebooks in order, or only those named in `only` ('01,02', '1,2' or stems)."""
    found = all_notebooks()
    if not only:
        return found
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    picked, unknown = set(), []
    for w in wanted:
        key = w.zfill(2) if w.isdigit() else w
        match = [nb for nb in found if nb.name[:2] == key or nb.stem == key]
        picked.update(match) if match else unknown.append(w)
    if unknown or not wanted:
        raise BadInput(f"--only {only!r}: {', '.join(unknown) or 'nothing'} names no notebook; the notebooks are "
                       + ", ".join(nb.stem for nb in found))
    return [nb for nb in found if nb in picked]


def declared(nb: Path) -> set[str]:
    """Names declared in a notebook's `parameters` cell."""
    return set(run_mod.declared_parameters(nb.stem) or [])


@functools.cache
def defaults() -> dict:
    """Every parameter a notebook declares (run_dir aside) with its default value there (first notebook wins)."""
    import papermill
    out = {}
    for nb in all_notebooks():
        for name, info in papermill.inspect_notebook(str(nb)).items():
            if name != "run_dir":
                out.setdefault(name, ast.literal_eval(info["default"]))
    return out


def nearest(name: str, known) -> str:
    """' (did you mean batch_max?)' for the closest known name, else the list of known names."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else f"; known parameters: {', '.join(sorted(known))}"


def typed(name: str, value, default):
    """`value` as the type of the notebooks' default for `name`, or BadInput naming what is expected."""
    def bad(what: str) -> BadInput:
        return BadInput(f"-p {name} {value!r}: expected {what} (the notebooks' default is {default!r})")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif isinstance(default, str):
        if value is None:
            value = ""
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # a folder or checkpoint named by digits
        if not isinstance(value, str):
            raise bad("a string")
    elif isinstance(default, list):
        if not isinstance(value, list):
            value = [value]
        kinds = {type(v) for v in default}
        if kinds == {int} and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad("a list of integers, e.g. [1, 8]")
        if kinds == {str} and not all(isinstance(v, str) for v in value):
            raise bad("a list of names")
    return value


# The notebooks' own rules (their parameter comments), checked here before anything runs. Choices that modules
# define are tested against those modules (tests/test_study.py).
CHOICES = {"granularity": ("stage", "block", "layer"), "high_precision": ("fp16", "fp32"),
           "swap_dtypes": ("float32", "float16")}
AT_LEAST = {"seed": 0, "n_images": 1, "calib_images": 1, "eval_images": 1, "sensitivity_images": 1,
            "bench_repeats": 2, "bandwidth_samples": 1, "block": 0, "warmup_s": 0.0}
POSITIVE = ("bench_seconds", "workspace_gb", "data_max", "atol", "rtol", "silu_atol", "silu_rtol", "fp32_atol",
            "fp32_rtol", "fp16_atol", "fp16_rtol", "cosine_fp32", "cosine_fp16", "cosine_int8", "fp32_min_cosine",
            "fp16_min_cosine")
BATCH_LISTS = ("cpu_batches", "gpu_batches", "swap_batches", "check_batches")


def value_problems(params: dict) -> list[str]:
    """What is wrong with the values of a run's parameters (cheap rules first, then the model's own)."""
    problems = []
    for name, low in AT_LEAST.items():
        if name in params and params[name] < low:
            problems.append(f"{name}={params[name]}: must be at least {low}")
    problems += [f"{name}={params[name]}: must be above 0" for name in POSITIVE
                 if name in params and not params[name] > 0]
    problems += [f"{name}={params[name]}: use positive batch sizes, e.g. [1, 8]" for name in BATCH_LISTS
                 if name in params and (not params[name] or min(params[name]) < 1)]
    for name, choices in CHOICES.items():
        values = params.get(name)
        for v in values if isinstance(values, list) else [] if values is None else [values]:
            if v not in choices:
                problems.append(f"{name}={v!r}: choose {' or '.join(choices)}")
    b = [params.get(k) for k in ("batch_min", "batch_opt", "batch_max")]
    if None not in b and not 1 <= b[0] <= b[1] <= b[2]:
        problems.append(f"batch_min={b[0]}, batch_opt={b[1]}, batch_max={b[2]}: the TensorRT profile needs "
                        "1 <= batch_min <= batch_opt <= batch_max (the full profile has 1, 16, 32)")
    if params.get("image_dir") and not Path(params["image_dir"]).expanduser().is_dir():
        problems.append(f"image_dir={params['image_dir']!r} is not a folder (leave it empty for ImageNette, else "
                        "the shipped sample images)")
    from mvlib import export, model  # the notebooks' own checks of what the model accepts
    for check, name in ((export.check_image_size, "img_size"), (export.check_opset, "opset"),
                        (model.check_variant, "variant")):
        try:
            check(params[name])
        except (ValueError, KeyError) as err:
            problems.append(f"{name}: {err}")
    return problems


def parameters(profile: str, overrides: list[tuple[str, str]]) -> tuple[dict, list[str]]:
    """The profile with the `-p NAME VALUE` overrides that name a known parameter with a value of its type, and
    what is wrong with the others."""
    params = load_profile(profile)
    known = defaults()
    problems = []
    for name, text in overrides:
        if name == "run_dir":
            problems.append("-p run_dir: the driver sets it; pass --run-dir instead")
            continue
        if name not in known:
            problems.append(f"-p {name}: no notebook has a parameter {name!r}" + nearest(name, known))
            continue
        try:
            params[name] = typed(name, yaml.safe_load(text), known[name])
        except yaml.YAMLError as err:
            problems.append(f"-p {name} {text!r}: not a value ({err.__class__.__name__})")
        except BadInput as err:
            problems.append(str(err))
    return params, problems


# --- the manifest's verdicts ----------------------------------------------------------------------------------
def not_selected(manifest: dict, stage: dict) -> list[str]:
    """The notebooks a skipped stage needed output from that this run left out (`--only`); [] if none.

    The selection is the manifest's `run.notebooks`; a manifest without it counts as a run of every notebook.
    A stage names the artifacts it needs (`StageSkipped(..., needs=("model.int8.onnx",))`); the registry
    `mvlib.stages` says which notebook makes each.
    """
    ran = (manifest.get("run") or {}).get("notebooks")
    if stage.get("status") != "skipped" or ran is None:
        return []
    selected = {Path(nb).stem for nb in ran}
    makers = dict.fromkeys(maker(need) for need in stage.get("needs") or ())
    return [stages.short(m) for m in makers if m and m not in selected]


def maker(need: str) -> str:
    """The notebook stem that makes a needed artifact ('' if none is registered).

    Manifests written before needs named artifacts hold notebook numbers ("04"): those name the notebook itself.
    """
    if need in stages.PRODUCERS:
        return stages.producer(need)
    return next((nb.stem for nb in all_notebooks() if stages.short(nb.stem) == need), "")


def skip_note(manifest: dict, stage: dict) -> str:
    """'input made by 04, not selected' for a skip the selection caused, else ''."""
    missing = not_selected(manifest, stage)
    return f"input made by {', '.join(missing)}, not selected" if missing else ""


def stage_problems(manifest: dict, tier: str) -> list[str]:
    """Stages that failed, or that were skipped although the run was expected to reach their tier.

    A skip caused by leaving out the notebook that makes the stage's input (`--only`) is not a problem of the
    tier: `selection_skips` lists those. Nor is an FP8 stage skipped on a GPU without FP8 tensor cores
    (`no_fp8_hardware`, from fp8.NoFP8): the tier is reached, the hardware lacks the feature.
    """
    problems = []
    for name, st in sorted(manifest.get("stages", {}).items()):
        if st["status"] == "failed":
            problems.append(f"{name}: failed: {st['reason']}")
        elif st["status"] != "skipped" or not_selected(manifest, st) or st.get("no_fp8_hardware"):
            continue
        elif st["tier"] == run_mod.BUILD:  # engines: any machine with a builder builds them all, whatever its tier
            if not st.get("no_builder"):
                problems.append(f"{name}: engine build skipped on a machine with a TensorRT builder: {st['reason']}")
        elif tiers.rank(st["tier"]) <= tiers.rank(tier):
            problems.append(f"{name}: skipped although tier {tier} was expected: {st['reason']}")
    return problems


def selection_skips(manifest: dict) -> list[str]:
    """Stages skipped only because `--only` left out the notebook that makes their input."""
    return [f"{name}: skipped: {skip_note(manifest, st)}"
            for name, st in sorted(manifest.get("stages", {}).items()) if skip_note(manifest, st)]


def summary(manifest: dict) -> str:
    """One line per stage: status, tier and reason (and, for a skip the selection caused, which notebook)."""
    def line(name: str, st: dict) -> str:
        why = "; ".join(x for x in (skip_note(manifest, st), st.get("reason")) if x)
        return f"  {st['status']:8s} [{st['tier']}] {name}" + (f"  ({why})" if why else "")
    return "\n".join(line(name, st) for name, st in sorted(manifest.get("stages", {}).items()))


def outcome(manifest: dict) -> str:
    """'complete', 'failed', 'interrupted' or 'unfinished': how the run a manifest describes ended.

    Runs from before the manifest recorded it count as complete when they finished (the rerun record is written
    last) with no stage problem for their expected tier.
    """
    recorded = (manifest.get("outcome") or {}).get("status")
    if recorded:
        return recorded
    if "rerun" not in manifest:
        return "unfinished"
    expected = (manifest.get("run") or {}).get("expected_tier") or manifest.get("tier") or "cpu"
    return "failed" if stage_problems(manifest, expected) else "complete"


def read_manifest(folder: Path) -> dict | None:
    """A folder's manifest.json, or None where it has none (or one that does not parse)."""
    try:
        found = io.read_json(folder / "manifest.json")
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def selection(manifest: dict) -> list[str]:
    """The notebooks a run ran (every notebook when its manifest does not say)."""
    return list((manifest.get("run") or {}).get("notebooks") or [nb.name for nb in all_notebooks()])


# --- run folders -----------------------------------------------------------------------------------------------
class Refused(Exception):
    """A run folder the driver will not use: replacing or moving it would touch what the study did not write."""


def previous_of(run: Path) -> Path:
    """Where the complete run that a newer complete run replaced is kept: `<run>.previous`."""
    return run.with_name(run.name + ".previous")


def incomplete_of(run: Path) -> Path:
    """Where a run is written until it is complete, and stays when it is not: `<run>.incomplete`."""
    return run.with_name(run.name + ".incomplete")


def _empty(folder: Path) -> bool:
    """Whether `folder` is absent or an empty folder."""
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def default_run_dir(profile: str, label: str, selected: list[Path]) -> Path:
    """build/runs/<profile>[_<variant>][_<notebooks>]: a selection of notebooks has a folder of its own."""
    name = profile + (f"_{label}" if label else "")
    if len(selected) != len(all_notebooks()):
        name += "_" + "-".join(nb.name[:2] for nb in selected)
    return paths.RUNS / name


def _enclosing_problem(run: Path) -> str:
    """Why no run folder can be made at `run` whatever it holds: inside a file, a study run or committed results."""
    for parent in run.parents:
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, so {run} cannot be a folder"
        if run_mod.is_study_run(parent):
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
    if not _empty(run) and not run_mod.is_study_run(run):
        return (f"{run} holds files the study did not write (it has no {run_mod.MARKER}), and the study never "
                "moves or deletes those")
    for kept, role in ((incomplete_of(run), "an incomplete run"), (previous_of(run), "the replaced complete run")):
        if (kept.exists() or kept.is_symlink()) and not _empty(kept) and not run_mod.is_study_run(kept):
            return (f"{role} of {run} would be kept as {kept}, but that is not a folder the study made "
                    f"(no {run_mod.MARKER}); move it elsewhere")
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
    manifest = read_manifest(run) if run.is_dir() and run_mod.is_study_run(run) else None
    return manifest if manifest is not None and outcome(manifest) == "complete" else None


def start_run(run: Path, tier: str, info: dict) -> None:
    """Make the run folder, marked as the study's, with a manifest saying what this run is before any notebook runs."""
    run_mod.claim(run)
    (run / "notebooks").mkdir()
    (run / "logs").mkdir()
    io.write_json(run / "manifest.json", run_mod.new_manifest(tier) | {"run": info})


def open_incomplete(run: Path, tier: str, info: dict) -> Path:
    """`<run>.incomplete`, fresh (replacing an earlier incomplete run the study made), with this run's manifest."""
    staging = incomplete_of(run)
    if staging.exists():
        if not _empty(staging) and not run_mod.is_study_run(staging):  # checked before; the folder changed since
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


# --- decisions made once per run ------------------------------------------------------------------------------
def decide_weights(params: dict) -> dict:
    """Resolve the run's weights once and put the concrete choice into `params`; the decision, with its reason."""
    from mvlib import model  # torch and timm: imported once the run is going ahead
    decision = model.resolve_weights(params.get("variant"), str(params.get("weights", "auto")),
                                     int(params.get("seed", 0)))
    params["weights"] = decision["chosen"]
    print(f"weights: {decision['chosen']} for every notebook ({decision['reason']})")
    return decision


def decide_tensorrt(params: dict) -> dict:
    """Resolve the TensorRT flavour and target once and put the concrete choice into `params`; the decision.

    Where no builder is usable the notebooks keep the requested values and say why themselves.
    """
    from mvlib.tensorrt import flavours
    decision = flavours.decide(str(params.get("trt_flavour", "auto")), str(params.get("trt_target", "auto")))
    if decision.get("trt_flavour"):
        params["trt_flavour"], params["trt_target"] = decision["trt_flavour"], decision["trt_target"]
    return decision


def expose_tensorrt_libraries(decision: dict) -> None:
    """Let notebook kernels dlopen what the TensorRT flavour asks for by its unversioned name (RTX's parser does)."""
    if not decision.get("trt_flavour"):
        return  # no TensorRT here: nothing to add
    from mvlib.tensorrt import flavours, plugins
    os.environ.update(plugins.library_env(flavours.select(decision["trt_flavour"])))


# --- publishing ------------------------------------------------------------------------------------------------
# What a publish writes: notebook tables and figures, the rerun comparison and the manifest. Only these are
# replaced or removed in figures/ and data/results/; anything else there (another variant's folder) is left alone.
PUBLISHED = re.compile(r"^(\d\d_.+\.(csv|png)|rerun_.+\.csv|engines\.csv|manifest\.json)$")


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
    missing = sorted({nb.name for nb in all_notebooks()} - set(selection(manifest)))
    if missing:
        problems.append(f"only runs of every notebook are published (this one left out {', '.join(missing)})")
    _, results = publish_dirs(variant_label("full", info.get("params") or {}))
    published = read_manifest(results)
    if published is None or over:
        return problems
    gpu = lambda m: (m.get("gpu") or {}).get("gpu") or "no GPU"  # noqa: E731
    if gpu(published) != gpu(machine):
        problems.append(f"{results} holds a run on {gpu(published)}; this one is on {gpu(machine)}: pass "
                        "--publish-over to replace it")
    elif tiers.rank(published.get("tier", "cpu")) > tiers.rank(machine.get("tier", "cpu")):
        problems.append(f"{results} holds a tier {published.get('tier')} run; this one reached tier "
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
        if old.is_file() and PUBLISHED.match(old.name) and old.name not in new:
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
    manifest = read_manifest(run) if run_mod.is_study_run(run) else None
    if manifest is None:
        print(f"study: {run} is not a run folder of the study (no {run_mod.MARKER} and manifest.json)", file=sys.stderr)
        return BAD_INPUT
    problems = [] if outcome(manifest) == "complete" else [f"{run} holds a run that is {outcome(manifest)}, "
                                                          "not complete"]
    problems += publish_problems(manifest, {"gpu": manifest.get("gpu"), "tier": manifest.get("tier")}, over)
    if problems:
        print("study: not published:\n  " + "\n  ".join(problems), file=sys.stderr)
        return BAD_INPUT
    publish(run, variant_label("full", (manifest.get("run") or {}).get("params") or {}))
    return OK


# --- one run ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    return parser().parse_args(argv)


def parser() -> argparse.ArgumentParser:
    """The driver's command line."""
    ap = argparse.ArgumentParser(prog="python -m mvlib.study", description=__doc__.split("\n\n")[0],
                                 epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="full", choices=profile_names(), help="parameter profile (default full)")
    ap.add_argument("--tier", default="auto", choices=("auto", *tiers.TIERS),
                    help="tier the run must reach; auto: this machine's")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override one parameter (VALUE parsed as YAML: 32, [1, 8], mobilevit_xs)")
    ap.add_argument("--only", default="", help="comma-separated notebook numbers to run, e.g. 01,02 (a run of its "
                    "own: build/runs/<profile>_01-02)")
    ap.add_argument("--run-dir", default="", help="run folder (default build/runs/<profile>[_<variant>]"
                    "[_<notebooks>]): new, empty, or one the study made. The run is written to <run>.incomplete and "
                    "becomes <run> once complete; the complete run it replaces is kept as <run>.previous and "
                    "compared with it")
    ap.add_argument("--compare-with", default="", metavar="FOLDER",
                    help="compare this run with an earlier complete run instead: a run folder, or a published "
                         "one such as data/results (tables beside its manifest.json)")
    ap.add_argument("--publish", nargs="?", const="yes", default="no", choices=("yes", "no"),
                    help="once the run is complete, make it the committed results: figures/ and data/results/ "
                         "(another variant: their <variant>/ subfolders), replaced as a whole; full profile, every "
                         "notebook (default: no, the run only says how to publish it)")
    ap.add_argument("--publish-over", action="store_true",
                    help="like --publish, also over a published run of another GPU or a higher tier")
    ap.add_argument("--publish-from", default="", metavar="RUN",
                    help="publish an earlier complete run (e.g. build/runs/full) and run nothing")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds one notebook cell may run")
    ap.add_argument("--keep-going", action="store_true",
                    help="run the remaining notebooks after one fails (the run still fails at the end)")
    return ap


@dataclass
class Plan:
    """What a run is before any notebook runs: tiers, parameters, folder, notebooks, the decisions."""
    tier: str           # the tier the run must reach
    have: str           # the tier this machine reaches
    params: dict        # the profile with overrides, weights and TensorRT made concrete
    run: Path
    label: str          # '' for the full profile's variant, else the variant (names the publish subfolders)
    selected: list[Path]
    weights: dict       # mvlib.model.resolve_weights' decision: requested, chosen, reason, label
    tensorrt: dict      # mvlib.tensorrt.flavours.decide's decision
    compare_with: Path | None = None
    machine: dict = field(default_factory=dict)  # {"gpu": ..., "tier": ...} for the publish checks


def check_inputs(args: argparse.Namespace) -> Plan:
    """Every input checked, nothing written, nothing slow but the weights probe: the Plan, or BadInput."""
    have = tiers.detect()
    tier = have if args.tier == "auto" else args.tier
    problems = []
    if tiers.rank(tier) > tiers.rank(have):
        problems.append(f"this machine reaches tier {have}, not {tier}: {tiers.missing_for(tier)}")
    params, wrong = parameters(args.profile, args.param)
    problems += wrong + value_problems(params)
    try:
        selected = notebooks(args.only)
    except BadInput as err:
        raise BadInput("\n".join(problems + [str(err)])) from None
    label = variant_label(args.profile, params)
    default = default_run_dir(args.profile, label, selected)
    run = Path(args.run_dir).expanduser().resolve() if args.run_dir else default
    problems += folder_problems(run, default, selected)
    compare_with = Path(args.compare_with).expanduser().resolve() if args.compare_with else None
    problems += baseline_problems(compare_with) if compare_with else []
    machine = {"gpu": env.gpu_info(), "tier": have}
    if args.publish == "yes" or args.publish_over:
        probe = {"run": {"profile": args.profile, "params": params,
                         "notebooks": [nb.name for nb in selected]}}
        problems += [f"--publish: {p}" for p in publish_problems(probe, machine, args.publish_over)]
    if not problems:
        try:
            tensorrt = decide_tensorrt(params)
        except ValueError as err:
            problems.append(f"TensorRT: {err}")
    if problems:
        raise BadInput("\n".join(problems))
    try:
        weights = decide_weights(params)
    except (ValueError, OSError, RuntimeError) as err:  # unknown variant, missing checkpoint, no pretrained weights
        raise BadInput(f"weights: {err}") from err
    return Plan(tier, have, params, run, label, selected, weights, tensorrt, compare_with, machine)


def folder_problems(run: Path, default: Path, selected: list[Path]) -> list[str]:
    """Why `run` cannot take this run: a folder the driver does not write into, or a complete run of other
    notebooks that this one must not replace."""
    why = refusal(run, default)
    if why:
        return [f"refusing the run folder: {why}"]
    held = complete_run(run)
    if held is None or selection(held) == [nb.name for nb in selected]:
        return []
    return [f"{run} holds a complete run of notebooks {', '.join(n[:2] for n in selection(held))}, which a run of "
            f"{', '.join(nb.name[:2] for nb in selected)} must not replace; {suggestion(run, default)}"]


def baseline_problems(folder: Path) -> list[str]:
    """Why `--compare-with folder` cannot be compared with: no manifest there, or not a complete run."""
    earlier = read_manifest(folder)
    if earlier is None:
        return [f"--compare-with {folder}: no manifest.json there (a run folder, or data/results)"]
    if outcome(earlier) != "complete":
        return [f"--compare-with {folder}: that run is {outcome(earlier)}, not complete"]
    return []


# --- executing notebooks ---------------------------------------------------------------------------------------
_KERNELS: list = []  # kernel managers of this process's notebooks, to stop their kernels on Ctrl-C


def kernel_manager(log: Path):
    """A kernel manager class whose kernels write their own output (not the notebook's) into `log`.

    A kernel's process writes warnings of its own to its stderr (ipykernel's "running over TCP without
    encryption", "KeyboardInterrupt caught in kernel" when it is shut down mid-message, ONNX Runtime's C++ log
    with colour codes): the run's log keeps them, the console stays for what a user needs.
    """
    from jupyter_client.manager import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            with open(log, "ab") as out:  # the kernel holds its own copy of the descriptor
                await super()._async_launch_kernel(kernel_cmd, **(kw | {"stdout": out, "stderr": out}))
            _KERNELS.append(self)
    return LoggedKernelManager


def stop_kernels() -> None:
    """Kill what the run's kernels still run (each kernel leads a process group of its own), once interrupted."""
    while _KERNELS:
        proc = getattr(getattr(_KERNELS.pop(), "provisioner", None), "process", None)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def cell_failure(executed: Path, err: Exception) -> dict:
    """What failed in an executed notebook: the cell, its first line, and its own error text (a script's stderr)."""
    import nbformat
    if hasattr(err, "ename"):  # papermill's error for a cell that raised: its count, source and exception
        report = {"cell": err.exec_count, "source": (err.source or "").splitlines()[0] if err.source else "",
                  "error": f"{err.ename}: {err.evalue}"}
    else:  # a dead kernel, a timeout
        report = {"cell": None, "source": "", "error": f"{type(err).__name__}: {err}".strip()}
    try:
        nb = nbformat.read(str(executed), as_version=4)
    except (OSError, ValueError):
        return report
    for cell in nb.cells:
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if not errors:
            continue
        stderr = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream"
                         and o.get("name") == "stderr")
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        evalue = str(errors[0].get("evalue", ""))
        # %%bash: "Command 'b'<the whole cell as bytes>'' returned non-zero exit status 2." says only the status
        status = re.search(r"returned non-zero exit status (\d+)", evalue)
        own = (f"the cell's script exited with status {status.group(1)}" if status and evalue.startswith("Command")
               else f"{errors[0].get('ename')}: {evalue}")
        report = {"cell": cell.get("execution_count"), "source": cell.source.splitlines()[0] if cell.source else "",
                  "error": "\n".join(lines[-12:] + [f"({own})" if lines else own])}
        break
    return report


def execute(selected: list[Path], params: dict, run: Path, args: argparse.Namespace, state: dict) -> list[dict]:
    """Run the selected notebooks with papermill; a report per notebook that failed (stops at the first unless
    --keep-going). `state` says which notebook is running (for an interruption)."""
    import papermill
    failed: list[dict] = []
    for nb in selected:
        wanted = declared(nb)
        nb_params = {k: v for k, v in params.items() if k in wanted}
        nb_params["run_dir"] = str(run)
        state.update(notebook=nb.stem, start=time.perf_counter())
        print(f"--> {nb.name} ({', '.join(f'{k}={v}' for k, v in sorted(nb_params.items()) if k != 'run_dir')})")
        executed, log = run / "notebooks" / nb.name, run / "logs" / f"{nb.stem}.log"
        _KERNELS.clear()  # the previous notebook's kernel was shut down by papermill
        try:
            papermill.execute_notebook(str(nb), str(executed), parameters=nb_params, cwd=str(paths.NOTEBOOKS),
                                       kernel_name="python3", execution_timeout=args.timeout, progress_bar=False,
                                       kernel_manager_class=kernel_manager(log))
        except Exception as err:  # a cell's error, a dead kernel, a timeout: the run failed in this notebook
            report = {"notebook": nb.stem} | cell_failure(executed, err)
            where = f" in cell [{report['cell']}] `{report['source']}`" if report["cell"] is not None else ""
            print(f"study: {nb.name} failed{where}:\n    " + report["error"].replace("\n", "\n    ")
                  + f"\n  executed notebook: {executed}\n  kernel log: {log}", file=sys.stderr)
            failed.append(report)
            if not args.keep_going:
                return failed
            continue
        print(f"    done in {time.perf_counter() - state['start']:.0f} s")
    state["notebook"] = None
    return failed


def record_failures(manifest: dict, failures: list[dict]) -> None:
    """A failed stage for each notebook that failed outside its stages (a `%%bash` cell, say), with the error."""
    for f in failures:
        own = [k for k, st in manifest.get("stages", {}).items()
               if k.startswith(f["notebook"] + "/") and st["status"] == "failed"]
        if not own:
            manifest.setdefault("stages", {})[f"{f['notebook']}/cell_{f['cell']}"] = {
                "tier": "cpu", "status": "failed", "reason": f["error"].splitlines()[0] if f["error"] else "",
                "error": f["error"], "cell": f["cell"], "source": f["source"]}


def rebuilt_engines(run: Path) -> list[str]:
    """A line per engine the run rebuilt because its cached copy was corrupt (the engines table says so too)."""
    from types import SimpleNamespace

    from mvlib.tensorrt import table
    return table.rebuilt_lines(SimpleNamespace(table=lambda name: run / "results" / name))


def compare(run: Path, manifest: dict, baseline: Path | None, explicit: bool, cache) -> dict:
    """Compare a complete run with its baseline (the complete run it replaced, or --compare-with) when like with
    like, or say why not; the manifest's `rerun` record."""
    info = rerun.summary(cache) | {"compared_with": None, "not_compared": "no earlier complete run", "caveats": []}
    earlier = read_manifest(baseline) if baseline is not None else None
    if earlier is None:
        return info
    unlike = rerun.differences(earlier, manifest)
    if unlike and not explicit:
        return info | {"not_compared": "; ".join(unlike)}
    timed, tables = rerun.compare_runs(baseline, run)
    io.write_csv(run / "results" / rerun.TIMED_TABLE, timed)
    io.write_csv(run / "results" / rerun.TABLES_TABLE, tables)
    return rerun.summary(cache, timed, tables) | {"compared_with": str(baseline), "not_compared": "",
                                                  "caveats": unlike}


def finish(plan: Plan, staging: Path, failures: list[dict], before: dict, args: argparse.Namespace) -> int:
    """Record how the run went; promote it to the run folder when complete, compare it, publish if asked."""
    manifest = io.read_json(staging / "manifest.json")
    record_failures(manifest, failures)
    cache = rerun.cache_use(before, rerun.snapshot())
    io.write_csv(staging / "results" / rerun.CACHE_TABLE, cache)
    print_stages(manifest, staging)
    problems = run_problems(manifest, plan, failures)
    if problems:
        return keep_failed(plan, staging, manifest, cache, problems, failures)
    return complete(plan, staging, manifest, cache, args)


def print_stages(manifest: dict, run: Path) -> None:
    """Each stage's status, engines rebuilt from a corrupt cache, and skips the selection caused."""
    print("stages:\n" + summary(manifest))
    for line in rebuilt_engines(run):
        print(line)
    left_out = selection_skips(manifest)
    if left_out:
        print("not counted against the tier (--only left out the notebook that makes their input):\n  "
              + "\n  ".join(left_out))


def run_problems(manifest: dict, plan: Plan, failures: list[dict]) -> list[str]:
    """Why the run is not complete: stages that failed or were skipped below its tier, notebooks not run."""
    problems = stage_problems(manifest, plan.tier)
    ran = {f["notebook"] for f in failures} | {k.split("/")[0] for k in manifest.get("params", {})}
    not_run = [nb.stem for nb in plan.selected if nb.stem not in ran]
    return problems + ([f"not run after the failure: {', '.join(not_run)}"] if not_run else [])


def keep_failed(plan: Plan, staging: Path, manifest: dict, cache, problems: list[str], failures: list[dict]) -> int:
    """Record the failure in `<run>.incomplete`, which stays; the last complete run is untouched. Exit code 1."""
    manifest["outcome"] = {"status": "failed", "problems": problems, "failed": failures}
    manifest["rerun"] = rerun.summary(cache) | {"compared_with": None, "not_compared": "this run did not complete"}
    io.write_json(staging / "manifest.json", manifest)
    print(rerun.artifacts_line(manifest["rerun"]))
    kept = f"; the last complete run is still {plan.run}" if complete_run(plan.run) else ""
    print("study: the run did not reach its tier:\n  " + "\n  ".join(problems)
          + f"\nthis run is kept in {staging}{kept}", file=sys.stderr)
    return FAILED


def complete(plan: Plan, staging: Path, manifest: dict, cache, args: argparse.Namespace) -> int:
    """Promote the complete run, compare it with its baseline, publish it if asked (else say how). Exit code 0."""
    manifest["outcome"] = {"status": "complete"}
    replaced = complete_run(plan.run) is not None
    io.write_json(staging / "manifest.json", manifest)
    previous = promote(plan.run, staging)
    baseline = plan.compare_with or (previous if replaced else None)
    manifest["rerun"] = compare(plan.run, manifest, baseline, plan.compare_with is not None, cache)
    io.write_json(plan.run / "manifest.json", manifest)
    print(rerun.artifacts_line(manifest["rerun"]))
    print(rerun.comparison_line(manifest["rerun"]))
    print(f"study: complete: {plan.run}" + (f" (the run it replaced: {previous})" if previous else ""))
    if args.publish == "yes" or args.publish_over:
        publish(plan.run, plan.label)
    elif hint := publish_hint(plan.run, manifest, plan.machine):
        print(hint)
    return OK


def interrupted(plan: Plan, staging: Path, state: dict) -> int:
    """Stop the kernels, record the interruption, and say so in one line; exit code 130."""
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the record short
    try:
        stop_kernels()
        print("\nstudy: " + record_interruption(plan, staging, state), file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, handler)
    return INTERRUPTED


def record_interruption(plan: Plan, staging: Path, state: dict) -> str:
    """Write the interruption into this run's manifest; the line that says where it stopped and what is kept."""
    where = state.get("notebook")
    seconds = time.perf_counter() - state.get("start", time.perf_counter())
    if not state.get("opened"):  # before this run's folder existed: an older incomplete run is not this one
        return "interrupted before any notebook ran; nothing was written"
    if not staging.exists():  # stopped after the run was complete and in place
        return f"interrupted after the run was complete; it is {plan.run}"
    manifest = io.read_json(staging / "manifest.json")
    manifest["outcome"] = {"status": "interrupted", "notebook": where, "after_s": round(seconds, 1),
                           "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    io.write_json(staging / "manifest.json", manifest)
    kept = f"; the last complete run is still {plan.run}" if complete_run(plan.run) else ""
    return f"interrupted{f' in {where} after {seconds:.0f} s' if where else ''}; this run is kept in {staging}{kept}"


def run_study(plan: Plan, args: argparse.Namespace) -> int:
    """Run the planned notebooks into `<run>.incomplete` and finish; the exit code."""
    expose_tensorrt_libraries(plan.tensorrt)
    info = {"profile": args.profile, "expected_tier": plan.tier, "params": plan.params, "weights": plan.weights,
            "tensorrt": plan.tensorrt, "notebooks": [nb.name for nb in plan.selected], "folder": plan.run.name}
    state: dict = {"notebook": None}
    staging = incomplete_of(plan.run)
    try:
        before = rerun.snapshot()
        staging = open_incomplete(plan.run, plan.have, info)
        state["opened"] = True
        tensorrt = plan.tensorrt.get("label") or "none"
        print(f"study: profile {args.profile}, expected tier {plan.tier} (machine: {plan.have}), TensorRT {tensorrt}"
              + (f" for {plan.tensorrt['trt_target']}" if plan.tensorrt.get("trt_target") else "")
              + f"; writing {staging}, which becomes {plan.run} once complete")
        failures = execute(plan.selected, plan.params, staging, args, state)
        return finish(plan, staging, failures, before, args)
    except KeyboardInterrupt:
        return interrupted(plan, staging, state)


def main(argv: list[str] | None = None) -> int:
    """Run the study (or publish a run); the exit code (EXIT_CODES)."""
    args = parse_args(argv)
    if args.publish_from:
        return publish_from(args.publish_from, args.publish_over)
    # Figures are saved to files; a batch kernel needs no inline backend (and some matplotlib
    # builds reject ipykernel's default one). Kernels inherit this environment.
    os.environ.setdefault("MPLBACKEND", "Agg")
    # Nobody watches a papermill kernel: plain progress lines in the log, no widget or text bars.
    os.environ.setdefault("MVLIB_PROGRESS", "lines")
    try:
        plan = check_inputs(args)
    except BadInput as err:
        print("study: " + str(err).replace("\n", "\nstudy: ") + "\n(nothing was run or written)", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("\nstudy: interrupted before any notebook ran; nothing was written", file=sys.stderr)
        return INTERRUPTED
    return run_study(plan, args)


if __name__ == "__main__":
    sys.exit(main())
