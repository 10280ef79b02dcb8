"""The test suite's own habits: its build folder is its own, whatever the environment says; smoke tests are slow."""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mvlib import io, paths

ROOT = paths.ROOT
PROBE = "MVLIB_ISOLATION_PROBE"  # set only by test_tests_never_write_into_an_exported_build_folder
TEST_BUILD = Path(os.environ.get("MVLIB_TEST_BUILD") or ROOT / "build" / "tests").resolve()  # as conftest.py


@pytest.mark.skipif(PROBE not in os.environ, reason="a probe that test_tests_never_write_into_an_exported_"
                                                     "build_folder runs in a pytest session of its own")
def test_probe_writes_where_tests_build():
    """Write through mvlib.paths in the test process and in a child process, as the driver and its kernels do."""
    token = os.environ[PROBE]
    io.write_text(paths.BUILD / "isolation" / f"{token}.parent", "x")
    child = f"from mvlib import io, paths; io.write_text(paths.BUILD / 'isolation' / '{token}.child', 'x')"
    subprocess.run([sys.executable, "-c", child], check=True, timeout=300)


def test_tests_never_write_into_an_exported_build_folder(tmp_path):
    """A pytest session started with MVLIB_BUILD pointing at a user's build folder leaves that folder alone; it builds
    into MVLIB_TEST_BUILD where that is set (make test-floors: nothing made by other versions is reused)."""
    users = tmp_path / "my_build"
    (users / "models").mkdir(parents=True)
    (users / "models" / "keep.onnx").write_text("mine")
    token = uuid.uuid4().hex
    floors = tmp_path / "tests-floors"
    env = os.environ | {"MVLIB_BUILD": str(users), "MVLIB_TEST_BUILD": str(floors), PROBE: token}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{Path(__file__).relative_to(ROOT)}::test_probe_writes_where_tests_build"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(str(p.relative_to(users)) for p in users.rglob("*")) == ["models", "models/keep.onnx"]
    written = sorted(str(p.relative_to(floors)) for p in floors.rglob("*"))
    assert written == ["isolation", f"isolation/{token}.child", f"isolation/{token}.parent"]
    assert paths.BUILD == TEST_BUILD  # this session's own, as conftest.py set it


def test_build_folder_is_ignored_by_git():
    out = subprocess.run(["git", "check-ignore", "build/x.onnx"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0


def test_smoke_tests_are_slow_and_make_test_fast_leaves_them_out():
    """A test that uses the smoke_run fixture is marked slow without saying so; `make test-fast` deselects it."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", "not slow", "tests/test_study.py", "tests/test_rerun.py", "tests/test_notebooks.py",
                           "tests/driver/test_verdicts.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = proc.stdout
    assert "test_stage_problems_follow_the_expected_tier" in collected
    assert "test_creates_cells_parse_with_their_conditions" in collected
    for slow in ("test_smoke_run_manifest", "test_notebook_01_smoke_run_exports_and_checks",
                 "test_each_notebook_creates_what_its_creates_cell_lists",
                 "test_second_run_of_the_same_command_reuses_agrees_and_keeps_the_console_quiet"):
        assert slow not in collected, slow
    make = subprocess.run(["make", "-n", "-o", ".venv/.installed", "test-fast"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert make.returncode == 0 and "not slow" in make.stdout, make.stderr


def test_children_get_the_build_folder_absolute_and_this_checkout_first_on_their_path():
    """What the driver hands its kernels and children (paths.child_environment): they start in notebooks/, where a
    relative MVLIB_BUILD names another folder, and an environment that never installed mvlib must still import it."""
    env = {"PYTHONPATH": f"/opt/site{os.pathsep}{ROOT}{os.pathsep}", "MVLIB_BUILD": "relative/build", "HOME": "/home/u"}
    got = paths.child_environment(env)
    assert got["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/opt/site"]
    assert got["MVLIB_BUILD"] == str(paths.BUILD) and Path(got["MVLIB_BUILD"]).is_absolute()
    assert got["HOME"] == "/home/u" and env["MVLIB_BUILD"] == "relative/build"  # the caller's mapping is untouched
    assert paths.child_environment({})["PYTHONPATH"] == str(ROOT)
