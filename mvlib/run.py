"""A notebook's part of a study run: its parameters, stage statuses, tables and figure footers, kept in the run
folder and its manifest (mvlib.rundir).

Serves: notebooks 01 to 06 (each makes a Run in its first code cell).
"""
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mvlib import io, paths, rundir, stages, tiers
from mvlib.skips import StageSkipped


def as_decided(manifest: dict, weights: dict) -> dict:
    """A notebook's weights description, marked as a fallback where the driver's 'auto' fell back to random weights.

    The driver hands every notebook the concrete choice ('random'); figure footers and the manifest still say
    that it was a fallback from pretrained, and why.
    """
    decided = (manifest.get("run") or {}).get("weights") or {}
    if not decided.get("fallback") or (weights or {}).get("source") != "random" or "fallback_reason" in weights:
        return weights
    return weights | {"label": decided["label"], "fallback_reason": decided["reason"]}


def recorded_parameters(notebook: str, names: dict) -> dict:
    """The values of a notebook's parameters, picked from `names` (its globals()) by its parameters cell.

    Notebooks pass globals() so the parameters are written once, in the parameters cell, and the manifest
    records what papermill injected. For a name-less interactive run, `names` is taken as given.
    """
    declared = stages.parameter_names(notebook)
    if declared is None:
        return dict(names)
    return {k: names[k] for k in declared if k in names and k != "run_dir"}


class Run:
    """Context of one notebook inside one run; every notebook opens it in its first code cell."""

    def __init__(self, run_dir: str | Path = "", notebook: str = "interactive", params: dict | None = None):
        given = dict(params or {})
        params = recorded_parameters(notebook, given)
        self.dir = rundir.claim(rundir.fresh_for(paths.run_dir(str(run_dir)), params))
        self.notebook = notebook
        self.manifest_path = self.dir / rundir.MANIFEST
        self.trt = rundir.tensorrt_choice(given, self.manifest() if self.manifest_path.exists() else {})
        self.tier = tiers.detect(*self.trt)
        self.figures = self.dir / "figures"
        self.results = self.dir / "results"
        for d in (self.figures, self.results):
            d.mkdir(parents=True, exist_ok=True)
        self._update(lambda m: m.setdefault("params", {}).__setitem__(notebook, params or {}))
        print(f"run {self.dir} | notebook {notebook} | tier {self.tier}"
              + (f" ({tiers.missing_for('trt', *self.trt)})" if self.tier != "trt" else ""))

    # manifest -------------------------------------------------------------
    def manifest(self) -> dict:
        """The manifest as it stands (created with machine facts on first use)."""
        if self.manifest_path.exists():
            return rundir.manifest(self.dir)
        return rundir.new_manifest(self.tier, tiers.limits(*self.trt))

    def _update(self, fn: Callable[[dict], Any]) -> None:
        manifest = self.manifest()
        fn(manifest)
        rundir.write_manifest(self.dir, manifest)

    def set(self, key: str, value: Any) -> None:
        """Store a top-level manifest entry (e.g. the weights the run used, as the driver decided them)."""
        self._update(lambda m: m.__setitem__(key, as_decided(m, value) if key == "weights" else value))

    def record(self, name: str, tier: str, status: str, reason: str = "", **details: Any) -> None:
        """Record one stage's outcome under `<notebook>/<name>`."""
        if tier != tiers.BUILDER:
            tiers.rank(tier)
        entry = {"tier": tier, "status": status, "reason": reason, **details}
        self._update(lambda m: m["stages"].__setitem__(f"{self.notebook}/{name}", entry))

    def stage(self, name: str, tier: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn` if this machine reaches `tier`, else record and print why it was skipped; None when skipped."""
        # a build stage says itself when there is no builder (flavours.NoBuilder)
        missing = "" if tier == tiers.BUILDER else tiers.missing_for(tier, *self.trt)
        if missing:
            print(f"[{name}] skipped: {missing}")
            self.record(name, tier, "skipped", missing)
            return None
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except StageSkipped as why:
            print(f"[{name}] skipped: {why}")
            needs = list(why.needs)  # artifact names; mvlib.stages says which notebook makes each
            marks = {m: True for m in tiers.MACHINE_LACKS if getattr(why, m, False)}
            self.record(name, tier, "skipped", str(why), **({"needs": needs} if needs else {}), **marks)
            return None
        except BaseException as err:
            self.record(name, tier, "failed", f"{type(err).__name__}: {err}",
                        traceback=traceback.format_exc(limit=5))
            raise
        self.record(name, tier, "ok", seconds=round(time.perf_counter() - start, 3))
        return result

    # outputs --------------------------------------------------------------
    def table(self, name: str) -> Path:
        """Path of a results table of this run."""
        return self.results / name

    def figure(self, name: str) -> Path:
        """Path of a figure of this run."""
        return self.figures / name

    def footer_text(self) -> str:
        """What every figure says about where it came from: GPU, tier, weights."""
        m = self.manifest()
        machine = m["machine"]
        gpu = (m.get("gpu") or {}).get("gpu") or f"no GPU ({machine.get('host_cpu')}, {machine.get('cores')} cores)"
        weights = (m.get("weights") or {}).get("label", "weights not recorded")
        # the driver runs in <run>.incomplete and renames it to <run> once complete: name the run, not the stage
        name = (m.get("run") or {}).get("folder") or self.dir.name
        return f"{gpu} | tier {m.get('tier')} | {weights} | run {name} {m.get('created', '')[:10]}"

    def save_figure(self, fig, name: str) -> Path:
        """Add the provenance footer to a figures.new Figure and save it under this run's figures/."""
        from mvlib import figures  # here: matplotlib is slow to import, and a Run that draws nothing needs none
        figures.footer(fig, self.footer_text())
        path = io.save_figure(fig, self.figure(name))
        print(f"figure: {path}")
        return path

    def save_table(self, frame, name: str) -> Path:
        """Save a results table (CSV) under this run's results/."""
        path = io.write_csv(self.table(name), frame)
        print(f"table: {path}")
        return path

    def skip_reason(self, name: str) -> str:
        """Why stage `name` of this notebook was skipped, as recorded ('' if it was not skipped)."""
        entry = self.manifest()["stages"].get(f"{self.notebook}/{name}", {})
        return entry.get("reason", "") if entry.get("status") == "skipped" else ""
