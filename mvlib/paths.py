"""Every path the study uses, derived from the package's location (the one paths module).

Serves: notebooks 01 to 06 and the driver (every path).
"""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
DATA = ROOT / "data"
IMAGES = DATA / "images"
RESULTS = DATA / "results"  # committed tables of the published run
FIGURES = ROOT / "figures"  # committed figures of the published run
PLUGIN_SRC = ROOT / "silu_plugin"
PROFILES = Path(__file__).resolve().parent / "profiles"
# Generated, heavy and ignored by git; MVLIB_BUILD moves it (e.g. to a scratch disk).
BUILD = Path(os.environ.get("MVLIB_BUILD", ROOT / "build")).resolve()
MODELS = BUILD / "models"
ENGINES = BUILD / "engines"
PLUGIN_BUILD = BUILD / "silu_plugin"
RUNS = BUILD / "runs"
CACHE = BUILD / "cache"


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default this process's) for a process the study starts (a notebook's kernel, a child working ahead):
    MVLIB_BUILD made absolute, as kernels start in notebooks/ where a relative one names another folder, and this
    checkout first on PYTHONPATH, so an existing environment that never installed mvlib still imports it."""
    env = dict(os.environ if env is None else env)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    return env | {"MVLIB_BUILD": str(BUILD), "PYTHONPATH": os.pathsep.join([str(ROOT), *rest])}


def run_dir(name: str = "") -> Path:
    """Folder of one study run (manifest, executed notebooks, tables, figures); default `build/runs/latest`."""
    return Path(name).resolve() if name else RUNS / "latest"


def model_dir(variant: str, weights_tag: str, img_size: int, opset: int) -> Path:
    """Folder of the ONNX files derived from one exported model, keyed by what made them."""
    return MODELS / f"{variant}_{weights_tag}_s{img_size}_op{opset}"
