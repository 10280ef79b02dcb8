"""A study run: its folder (marked as the study's), manifest, stage statuses and figure footers.

Serves: notebooks 01 to 06 (each makes a Run in its first code cell).
"""
import datetime as _dt
import json
import re
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mvlib import env, io, paths, tiers
from mvlib.skips import StageSkipped
from mvlib.tensorrt import flavours

# A study run folder is one the study made: it holds this marker, written first, and only into a folder the study
# created (absent or empty before). The driver moves aside or replaces only such folders (mvlib.study.refusal).
MARKER = ".mvlib-run"
MARKER_TEXT = ("This folder was made by mvlib (python -m mvlib.study, or a notebook's Run). The study may move it to\n"
               "<folder>.previous and later delete it. Remove this file to keep the study from touching the folder.\n")
# What a run folder of the study holds at its top level (runs made before the marker existed are recognised by it).
RUN_ENTRIES = {MARKER, "manifest.json", "notebooks", "results", "figures", "logs"}


def is_study_run(folder: Path) -> bool:
    """Whether the study made `folder`: it holds the marker (or, from before the marker, only a run's entries)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if (folder / MARKER).is_file():
        return True
    names = {p.name for p in folder.iterdir()}
    if "manifest.json" not in names or not names <= RUN_ENTRIES:
        return False
    try:
        manifest = io.read_json(folder / "manifest.json")
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"stages", "params"} <= set(manifest)


def claim(folder: Path) -> Path:
    """Create `folder` for a run; mark it as the study's only if it was absent or empty (never a user's folder)."""
    fresh = not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))
    folder.mkdir(parents=True, exist_ok=True)
    if fresh:
        io.write_text(folder / MARKER, MARKER_TEXT)
    return folder


# The parameters that make a run's configuration: a run folder holds notebooks that agree on all of them (a notebook
# run alone with other values starts a fresh folder), so its tables and figures describe one model and one build.
CONFIGURATION = ("variant", "weights", "seed", "img_size", "opset", "batch_min", "batch_opt", "batch_max",
                 "workspace_gb", "trt_flavour", "trt_target", "fp8_target")


def mismatches(manifest: dict, params: dict) -> list[str]:
    """"variant='mobilevit_s' (01_export ran with 'mobilevit_xxs')" for each configuration parameter where
    `params` differ from what a notebook already in the run was given."""
    out = []
    for nb, given in sorted((manifest.get("params") or {}).items()):
        out += [f"{k}={params[k]!r} ({nb} ran with {given[k]!r})" for k in CONFIGURATION
                if isinstance(given, dict) and k in params and k in given and given[k] != params[k]]
    return out


def fresh_for(folder: Path, params: dict) -> Path:
    """`folder` for a notebook given `params`; a run of another configuration there is first set aside as
    `<folder>.previous` (replacing one the study made), and the notebook says so."""
    if not is_study_run(folder):
        return folder
    try:
        wrong = mismatches(io.read_json(folder / "manifest.json"), params)
    except (OSError, ValueError):
        return folder
    if not wrong:
        return folder
    aside = folder.with_name(folder.name + ".previous")
    if aside.exists() or aside.is_symlink():
        if not is_study_run(aside):
            raise FileExistsError(f"{folder} holds a run of another configuration ({wrong[0]}) and {aside}, where "
                                  "it would be set aside, is not a folder the study made: move it, or pass "
                                  "another run_dir")
        shutil.rmtree(aside)
    folder.rename(aside)
    print(f"run folder {folder} held a run of another configuration: {'; '.join(wrong[:3])}"
          f"{' ...' if len(wrong) > 3 else ''}; that run is now {aside}, and this notebook starts a fresh one")
    return folder


def new_manifest(tier: str, trt: tuple[str, str] = ("auto", "auto")) -> dict:
    """A run's manifest before any stage: machine facts, versions, no weights yet; `trt` is the run's TensorRT
    flavour and target (the tier limits follow them)."""
    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tier": tier, "tier_limits": {t: tiers.missing_for(t, *trt) for t in tiers.TIERS},
            "machine": env.machine(), "gpu": env.gpu_info(), "versions": {**env.versions(), **flavours.versions()},
            "weights": None, "params": {}, "stages": {}}


def as_decided(manifest: dict, weights: dict) -> dict:
    """A notebook's weights description, marked as a fallback where the driver's 'auto' fell back to random weights.

    The driver hands every notebook the concrete choice ('random'); figure footers and the manifest still say
    that it was a fallback from pretrained, and why.
    """
    decided = (manifest.get("run") or {}).get("weights") or {}
    if not decided.get("fallback") or (weights or {}).get("source") != "random" or "fallback_reason" in weights:
        return weights
    return weights | {"label": decided["label"], "fallback_reason": decided["reason"]}


def declared_parameters(notebook: str) -> list[str] | None:
    """Names assigned in the `parameters` cell of notebooks/<notebook>.ipynb (None if there is no such notebook)."""
    path = paths.NOTEBOOKS / f"{notebook}.ipynb"
    if not path.is_file():
        return None
    cells = json.loads(path.read_text())["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    return re.findall(r"^(\w+)\s*=", "".join(cell["source"]), flags=re.M) if cell else []


def tensorrt_choice(params: dict, manifest: dict) -> tuple[str, str]:
    """The run's TensorRT flavour and target: the notebook's parameters, else the driver's decision, else what the
    run's other notebooks were given, else 'auto'.

    The tier follows it (tiers.detect): trt_flavour='tensorrt_rtx' on a GPU only full TensorRT runs is tier gpu.
    """
    decided = (manifest.get("run") or {}).get("tensorrt") or {}
    given = [p for p in (manifest.get("params") or {}).values() if isinstance(p, dict)]
    return tuple(str(params.get(k) or decided.get(k) or next((p[k] for p in given if p.get(k)), "auto"))
                 for k in ("trt_flavour", "trt_target"))


def recorded_parameters(notebook: str, names: dict) -> dict:
    """The values of a notebook's parameters, picked from `names` (its globals()) by its parameters cell.

    Notebooks pass globals() so the parameters are written once, in the parameters cell, and the manifest
    records what papermill injected. For a name-less interactive run, `names` is taken as given.
    """
    declared = declared_parameters(notebook)
    if declared is None:
        return dict(names)
    return {k: names[k] for k in declared if k in names and k != "run_dir"}


class Run:
    """Context of one notebook inside one run; every notebook opens it in its first code cell."""

    def __init__(self, run_dir: str | Path = "", notebook: str = "interactive", params: dict | None = None):
        given = dict(params or {})
        params = recorded_parameters(notebook, given)
        self.dir = claim(fresh_for(paths.run_dir(str(run_dir)), params))
        self.notebook = notebook
        self.manifest_path = self.dir / "manifest.json"
        self.trt = tensorrt_choice(given, self.manifest() if self.manifest_path.exists() else {})
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
            return io.read_json(self.manifest_path)
        return new_manifest(self.tier, self.trt)

    def _update(self, fn: Callable[[dict], Any]) -> None:
        manifest = self.manifest()
        fn(manifest)
        io.write_json(self.manifest_path, manifest)

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
        from mvlib import figures  # here: the driver imports this module and draws nothing (matplotlib is slow)
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
