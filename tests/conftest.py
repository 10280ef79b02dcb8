"""Shared fixtures: an isolated build folder, a small exported model, and one smoke run of the study."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# MVLIB_TEST_BUILD moves it: `make test-floors` tests other versions of the dependencies in a folder of their own
TEST_BUILD = Path(os.environ.get("MVLIB_TEST_BUILD") or ROOT / "build" / "tests").resolve()
# Tests always build into their own folder, whatever MVLIB_BUILD says: an exported one (a user's study build) must
# be neither reused nor clobbered. Set, not defaulted: mvlib.paths reads it at import, and child processes (the
# driver, papermill kernels, engine builds) inherit it.
os.environ["MVLIB_BUILD"] = str(TEST_BUILD)
os.environ["MVLIB_OFFLINE"] = "1"  # tests use seeded random weights unless a test says otherwise
# The smoke run goes on in the background on the cores the tests use. OpenMP threads (PyTorch's libgomp) spin while
# they wait, by default, burning the cores the other side needs: waiting passively took the smoke run from 149-160 s
# to 134 s and tests beside it from 200-203 s to 182-191 s on 2 cores (docs/findings.md; alone, PyTorch is slower
# waiting passively, so the study does not set it). Set before any import of torch (libgomp reads it once); the
# children inherit it; a value of the user's is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_early = sys.modules.get("mvlib.paths")  # imported before this file ran: it read the environment too early
if _early is not None and _early.BUILD != TEST_BUILD:
    raise pytest.UsageError(f"mvlib.paths was imported before tests/conftest.py and builds into {_early.BUILD}; "
                            "run the tests with `python -m pytest`, not from a process that imported mvlib")

SMOKE_FIXTURE = "smoke_run"
TWICE_FIXTURE = "twice_run"  # tests/test_notebooks.py: made in the background after the smoke run


def uses(item, fixture: str) -> bool:
    """Whether a collected test uses `fixture` (directly or through another fixture)."""
    return fixture in getattr(item, "fixturenames", ())


def needs_smoke(item) -> bool:
    """Whether a collected test uses the smoke_run fixture."""
    return uses(item, SMOKE_FIXTURE)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marks
def pytest_collection_modifyitems(config, items):
    """Every test that needs the end-to-end smoke run is `slow` (`make test-fast` leaves them out), and runs last:
    the run goes on in the background meanwhile."""
    for item in items:
        if needs_smoke(item):
            item.add_marker(pytest.mark.slow)
    items.sort(key=needs_smoke)  # stable: the order is kept otherwise


def pytest_collection_finish(session):
    """Start the smoke run as soon as the tests are chosen, if any of them needs it (the fixture waits for it)."""
    if session.config.option.collectonly or not any(map(needs_smoke, session.items)):
        return
    import shutil

    import smoke

    from mvlib.driver import runfolder
    for old in (smoke.RUN, runfolder.incomplete_of(smoke.RUN), runfolder.previous_of(smoke.RUN)):
        shutil.rmtree(old, ignore_errors=True)  # the last session's run: this one must be made now, not compared
    smoke.BUILD.mkdir(parents=True, exist_ok=True)
    log = open(smoke.BUILD / "run.log", "w")  # noqa: SIM115 (closed by the fixture)
    # the smoke run, then the twice-run where a test asks for it (tests/helpers/background.py): both beside the
    # fast tests, so the twice-run takes the core the smoke run leaves instead of running after every test
    twice = ["--twice"] if any(uses(item, TWICE_FIXTURE) for item in session.items) else []
    session.config.stash[_SMOKE] = (subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "helpers" / "background.py"), str(smoke.RUN), *twice],
        cwd=ROOT, env={**os.environ, "MVLIB_BUILD": str(smoke.BUILD)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True), log)


def pytest_sessionfinish(session):
    """An interrupted or failed session stops the smoke run and the notebook kernels it started."""
    proc, log = session.config.stash.get(_SMOKE, (None, None))
    if proc is not None and proc.poll() is None:
        import signal
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    if log is not None:
        log.close()


_SMOKE = pytest.StashKey[tuple]()


UNKNOWN_PRECISION = "no-such-precision"  # obviously no precision of mvlib.precisions


@pytest.fixture
def unknown_precision() -> str:
    """The one test value for an unknown precision: obviously not a real one (bf16 could become one)."""
    return UNKNOWN_PRECISION


@pytest.fixture(scope="session")
def xxs():
    """mobilevit_xxs with seeded random weights, exported once per session: (Exported, torch model)."""
    from mvlib import export
    return export.ensure_exported("mobilevit_xxs", "random", 256, 17, seed=0)


@pytest.fixture(scope="session")
def smoke_run(request):
    """Every notebook run once with the smoke profile through the papermill driver (started at collection, in its
    own build folder, smoke.BUILD); the run folder. Waits for the whole background job (the twice-run too, where
    one was asked for): the tests that read the smoke run also read or copy its build folder."""
    import smoke
    proc, log = request.config.stash[_SMOKE]
    try:
        proc.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the smoke study (and the twice-run) ran past 30 min; see {log.name}")
    if proc.returncode != 0:
        log.flush()
        pytest.fail(f"smoke study failed ({proc.returncode}):\n{Path(log.name).read_text()[-12000:]}")
    return smoke.RUN
