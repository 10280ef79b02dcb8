"""The batch driver: run every notebook in order with papermill, then check the manifest against the tier.

    python -m mvlib.study --profile smoke [--tier cpu|gpu|trt|auto] [-p name value ...] [--only 01,03]

The driver decides the weights once per run (weights=auto: pretrained where the hub serves them, else seeded
random) and hands every notebook that concrete choice. It writes only into a run folder it made: one that holds
the marker `.mvlib-run` (mvlib.run.MARKER), or a new or empty folder, which it marks first. An earlier run there
is moved to `<run>.previous`, replacing an older run the study made; a folder holding anything else, or a
`.previous` the study did not make, is refused (exit code 2) and left as it is.
"""
import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from mvlib import io, paths, rerun, tiers
from mvlib import run as run_mod


def load_profile(name: str) -> dict:
    """Parameters of a named profile (mvlib/profiles/<name>.yaml)."""
    path = paths.PROFILES / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in paths.PROFILES.glob("*.yaml"))
        raise SystemExit(f"unknown profile {name!r}; choose one of {', '.join(known)}")
    return yaml.safe_load(path.read_text())


def notebooks(only: str = "") -> list[Path]:
    """The numbered notebooks in order, optionally only those whose number prefix is listed."""
    found = sorted(paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {w.strip() for w in only.split(",") if w.strip()}
        found = [nb for nb in found if nb.name[:2] in wanted or nb.stem in wanted]
        if not found:
            raise SystemExit(f"--only {only!r} matches no notebook in {paths.NOTEBOOKS}")
    return found


def declared(nb: Path) -> set[str]:
    """Names declared in a notebook's `parameters` cell."""
    import papermill
    return set(papermill.inspect_notebook(str(nb)).keys())


def not_selected(manifest: dict, stage: dict) -> list[str]:
    """The notebooks a skipped stage needed output from that this run left out (`--only`); [] if none.

    The selection is the manifest's `run.notebooks`; a manifest without it counts as a run of every notebook.
    A stage names what it needs with `StageSkipped(..., needs="04")` or a reason saying "notebook 04 writes it"
    (mvlib.run.producers).
    """
    ran = (manifest.get("run") or {}).get("notebooks")
    if stage.get("status") != "skipped" or ran is None:
        return []
    selected = {str(nb)[:2] for nb in ran}
    needs = stage.get("needs") or run_mod.producers(stage.get("reason", ""))
    return [n for n in needs if n not in selected]


def skip_note(manifest: dict, stage: dict) -> str:
    """'input made by 04, not selected' for a skip the selection caused, else ''."""
    missing = not_selected(manifest, stage)
    return f"input made by {', '.join(missing)}, not selected" if missing else ""


def stage_problems(manifest: dict, tier: str) -> list[str]:
    """Stages that failed, or that were skipped although the run was expected to reach their tier.

    A skip caused by leaving out the notebook that makes the stage's input (`--only`) is not a problem of the
    tier: `selection_skips` lists those.
    """
    problems = []
    for name, st in sorted(manifest.get("stages", {}).items()):
        if st["status"] == "failed":
            problems.append(f"{name}: failed: {st['reason']}")
        elif st["status"] != "skipped" or not_selected(manifest, st):
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


def publish(run: Path, sub: str = "") -> None:
    """Copy a run's figures, tables and manifest into the committed figures/ and data/results/ (or their `sub`/)."""
    figures, results = paths.FIGURES / sub, paths.RESULTS / sub
    for src, dest in (("figures", figures), ("results", results)):
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted((run / src).glob("*")):
            io.write_bytes(dest / f.name, f.read_bytes())
    io.write_bytes(results / "manifest.json", (run / "manifest.json").read_bytes())
    print(f"published figures to {figures} and tables to {results}")


def variant_label(profile: str, params: dict) -> str:
    """'' for the profile's own model, else the overriding variant (it names the run folder and publish folder)."""
    return "" if params.get("variant") == load_profile(profile).get("variant") else str(params.get("variant"))


class Refused(Exception):
    """A run folder the driver will not use: replacing or moving it would touch what the study did not write."""


def previous_of(run: Path) -> Path:
    """Where the earlier run in `run` is kept: `<run>.previous`."""
    return run.with_name(run.name + ".previous")


def _empty(folder: Path) -> bool:
    """Whether `folder` is absent or an empty folder."""
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def refusal(run: Path) -> str:
    """Why `run` cannot be this run's folder ('' if it can): the study never moves or removes what it did not make."""
    fix = f"pass --run-dir a new or empty folder instead, e.g. {run / 'study_run'}"
    if run.is_symlink() or (run.exists() and not run.is_dir()):
        return f"{run} is not a folder the study made (a link or a file); {fix}"
    if _empty(run):
        return ""
    if not run_mod.is_study_run(run):
        return (f"{run} holds files the study did not write (it has no {run_mod.MARKER}), and the study never moves "
                f"or deletes those; {fix}")
    previous = previous_of(run)
    if (previous.exists() or previous.is_symlink()) and not run_mod.is_study_run(previous):
        return (f"the earlier run in {run} would be kept as {previous}, but that is not a folder the study made "
                f"(no {run_mod.MARKER}); move it elsewhere, or {fix}")
    return ""


def keep_previous(run: Path) -> Path | None:
    """Move an earlier study run in `run` aside to `<run>.previous`; its new path if it can be compared, else None.

    Raises Refused, touching nothing, where `run` or `<run>.previous` holds anything the study did not make.
    """
    why = refusal(run)
    if why:
        raise Refused(why)
    if _empty(run):
        return None
    previous = previous_of(run)
    if previous.exists():
        shutil.rmtree(previous)  # an earlier run the study made (refusal checked)
    run.rename(previous)
    return previous if (previous / "manifest.json").is_file() else None


def start_run(run: Path, tier: str, info: dict) -> None:
    """Make the run folder, marked as the study's, with a manifest saying what this run is before any notebook runs."""
    run_mod.claim(run)
    (run / "notebooks").mkdir()
    io.write_json(run / "manifest.json", run_mod.new_manifest(tier) | {"run": info})


def decide_weights(params: dict) -> dict:
    """Resolve the run's weights once and put the concrete choice into `params`; the decision, with its reason."""
    from mvlib import model  # torch and timm: imported once the run is going ahead
    decision = model.resolve_weights(params.get("variant"), str(params.get("weights", "auto")),
                                     int(params.get("seed", 0)))
    params["weights"] = decision["chosen"]
    print(f"weights: {decision['chosen']} for every notebook ({decision['reason']})")
    return decision


def record_rerun(run: Path, manifest: dict, previous: Path | None, before: dict) -> dict:
    """Write which artifacts the run reused and, after a comparable earlier run, how its tables agree with it."""
    cache = rerun.cache_use(before, rerun.snapshot())
    io.write_csv(run / "results" / rerun.CACHE_TABLE, cache)
    timed = tables = None
    why = "no earlier run in this folder"
    if previous is not None:
        earlier = io.read_json(previous / "manifest.json")
        # "rerun" is written last: without it the earlier run stopped early (its "run" entry is written first)
        why = rerun.comparable(earlier, manifest) if "rerun" in earlier else "the earlier run did not finish"
        if not why:
            timed, tables = rerun.compare_runs(previous, run)
            io.write_csv(run / "results" / rerun.TIMED_TABLE, timed)
            io.write_csv(run / "results" / rerun.TABLES_TABLE, tables)
    info = rerun.summary(cache, timed, tables) | {"compared_with": str(previous) if timed is not None else None,
                                                  "not_compared": why if timed is None else ""}
    print("artifacts: " + ", ".join(f"{v} {k[6:]}" for k, v in info.items() if k.startswith("files_")))
    if timed is not None:
        print(f"re-run against {previous.name}: {info['timed_rows_agree']} of {info['timed_rows']} timed rows agree "
              f"within their spread (largest difference {info['max_abs_diff_pct']:.1f}%); "
              f"{info['tables_identical']} of {info['tables']} untimed tables identical, verdicts differ in "
              f"{info['tables_verdicts_differ'] or 'none'}")
    return info


def expose_tensorrt_libraries(trt_flavour: str) -> None:
    """Let notebook kernels dlopen what the TensorRT flavour asks for by its unversioned name (RTX's parser does)."""
    from mvlib import trt
    try:
        os.environ.update(trt.library_env(trt.select(trt_flavour)))
    except trt.NoBuilder:
        pass  # no TensorRT here: nothing to add


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    ap = argparse.ArgumentParser(prog="python -m mvlib.study", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full", help="parameter profile: full (default) or smoke")
    ap.add_argument("--tier", default="auto", help="tier the run must reach: cpu, gpu, trt, or auto (this machine's)")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override one parameter (VALUE parsed as YAML: 32, [1, 8], mobilevit_xs)")
    ap.add_argument("--only", default="", help="comma-separated notebook numbers to run, e.g. 01,02")
    ap.add_argument("--run-dir", default="", help="run folder (default build/runs/<profile>[_<variant>]): new, "
                    "empty, or one the study made; an earlier run there is kept as <run>.previous and compared "
                    "with this one")
    ap.add_argument("--publish", choices=("auto", "yes", "no"), default="auto",
                    help="copy figures and tables into figures/ and data/results/ (auto: only for the full profile; "
                         "another variant goes to their <variant>/ subfolders)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds one notebook cell may run")
    ap.add_argument("--keep-going", action="store_true",
                    help="run the remaining notebooks after one fails (the run still fails at the end)")
    return ap.parse_args(argv)


@dataclass
class Plan:
    """What a run is before any notebook runs: tiers, parameters, folder, notebooks, the weights decision."""
    tier: str           # the tier the run must reach
    have: str           # the tier this machine reaches
    params: dict        # the profile with overrides, weights made concrete
    run: Path
    label: str          # '' for the profile's own variant, else the variant (names the publish subfolders)
    selected: list[Path]
    weights: dict       # mvlib.model.resolve_weights' decision: requested, chosen, reason, label


def prepare(args: argparse.Namespace) -> Plan | int:
    """Everything decided before a notebook runs, writing nothing; or the exit code of a refusal."""
    have = tiers.detect()
    tier = have if args.tier == "auto" else args.tier
    if tiers.rank(tier) > tiers.rank(have):
        print(f"this machine reaches tier {have}, not {tier}: {tiers.missing_for(tier)}", file=sys.stderr)
        return 2
    params = load_profile(args.profile)
    for name, value in args.param:
        params[name] = yaml.safe_load(value)
    label = variant_label(args.profile, params)
    run = (Path(args.run_dir).expanduser().resolve() if args.run_dir
           else paths.RUNS / (args.profile + (f"_{label}" if label else "")))
    selected = notebooks(args.only)
    why = refusal(run)  # before anything slow, and before anything is written
    if why:
        print(f"study: refusing the run folder: {why}", file=sys.stderr)
        return 2
    try:
        weights = decide_weights(params)
    except (ValueError, OSError, RuntimeError) as err:  # unknown variant, missing checkpoint, no pretrained weights
        print(f"study: weights: {err}", file=sys.stderr)
        return 2
    return Plan(tier, have, params, run, label, selected, weights)


def execute(selected: list[Path], params: dict, run: Path, args: argparse.Namespace) -> list[str] | None:
    """Run the selected notebooks with papermill; the names of those that failed, or None to stop the run."""
    import papermill
    failed: list[str] = []
    for nb in selected:
        wanted = declared(nb)
        unknown = set(params) - wanted
        nb_params = {k: v for k, v in params.items() if k in wanted}
        nb_params["run_dir"] = str(run)
        start = time.perf_counter()
        print(f"--> {nb.name} ({', '.join(f'{k}={v}' for k, v in sorted(nb_params.items()) if k != 'run_dir')})")
        try:
            papermill.execute_notebook(str(nb), str(run / "notebooks" / nb.name), parameters=nb_params,
                                       cwd=str(paths.NOTEBOOKS), kernel_name="python3",
                                       execution_timeout=args.timeout, progress_bar=False)
        except papermill.PapermillExecutionError as err:
            print(f"notebook {nb.name} failed: {err.ename}: {err.evalue}\n"
                  f"see the executed copy {run / 'notebooks' / nb.name}", file=sys.stderr)
            failed.append(nb.name)
            if not args.keep_going:
                return None
            continue
        print(f"    done in {time.perf_counter() - start:.0f} s"
              + (f"; not used here: {sorted(unknown)}" if unknown else ""))
    return failed


def main(argv: list[str] | None = None) -> int:
    """Run the study; exit non-zero if a notebook fails or a stage of the expected tier was skipped."""
    args = parse_args(argv)
    # Figures are saved to files; a batch kernel needs no inline backend (and some matplotlib
    # builds reject ipykernel's default one). Kernels inherit this environment.
    os.environ.setdefault("MPLBACKEND", "Agg")
    # Nobody watches a papermill kernel: plain progress lines in the log, no widget or text bars.
    os.environ.setdefault("MVLIB_PROGRESS", "lines")
    plan = prepare(args)
    if isinstance(plan, int):
        return plan
    run = plan.run
    expose_tensorrt_libraries(plan.params.get("trt_flavour", "auto"))
    try:
        previous = keep_previous(run)  # a run's manifest must describe this run only; the last one is kept aside
    except Refused as err:  # the folder changed while the weights were decided
        print(f"study: refusing the run folder: {err}", file=sys.stderr)
        return 2
    info = {"profile": args.profile, "expected_tier": plan.tier, "params": plan.params, "weights": plan.weights,
            "notebooks": [nb.name for nb in plan.selected]}
    start_run(run, plan.have, info)
    before = rerun.snapshot()
    print(f"study: profile {args.profile}, expected tier {plan.tier} (machine: {plan.have}), run folder {run}")
    failed = execute(plan.selected, plan.params, run, args)
    if failed is None:
        return 1
    manifest = io.read_json(run / "manifest.json")
    manifest["run"] = info
    manifest["rerun"] = record_rerun(run, manifest, previous, before)
    io.write_json(run / "manifest.json", manifest)
    print("stages:\n" + summary(manifest))
    left_out = selection_skips(manifest)
    if left_out:
        print("not counted against the tier (--only left out the notebook that makes their input):\n  "
              + "\n  ".join(left_out))
    problems = stage_problems(manifest, plan.tier) + [f"notebook {name} failed" for name in failed]
    if problems:
        print("the run did not reach its tier:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    if args.publish == "yes" or (args.publish == "auto" and args.profile == "full"):
        publish(run, plan.label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
