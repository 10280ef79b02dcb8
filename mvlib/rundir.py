"""A run folder itself: the marker that says the study made it, claiming one, its manifest (read, written, made new)
and the configuration its notebooks must share; the notebooks' `Run` and the driver both use it.

Serves: notebooks 01 to 06 (through mvlib.run) and the driver (every run folder).
"""
import datetime as _dt
import shutil
from pathlib import Path

from mvlib import env, io
from mvlib.tensorrt import flavours

# A study run folder is one the study made: it holds this marker, written first, and only into a folder the study
# created (absent or empty before). The driver moves aside or replaces only such folders (mvlib.driver.runfolder).
MARKER = ".mvlib-run"
MARKER_TEXT = ("This folder was made by mvlib (python -m mvlib.study, or a notebook's Run). The study may move it to\n"
               "<folder>.previous and later delete it. Remove this file to keep the study from touching the folder.\n")
MANIFEST = "manifest.json"
# What a run folder of the study holds at its top level (runs made before the marker existed are recognised by it).
RUN_ENTRIES = {MARKER, MANIFEST, "notebooks", "results", "figures", "logs"}

# The parameters that make a run's configuration: a run folder holds notebooks that agree on all of them (a notebook
# run alone with other values starts a fresh folder), so its tables and figures describe one model and one build.
CONFIGURATION = ("variant", "weights", "seed", "img_size", "opset", "batch_min", "batch_opt", "batch_max",
                 "workspace_gb", "trt_flavour", "trt_target", "fp8_target")


def read_manifest(folder: Path) -> dict | None:
    """A folder's manifest.json, or None where it has none (or one that does not parse)."""
    try:
        found = io.read_json(folder / MANIFEST)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def manifest(folder: Path) -> dict:
    """The manifest of the run in `folder`, which has one (OSError or ValueError where it has none that parses)."""
    return io.read_json(folder / MANIFEST)


def write_manifest(folder: Path, content: dict) -> Path:
    """Write `content` as the manifest of the run in `folder` (atomically: a reader sees the old or the new one)."""
    return io.write_json(folder / MANIFEST, content)


def is_study_run(folder: Path) -> bool:
    """Whether the study made `folder`: it holds the marker (or, from before the marker, only a run's entries)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if (folder / MARKER).is_file():
        return True
    names = {p.name for p in folder.iterdir()}
    if MANIFEST not in names or not names <= RUN_ENTRIES:
        return False
    found = read_manifest(folder)
    return found is not None and {"stages", "params"} <= set(found)


def claim(folder: Path) -> Path:
    """Create `folder` for a run; mark it as the study's only if it was absent or empty (never a user's folder)."""
    fresh = not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))
    folder.mkdir(parents=True, exist_ok=True)
    if fresh:
        io.write_text(folder / MARKER, MARKER_TEXT)
    return folder


def mismatches(content: dict, params: dict) -> list[str]:
    """"variant='mobilevit_s' (01_export ran with 'mobilevit_xxs')" for each configuration parameter where
    `params` differ from what a notebook already in the run (manifest `content`) was given."""
    out = []
    for nb, given in sorted((content.get("params") or {}).items()):
        out += [f"{k}={params[k]!r} ({nb} ran with {given[k]!r})" for k in CONFIGURATION
                if isinstance(given, dict) and k in params and k in given and given[k] != params[k]]
    return out


def fresh_for(folder: Path, params: dict) -> Path:
    """`folder` for a notebook given `params`; a run of another configuration there is first set aside as
    `<folder>.previous` (replacing one the study made), and the notebook says so."""
    if not is_study_run(folder):
        return folder
    found = read_manifest(folder)
    wrong = mismatches(found, params) if found is not None else []
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


def tensorrt_choice(params: dict, content: dict) -> tuple[str, str]:
    """The run's TensorRT flavour and target: the notebook's parameters, else the driver's decision (in manifest
    `content`), else what the run's other notebooks were given, else 'auto'.

    The tier follows it (mvlib.tiers.detect): trt_flavour='tensorrt_rtx' on a GPU only full TensorRT runs is tier gpu.
    """
    decided = (content.get("run") or {}).get("tensorrt") or {}
    given = [p for p in (content.get("params") or {}).values() if isinstance(p, dict)]
    return tuple(str(params.get(k) or decided.get(k) or next((p[k] for p in given if p.get(k)), "auto"))
                 for k in ("trt_flavour", "trt_target"))


def new_manifest(tier: str, tier_limits: dict[str, str]) -> dict:
    """A run's manifest before any stage: machine facts, versions, no weights yet; `tier_limits` says why the
    machine does not reach each tier with the run's TensorRT flavour and target (tiers.limits)."""
    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tier": tier, "tier_limits": tier_limits,
            "machine": env.machine(), "gpu": env.gpu_info(), "versions": {**env.versions(), **flavours.versions()},
            "weights": None, "params": {}, "stages": {}}
