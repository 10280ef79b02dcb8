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

Serves: the driver (`make study`, `python -m mvlib.study`); no notebook imports it.
"""
import argparse
import contextlib
import datetime as _dt
import gc
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mvlib import env, io, rerun, rundir, stages, tiers
from mvlib.driver import BAD_INPUT, FAILED, INTERRUPTED, OK, ahead, calibrate, kernels, runfolder, verdicts
from mvlib.driver.params import BadInput, parameters, profile_names, seconds, value_problems
from mvlib.driver.publish import publish, publish_from, publish_hint, publish_problems, variant_label

EXIT_CODES = f"""exit codes:
  {OK}    the run completed and reached its tier (or --publish-from published)
  {FAILED}    the run failed: a notebook failed, or a stage of the expected tier was skipped; the last complete run
       stays in place and this one is kept in <run>.incomplete
  {BAD_INPUT}    bad input: an unknown or invalid parameter, notebook, tier, profile or folder, or a publish that is
       refused; nothing was run or written
  {INTERRUPTED}  interrupted (Ctrl-C); recorded in <run>.incomplete/manifest.json
  {128 + signal.SIGTERM}  terminated (SIGTERM: `timeout`, a job scheduler, `docker stop`); handled as Ctrl-C is and
       recorded with the signal's name
  {128 + signal.SIGHUP}  hung up (SIGHUP: its terminal closed), likewise
A run folder another driver is writing is refused with {BAD_INPUT}. `make study` and `make publish` exit 2 whenever
the driver fails (make's own code) and print the driver's code."""


def notebooks(only: str = "") -> list[Path]:
    """The notebooks in order, or only those `--only` names; BadInput naming the notebooks there are."""
    try:
        return stages.select(only)
    except ValueError as err:
        raise BadInput(f"--only {only!r}: {err}") from None


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
    ap.add_argument("--only", default="", help="comma-separated notebooks to run, by name or the part before its "
                    "first '_', e.g. 01,02 or 01_export (a run of its own: build/runs/<profile>_01-02)")
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
    ap.add_argument("--timeout", type=seconds, default=3600, help="seconds one notebook cell may run")
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
    params, problems = parameters(args.profile, args.param)
    problems += value_problems(params)
    # the tier follows the run's own TensorRT choice: trt_flavour tensorrt_rtx on an H100 is tier gpu (tiers.detect)
    trt = (str(params.get("trt_flavour", "auto")), str(params.get("trt_target", "auto")))
    try:
        have = tiers.detect(*trt)
    except ValueError as err:  # a flavour or target flavours.decide does not know
        problems.append(f"TensorRT: {err}")
        trt = ("auto", "auto")
        have = tiers.detect()
    tier = have if args.tier == "auto" else args.tier
    if tiers.rank(tier) > tiers.rank(have):
        problems.append(f"this machine reaches tier {have}, not {tier}: {tiers.missing_for(tier, *trt)}")
    try:
        selected = notebooks(args.only)
    except BadInput as err:
        raise BadInput("\n".join(problems + [str(err)])) from None
    label = variant_label(args.profile, params)
    default = runfolder.default_run_dir(args.profile, label, selected)
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
    why = runfolder.refusal(run, default)
    if why:
        return [f"refusing the run folder: {why}"]
    held = runfolder.complete_run(run)
    if held is None:
        return []
    notebooks = verdicts.selection(held)
    if notebooks == [nb.name for nb in selected]:
        return []
    ran = ", ".join(stages.short(Path(n).stem) for n in notebooks)
    return [f"{run} holds a complete run of notebooks {ran}, which a run of "
            f"{', '.join(stages.short(nb.stem) for nb in selected)} must not replace; "
            f"{runfolder.suggestion(run, default)}"]


def baseline_problems(folder: Path) -> list[str]:
    """Why `--compare-with folder` cannot be compared with: no manifest there, or not a complete run."""
    earlier = rundir.read_manifest(folder)
    if earlier is None:
        return [f"--compare-with {folder}: no manifest.json there (a run folder, or data/results)"]
    if verdicts.outcome(earlier) != "complete":
        return [f"--compare-with {folder}: that run is {verdicts.outcome(earlier)}, not complete"]
    return []


# --- finishing a run -------------------------------------------------------------------------------------------
def rebuilt_engines(run: Path) -> list[str]:
    """A line per engine the run rebuilt because its cached copy was corrupt (the engines table says so too)."""
    from mvlib.tensorrt import table
    return table.rebuilt_lines(run / "results")


def compare(run: Path, manifest: dict, baseline: Path | None, explicit: bool, cache) -> dict:
    """Compare a complete run with its baseline (the complete run it replaced, or --compare-with) when like with
    like, or say why not; the manifest's `rerun` record."""
    info = rerun.summary(cache) | {"compared_with": None, "not_compared": "no earlier complete run", "caveats": []}
    earlier = rundir.read_manifest(baseline) if baseline is not None else None
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


def finish(plan: Plan, staging: Path, failures: list[dict], before: dict, args: argparse.Namespace,
           state: dict) -> int:
    """Record how the run went; promote it to the run folder when complete, compare it, publish if asked; end with
    where the time went."""
    manifest = rundir.manifest(staging)
    kernels.record_failures(manifest, failures)
    record_timing(manifest, state)
    cache = rerun.cache_use(before, rerun.snapshot())
    io.write_csv(staging / "results" / rerun.CACHE_TABLE, cache)
    print_stages(manifest, staging)
    problems = run_problems(manifest, plan, failures)
    if problems:
        code = keep_failed(plan, staging, manifest, cache, problems, failures)
    else:
        code = complete(plan, staging, manifest, cache, args)
    print(verdicts.timing_lines(manifest))
    return code


def record_timing(manifest: dict, state: dict) -> None:
    """The run's wall seconds in its manifest, beside the stages' own: each notebook's (the one running when the run
    stopped too) and the run's total so far."""
    books = dict(state.get("seconds") or {})
    if state.get("notebook"):
        books[state["notebook"]] = round(time.perf_counter() - state["start"], 1)
    manifest["timing"] = {"total_s": round(time.perf_counter() - state["began"], 1), "notebooks_s": books}
    for child in verdicts.CHILDREN:  # each child's seconds, and how long the run waited for it
        if state.get(child):
            manifest["timing"][child] = state[child]


def print_stages(manifest: dict, run: Path) -> None:
    """Each stage's status, engines rebuilt from a corrupt cache, and skips the selection caused."""
    print("stages:\n" + verdicts.summary(manifest))
    for line in rebuilt_engines(run):
        print(line)
    left_out = verdicts.selection_skips(manifest)
    if left_out:
        print("not counted against the tier (--only left out the notebook that makes their input):\n  "
              + "\n  ".join(left_out))


def run_problems(manifest: dict, plan: Plan, failures: list[dict]) -> list[str]:
    """Why the run is not complete: stages that failed or were skipped below its tier, notebooks not run."""
    problems = verdicts.stage_problems(manifest, plan.tier)
    ran = {f["notebook"] for f in failures} | {k.split("/")[0] for k in manifest.get("params", {})}
    not_run = [nb.stem for nb in plan.selected if nb.stem not in ran]
    return problems + ([f"not run after the failure: {', '.join(not_run)}"] if not_run else [])


def keep_failed(plan: Plan, staging: Path, manifest: dict, cache, problems: list[str], failures: list[dict]) -> int:
    """Record the failure in `<run>.incomplete`, which stays; the last complete run is untouched. Exit code 1."""
    manifest["outcome"] = {"status": "failed", "problems": problems, "failed": failures}
    manifest["rerun"] = rerun.summary(cache) | {"compared_with": None, "not_compared": "this run did not complete"}
    rundir.write_manifest(staging, manifest)
    print(rerun.artifacts_line(manifest["rerun"]))
    kept = f"; the last complete run is still {plan.run}" if runfolder.complete_run(plan.run) else ""
    print("study: the run did not reach its tier:\n  " + "\n  ".join(problems)
          + f"\nthis run is kept in {staging}{kept}", file=sys.stderr)
    return FAILED


def complete(plan: Plan, staging: Path, manifest: dict, cache, args: argparse.Namespace) -> int:
    """Promote the complete run, compare it with its baseline, publish it if asked (else say how). Exit code 0."""
    manifest["outcome"] = {"status": "complete"}
    replaced = runfolder.complete_run(plan.run) is not None
    rundir.write_manifest(staging, manifest)
    previous = runfolder.promote(plan.run, staging)
    baseline = plan.compare_with or (previous if replaced else None)
    manifest["rerun"] = compare(plan.run, manifest, baseline, plan.compare_with is not None, cache)
    rundir.write_manifest(plan.run, manifest)
    print(rerun.artifacts_line(manifest["rerun"]))
    print(rerun.comparison_line(manifest["rerun"]))
    print(f"study: complete: {plan.run}" + (f" (the run it replaced: {previous})" if previous else ""))
    if args.publish == "yes" or args.publish_over:
        publish(plan.run, plan.label)
    elif hint := publish_hint(plan.run, manifest, plan.machine):
        print(hint)
    return OK


NOT_STARTED = "before any notebook ran; nothing was written"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises KeyboardInterrupt so the run ends the same way."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminated(signum: int, frame) -> None:
    logging.disable(logging.CRITICAL)  # what the libraries log while the kernels die is not for the console
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)


@contextlib.contextmanager
def stops_as_ctrl_c():
    """For the block, Ctrl-C, SIGTERM and SIGHUP end the run alike, with the libraries' logging off from then on
    (nbclient's "Kernel died", asyncio's "Task exception was never retrieved"); one inherited as ignored stays so."""
    old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s, handler in old.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, _terminated)
    try:
        yield
    finally:
        gc.collect()  # an interrupted run's tasks log as they are collected: while logging is still off
        logging.disable(logging.NOTSET)
        for s, handler in old.items():
            signal.signal(s, handler)


def stop_code(stop: KeyboardInterrupt) -> int:
    """The exit code for a stop: 130 for Ctrl-C, 128 + the signal's number for SIGTERM (143) and SIGHUP (129)."""
    return 128 + stop.signum if isinstance(stop, Terminated) else INTERRUPTED


def stop_word(stop: KeyboardInterrupt) -> str:
    """'interrupted' (Ctrl-C), 'terminated (SIGTERM)', 'hung up (SIGHUP)'."""
    if not isinstance(stop, Terminated):
        return "interrupted"
    return ("hung up" if stop.signum == signal.SIGHUP else "terminated") + f" ({signal.Signals(stop.signum).name})"


def say(line: str) -> None:
    """One line on stderr; a closed terminal (SIGHUP) must not turn it into a traceback."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def interrupted(plan: Plan, staging: Path | None, state: dict, stop: KeyboardInterrupt) -> int:
    """Stop the kernels (and what they started), record the interruption, and say so in one line; exit code 130
    (Ctrl-C), 143 (SIGTERM) or 129 (SIGHUP)."""
    handlers = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}  # a second one must not cut the record
    try:
        kernels.stop_kernels()
        say("\nstudy: " + record_interruption(plan, staging, state, stop))
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return stop_code(stop)


def record_interruption(plan: Plan, staging: Path | None, state: dict, stop: KeyboardInterrupt) -> str:
    """Write the interruption into this run's manifest (None: its folder was not opened yet); the line that says
    where it stopped and what is kept."""
    where = state.get("notebook")
    seconds = time.perf_counter() - state.get("start", time.perf_counter())
    word = stop_word(stop)
    if staging is None:  # before this run's folder existed: an older incomplete run is not this one
        return f"{word} {NOT_STARTED}"
    if not staging.exists():  # stopped after the run was complete and in place
        return f"{word} after the run was complete; it is {plan.run}"
    manifest = rundir.manifest(staging)
    record_timing(manifest, state)
    manifest["outcome"] = {"status": "interrupted", "notebook": where, "after_s": round(seconds, 1),
                           "signal": signal.Signals(getattr(stop, "signum", signal.SIGINT)).name,
                           "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    rundir.write_manifest(staging, manifest)
    kept = f"; the last complete run is still {plan.run}" if runfolder.complete_run(plan.run) else ""
    return f"{word}{f' in {where} after {seconds:.0f} s' if where else ''}; this run is kept in {staging}{kept}"


def out_of_space(plan: Plan, staging: Path | None, state: dict, err: OSError) -> int:
    """A full disk in one line, recorded in the run's manifest where space allows; exit code 1."""
    line = io.disk_line(err)
    kept = f"; the last complete run is still {plan.run}" if runfolder.complete_run(plan.run) else ""
    if staging is None or not staging.exists():
        say(f"study: {line}; free space there or pass --run-dir a folder on another disk{kept}")
        return FAILED
    try:
        manifest = rundir.manifest(staging)
        record_timing(manifest, state)
        manifest["outcome"] = {"status": "failed", "problems": [line], "notebook": state.get("notebook")}
        rundir.write_manifest(staging, manifest)
        recorded = ""
    except (OSError, ValueError):  # the manifest's own write needs space too; the one before it is whole
        recorded = " (no space to record it in its manifest either)"
    say(f"study: {line}; this run is kept in {staging}{recorded}{kept}; free space there or pass --run-dir a folder "
        "on another disk")
    return FAILED


def run_study(plan: Plan, args: argparse.Namespace) -> int:
    """Run the planned notebooks into `<run>.incomplete` and finish, holding the run folder's lock; the exit code.

    A second driver for the same run folder is refused at once, naming the one at work (its lock dies with it)."""
    try:
        with io.lock(runfolder.lock_of(plan.run), f"python -m mvlib.study --profile {args.profile} writing "
                     f"{runfolder.incomplete_of(plan.run)}", wait=False):
            return run_locked(plan, args)
    except io.Busy as busy:
        say(f"study: {plan.run} is being written by another study ({busy.holder or 'its lock: ' + str(busy.path)}); "
            f"wait for it to end, or pass --run-dir another folder\n(nothing was run or written)")
        return BAD_INPUT
    except OSError as err:  # no space even for the lock file, or a folder nobody can write
        if io.disk_full(err):
            return out_of_space(plan, None, {}, err)
        lock = runfolder.lock_of(plan.run)
        if err.filename is None or Path(err.filename) not in (lock, *lock.parents):
            raise
        say(f"study: cannot write beside the run folder {plan.run} ({err.strerror}: {err.filename}); pass "
            "--run-dir a folder you can write\n(nothing was run or written)")
        return BAD_INPUT


def run_locked(plan: Plan, args: argparse.Namespace) -> int:
    """The run itself, its folder locked: notebooks, finish, or how it stopped (interrupted, a full disk)."""
    expose_tensorrt_libraries(plan.tensorrt)
    info = {"profile": args.profile, "expected_tier": plan.tier, "params": plan.params, "weights": plan.weights,
            "tensorrt": plan.tensorrt, "notebooks": [nb.name for nb in plan.selected], "folder": plan.run.name}
    state: dict = {"notebook": None, "began": time.perf_counter(), "seconds": {}}
    staging = None
    try:
        before = rerun.snapshot()
        staging = runfolder.open_incomplete(plan.run, plan.have, info)
        tensorrt = plan.tensorrt.get("label") or "none"
        print(f"study: profile {args.profile}, expected tier {plan.tier} (machine: {plan.have}), TensorRT {tensorrt}"
              + (f" for {plan.tensorrt['trt_target']}" if plan.tensorrt.get("trt_target") else "")
              + f"; writing {staging}, which becomes {plan.run} once complete")
        failures = kernels.execute(plan.selected, plan.params, staging, args, state,
                                   compile_ahead=ahead.wanted(plan.have), calibrate_ahead=calibrate.wanted())
        return finish(plan, staging, failures, before, args, state)
    except KeyboardInterrupt as stop:
        return interrupted(plan, staging, state, stop)
    except OSError as err:
        if not io.disk_full(err):
            raise
        kernels.stop_kernels()
        return out_of_space(plan, staging, state, err)


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
    with stops_as_ctrl_c():
        try:
            plan = check_inputs(args)
        except BadInput as err:
            print("study: " + str(err).replace("\n", "\nstudy: ") + "\n(nothing was run or written)",
                  file=sys.stderr)
            return BAD_INPUT
        except KeyboardInterrupt as stop:
            say(f"\nstudy: {stop_word(stop)} {NOT_STARTED}")
            return stop_code(stop)
        return run_study(plan, args)


if __name__ == "__main__":
    sys.exit(main())
