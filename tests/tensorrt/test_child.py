"""The build child (mvlib.tensorrt.child), run in this process on small real models with the installed builder."""
import json
from pathlib import Path

import pytest
import tensorrt_models as models

from mvlib import io
from mvlib.tensorrt import cache, child, flavours, layers

HAS_BUILDER, BUILDER = flavours.builder_status()
pytestmark = pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")


def spec(tmp_path, onnx_path, runs_here=(False, "no GPU in this test")) -> dict:
    """A build spec as cache.build writes it (the input as models.conv makes it)."""
    out = tmp_path / "engine"
    out.mkdir()
    return {"onnx": str(onnx_path), "flavour": flavours.select().name, "target": "sm86", "profile": [1, 2, 4],
            "workspace_gb": 1.0, "input": "input", "shape": [-1, 8, 16, 16], "runs_here": list(runs_here),
            "plugins": [], "out": str(out), "timing_cache": None}


def test_an_engine_that_cannot_be_inspected_is_still_built(tmp_path):
    """Where the flavour should run but deserialization fails (here: the real runtime without a driver,
    as on an old driver or a wrong GPU), the build is kept and its layers say `not inspected: <why>`."""
    s = spec(tmp_path, models.conv(tmp_path / "model.onnx"), runs_here=(True, ""))
    result = child.build(s)
    assert result["ok"] is True and (tmp_path / "engine" / cache.PLAN).stat().st_size > 1000
    assert result["inspected"].startswith("not inspected: RuntimeError:") and "deserialize" in result["inspected"]
    saved = io.read_json(tmp_path / "engine" / cache.LAYERS)
    assert saved["inspected"] == result["inspected"] and len(saved["network"]) == result["network_layers"]


def test_the_builder_says_what_precision_the_convolution_got(tmp_path):
    """'What INT8 means': the builder's own layer listing, not the file name, says INT8 or not."""
    int8 = child.build(spec(tmp_path, models.conv(tmp_path / "int8.onnx", int8=True)))
    assert int8["ok"] and int8["compute_precision"] == "conv: 1 INT8"
    saved = io.read_json(tmp_path / "engine" / cache.LAYERS)["builder_layers"]
    conv = next(layer for layer in saved if layers.math_precision(layer))
    assert conv["LayerType"] == "correlation" and "[ONNX Layer: conv0]" in conv["Metadata"]
    assert [t["Datatype"] for t in conv["Inputs"]] == ["Int8"] and conv["Constants"][0]["Datatype"] == "Int8"
    (tmp_path / "fp").mkdir()
    fp32 = child.build(spec(tmp_path / "fp", models.conv(tmp_path / "fp32.onnx")))
    assert fp32["compute_precision"] == "conv: 1 FP32" and layers.int8_math(fp32["compute_precision"]) == 0


def test_the_child_reports_a_refusal_and_counts_repeats(tmp_path):
    s = spec(tmp_path, tmp_path / "missing.onnx")
    spec_path, result_path = tmp_path / "spec.json", tmp_path / "result.json"
    spec_path.write_text(json.dumps(s))
    assert child.main(str(spec_path), str(result_path)) == 1
    result = json.loads(result_path.read_text())
    assert result["ok"] is False and result["messages"]
    assert child.counted(["a", "b", "a", "a"]) == ["a (x3)", "b"]


KILLED_PARENT = """
import sys
from pathlib import Path
from mvlib import paths
from mvlib.tensorrt import cache, flavours, shapes
paths.ENGINES = Path(sys.argv[2])
cache.build_engine(sys.argv[1], shapes.Profile(1, 2, 4), flavours.select(), "sm86", workspace_gb=1)
"""


def _children(parent: int) -> list[int]:
    """Processes whose parent is `parent` and whose command line is a `python -m mvlib.tensorrt build`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"mvlib.tensorrt" in cmd and b"build" in cmd:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie no init reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_build_child_dies_with_its_killed_parent_and_prune_removes_what_it_left(tmp_path, xxs):
    """`kill -9` of the process that started a real TensorRT-RTX build: the build child ends too, before writing
    any engine (PR_SET_PDEATHSIG, or it finds its parent gone at start), and `cache --prune` removes the folder
    it left (temporary spec/result files, no build record), while a folder that is not the study's stays."""
    import os
    import signal
    import subprocess
    import sys
    import time
    engines = tmp_path / "engines"
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, str(xxs[0].onnx), str(engines)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # the child appears once the parent has imported the study (seconds)
            kids = _children(parent.pid)
            if kids or parent.poll() is not None:
                break
            time.sleep(0.05)
        assert kids, f"no build child appeared (parent exit {parent.returncode})"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        for _ in range(1200):
            if not _alive(kids[0]):
                break
            time.sleep(0.05)
        assert not _alive(kids[0]), "the build child outlived its killed parent"
    finally:
        for pid in [parent.pid, *_children(parent.pid)]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    entry, = [d for d in engines.iterdir() if d.is_dir() and d.name != cache.TIMING_DIR]
    left = sorted(f.name for f in entry.iterdir())
    assert cache.PLAN not in left and cache.BUILD_INFO not in left, left  # killed before it built anything
    assert any(cache.LEFTOVER.fullmatch(f) and f.startswith(".spec.json.") for f in left), left
    foreign = engines / "someone-elses"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not the study's")
    text = cache.report(prune=True, root=engines)
    assert not entry.exists() and foreign.exists() and "removed (interrupted" in text
    assert text.splitlines()[0].endswith(": 1 entries, 0.0 MiB (1 removed, 0.0 MiB freed)")
