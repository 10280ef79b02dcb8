"""The build child (mvlib.tensorrt.child), run in this process on small real models with the installed builder."""
import json

import pytest
import tensorrt_models as models

from mvlib import io
from mvlib.tensorrt import cache, child, flavours, layers

HAS_BUILDER, BUILDER = flavours.builder_status()
pytestmark = pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")


def spec(tmp_path, onnx_path) -> dict:
    """A build spec as cache.build writes it."""
    out = tmp_path / "engine"
    out.mkdir()
    return {"onnx": str(onnx_path), "flavour": flavours.select().name, "target": "sm86", "profile": [1, 2, 4],
            "workspace_gb": 1.0, "plugins": [], "out": str(out), "timing_cache": None}


def test_an_engine_that_cannot_be_inspected_is_still_built(tmp_path, monkeypatch):
    """Where the flavour should run but deserialization fails (here: the real runtime without a driver,
    as on an old driver or a wrong GPU), the build is kept and its layers say `not inspected: <why>`."""
    monkeypatch.setattr(flavours.Flavour, "runs_here", lambda self: (True, ""))
    s = spec(tmp_path, models.conv(tmp_path / "model.onnx"))
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
