"""What a run's manifest says: stages that fail its tier, skips its notebook selection caused, how it ended.

Serves: the driver (the end of every run, `--compare-with`, publishing).
"""
from pathlib import Path

from mvlib import stages, tiers


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
        return stages.PRODUCERS[need]
    return next((nb.stem for nb in stages.all_notebooks() if stages.short(nb.stem) == need), "")


def skip_note(manifest: dict, stage: dict) -> str:
    """'input made by 04, not selected' for a skip the selection caused, else ''."""
    missing = not_selected(manifest, stage)
    return f"input made by {', '.join(missing)}, not selected" if missing else ""


def stage_problems(manifest: dict, tier: str) -> list[str]:
    """Stages that failed, or that were skipped although the run was expected to reach their tier.

    A skip caused by leaving out the notebook that makes the stage's input (`--only`) is not a problem of the
    tier: `selection_skips` lists those. Nor is a skip that says what the machine lacks (tiers.MACHINE_LACKS: no
    TensorRT builder, no nvcc, a GPU without FP8 tensor cores): the tier is reached, the machine lacks the feature.
    A build stage (tiers.BUILDER) skipped for any other reason fails the run, whatever its tier.
    """
    problems = []
    for name, st in sorted(manifest.get("stages", {}).items()):
        if st["status"] == "failed":
            problems.append(f"{name}: failed: {st['reason']}")
        elif st["status"] != "skipped" or not_selected(manifest, st) or any(st.get(m) for m in tiers.MACHINE_LACKS):
            continue
        elif st["tier"] == tiers.BUILDER:  # engines: any machine with a builder builds them all, whatever its tier
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


def selection(manifest: dict) -> list[str]:
    """The notebooks a run ran (every notebook when its manifest does not say)."""
    return list((manifest.get("run") or {}).get("notebooks") or [nb.name for nb in stages.all_notebooks()])


CHILDREN = {"calibrate_ahead": "calibrating ahead", "compile_ahead": "compiling ahead"}  # the manifest's timing keys


def timing_lines(manifest: dict, n: int = 5) -> str:
    """Where the run's time went: its total and each notebook's wall seconds, then its `n` slowest stages."""
    timing = manifest.get("timing") or {}
    books = timing.get("notebooks_s") or {}
    waits = [f"waited {timing[c]['waited_s']:.0f} s for {what}" for c, what in CHILDREN.items()
             if (timing.get(c) or {}).get("waited_s", 0) >= 1]  # time in the total that no notebook's seconds hold
    parts = [", ".join(f"{stages.short(nb)} {s:.0f} s" for nb, s in books.items())] if books else []
    lines = [f"time: {timing.get('total_s', 0):.0f} s in all"
             + (" (" + "; ".join(parts + waits) + ")" if parts or waits else "")]
    timed = sorted(((st["seconds"], name) for name, st in manifest.get("stages", {}).items()
                    if isinstance(st.get("seconds"), (int, float))), reverse=True)[:n]
    if timed:
        lines += ["slowest stages:"] + [f"  {s:8.1f} s  {name}" for s, name in timed]
    return "\n".join(lines)
