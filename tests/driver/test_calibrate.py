"""Calibrating ahead (mvlib.driver.calibrate): the child makes 04's calibrations from 04's own parameters, under the
keys 04 reuses, starts after the first notebook and is waited for before 04."""
import json
import os
import subprocess
import sys
from pathlib import Path

from mvlib import paths
from mvlib.driver import calibrate, params

STEMS = ["01_export", "02_graph", "03_fp32_fp16", "04_int8", "05_silu_plugin", "06_benchmark"]
BOOKS = [paths.NOTEBOOKS / f"{s}.ipynb" for s in STEMS]


def test_wanted_only_with_cores_to_share_and_not_when_turned_off():
    assert not calibrate.wanted({}, cores=2)
    assert calibrate.wanted({}, cores=calibrate.MIN_CORES) and calibrate.wanted({}, cores=16)
    assert not calibrate.wanted({"MVLIB_CALIBRATE_AHEAD": "0"}, cores=16)


def test_plan_gives_the_child_04s_calibration_parameters_and_nothing_without_04():
    full = params.load_profile("full")
    planned = calibrate.plan(BOOKS, full, Path("r"), enabled=True)
    assert planned.payloads() == [{"params": {k: (params.defaults() | full)[k] for k in calibrate.PARAMS}}]
    assert planned.payloads()[0]["params"]["calib_images"] == 512 and planned.payloads()[0]["params"]["image_dir"] == ""
    assert calibrate.plan(BOOKS, full, Path("r"), enabled=False).payloads() == []
    assert calibrate.plan([b for b in BOOKS if b.stem != "04_int8"], full, Path("r"), enabled=True).payloads() == []
    assert set(calibrate.PARAMS) <= params.declared(paths.NOTEBOOKS / "04_int8.ipynb")  # 04's own names


def test_before_starts_after_the_first_notebook_and_waits_before_04(monkeypatch):
    calls = []
    child = calibrate.plan(BOOKS, params.load_profile("smoke"), Path("r"), enabled=True)
    monkeypatch.setattr(child, "start", lambda: calls.append("start") or child.procs.append(object()))
    monkeypatch.setattr(child, "wait", lambda: calls.append("wait"))
    for stem in STEMS:
        calls.append(stem)
        child.before(stem)
    assert calls == ["01_export", "02_graph", "start", "03_fp32_fp16", "04_int8", "wait", "05_silu_plugin",
                     "06_benchmark"]


def test_the_child_finds_what_notebook_04_made_under_the_same_keys(smoke_run):
    """The smoke run's 04 calibrated in its own build folder; the child, given the smoke profile's parameters,
    computes the same export, images and keys, so it finds every model made (and 04 would find the child's)."""
    import smoke
    payload = {"params": {k: (params.defaults() | params.load_profile("smoke"))[k] for k in calibrate.PARAMS},
               "driver": 0}
    got = subprocess.run([sys.executable, "-m", "mvlib.driver.calibrate"], capture_output=True, text=True,
                         timeout=600, cwd=paths.ROOT,
                         env=dict(os.environ, MVLIB_BUILD=str(smoke.BUILD), MVLIB_CALIBRATE=json.dumps(payload)))
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    rows = json.loads(got.stdout.strip().splitlines()[-1])["calibrations"]
    assert len(rows) == 2 * 2 * 2 and {r["status"] for r in rows} == {"reused"}, got.stdout[-3000:]
    assert "made " not in got.stdout


def test_the_manifest_gets_the_rows_the_child_printed_last(tmp_path):
    log = tmp_path / "calibrate_ahead.log"
    assert calibrate.calibrations(log) == []  # no log: the child never started
    rows = [{"file": "model.int8.all.max.onnx", "status": "made", "seconds": 20.4}]
    log.write_text("noise\n" + json.dumps({"calibrations": [{"file": "old"}]}) + "\n"
                   + json.dumps({"calibrations": rows}) + "\nTraceback after\n")
    assert calibrate.calibrations(log) == rows
