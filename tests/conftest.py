"""Shared fixtures: an isolated build folder, a small exported model, and one smoke run of the study."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_BUILD = (ROOT / "build" / "tests").resolve()
# Tests always build into their own folder, whatever MVLIB_BUILD says: an exported one (a user's study build) must
# be neither reused nor clobbered. Set, not defaulted: mvlib.paths reads it at import, and child processes (the
# driver, papermill kernels, engine builds) inherit it.
os.environ["MVLIB_BUILD"] = str(TEST_BUILD)
os.environ["MVLIB_OFFLINE"] = "1"  # tests use seeded random weights unless a test says otherwise
_early = sys.modules.get("mvlib.paths")  # imported before this file ran: it read the environment too early
if _early is not None and _early.BUILD != TEST_BUILD:
    raise pytest.UsageError(f"mvlib.paths was imported before tests/conftest.py and builds into {_early.BUILD}; "
                            "run the tests with `python -m pytest`, not from a process that imported mvlib")

SMOKE_FIXTURE = "smoke_run"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marks
def pytest_collection_modifyitems(config, items):
    """Every test that needs the end-to-end smoke run is `slow` (`make test-fast` leaves them out)."""
    for item in items:
        if SMOKE_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


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
                           "--run-dir", str(run)],  # never publishes: that takes --publish (and the full profile)
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0:
        pytest.fail(f"smoke study failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return run
