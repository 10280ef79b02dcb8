"""Shared fixtures: an isolated build folder, a small exported model, and one smoke run of the study."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Tests build into their own folder so they never reuse or clobber a user's study artifacts.
os.environ.setdefault("MVLIB_BUILD", str(ROOT / "build" / "tests"))
os.environ.setdefault("MVLIB_OFFLINE", "1")  # tests use seeded random weights unless a test says otherwise


@pytest.fixture(scope="session")
def xxs():
    """mobilevit_xxs with seeded random weights, exported once per session: (Exported, torch model)."""
    from mvlib import export
    return export.ensure_exported("mobilevit_xxs", "random", 256, 17, seed=0)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """Run every notebook once with the smoke profile through the papermill driver; the run folder."""
    run = tmp_path_factory.mktemp("smoke") / "run"
    proc = subprocess.run([sys.executable, "-m", "mvlib.study", "--profile", "smoke", "--tier", "cpu",
                           "--run-dir", str(run), "--publish", "no"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0:
        pytest.fail(f"smoke study failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return run
