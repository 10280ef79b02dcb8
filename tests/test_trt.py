"""The engine path (mvlib.trt) with a real builder: TensorRT-RTX from PyPI builds here on the CPU, ahead of time.

Engines are built for real wherever a builder is installed (CI installs tensorrt-rtx-cu13); running them
needs a GPU the flavour's runtime accepts, and on every other machine the tests check that nothing
claims an engine ran.
"""
import json

import numpy as np
import onnx
import pandas as pd
import pytest

from mvlib import accuracy, env, io, paths, trt
from mvlib.run import StageSkipped

HAS_BUILDER, BUILDER = trt.builder_status()
needs_builder = pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")


@pytest.fixture
def engines_dir(tmp_path, monkeypatch):
    """An empty engine cache for one test."""
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    return paths.ENGINES


@pytest.fixture(scope="module")
def flavour():
    """The flavour the study picks here (auto)."""
    if not HAS_BUILDER:
        pytest.skip(f"no TensorRT builder: {BUILDER}")
    return trt.select()


# --- the profile: one value, one rule ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", [(0, 1, 2), (2, 1, 4), (1, 8, 4), (1.0, 2, 4), (True, 2, 4)])
def test_bad_profiles_are_refused(bad):
    with pytest.raises(ValueError, match="batch_min <= batch_opt <= batch_max"):
        trt.Profile(*bad)


def test_profile_checks_a_batch_and_pads_a_short_tail():
    p = trt.Profile(2, 3, 4)
    assert p.check(4) == 4 and p.covers(2) and not p.covers(1)
    with pytest.raises(ValueError, match=r"batch 5 is outside .*\[2, 4\]"):
        p.check(5)
    x = np.arange(9)[:, None].astype(np.float32)
    chunks = p.chunks(x)
    assert [n for _, n in chunks] == [4, 4, 1]
    assert [len(c) for c, _ in chunks] == [4, 4, 2]  # the tail of 1 is padded up to batch_min
    assert chunks[2][0][1, 0] == 8  # by repeating the last real image


# --- flavours -----------------------------------------------------------------------------------------------
def test_unknown_flavour_names_the_choices():
    with pytest.raises(ValueError, match="tensorrt_rtx"):
        trt.select("tensorrtx")


def test_a_flavour_that_is_not_installed_is_a_skip_with_the_fix():
    for name in trt.FLAVOUR_NAMES:
        found, why = trt.installed(name)
        if found is None:
            with pytest.raises(trt.NoBuilder, match="not installed") as err:
                trt.select(name)
            assert err.value.no_builder and isinstance(err.value, StageSkipped)


def test_flavour_facts_are_decided_in_one_place():
    rtx, full = trt.Flavour("tensorrt_rtx", "1.7.1.116"), trt.Flavour("tensorrt", "10.16.0")
    assert rtx.abi_major == 11 and full.abi_major == 10 and trt.Flavour("tensorrt", "11.1.0").abi_major == 11
    assert not rtx.timing_cache and full.timing_cache
    assert rtx.runs_on("8.6")[0] and rtx.runs_on("12.0")[0] and rtx.runs_on("8.0")[0]
    ok, why = rtx.runs_on("9.0")
    assert not ok and "9.0" in why and "8.6" in why
    assert full.runs_on("9.0")[0] and full.runs_on("7.5")[0] and not full.runs_on("7.0")[0]
    assert not rtx.runs_on(None)[0]


@needs_builder
def test_targets_of_the_installed_flavour(flavour):
    if flavour.rtx:
        assert {"sm75", "sm86", "sm89", "sm120"} <= set(flavour.targets)
        with pytest.raises(ValueError, match="sm86"):
            flavour.resolve_target("sm90")  # RTX has no Hopper target
        if not env.cuda_status()[0]:
            assert flavour.resolve_target("auto") == trt.DEFAULT_TARGET == "sm86"


# --- the cache key ----------------------------------------------------------------------------------------
def test_engine_key_changes_with_everything_an_engine_depends_on(xxs, tmp_path):
    onnx_path = xxs[0].onnx
    rtx = trt.Flavour("tensorrt_rtx", "1.7.1.116")
    prof = trt.Profile(1, 16, 32)

    def key(path=onnx_path, profile=prof, fl=rtx, target="sm86", plugins=(), ws=4.0):
        return trt._key(path, trt.key_parts(path, profile, fl, target, plugins, ws))

    base = key()
    assert base == key() and base.startswith("model-b1_16_32-sm86-tensorrt_rtx-")
    model = onnx.load(str(onnx_path))
    model.doc_string = "one byte of difference is a different engine"
    other = tmp_path / "model.onnx"
    onnx.save(model, str(other))
    a, b = tmp_path / "liba.so", tmp_path / "libb.so"
    a.write_bytes(b"plugin build 1")
    b.write_bytes(b"plugin build 2")
    variants = [key(path=other), key(profile=trt.Profile(1, 8, 32)), key(target="sm89"), key(ws=2.0),
                key(plugins=[a]), key(plugins=[b]), key(fl=trt.Flavour("tensorrt_rtx", "1.8.0")),
                key(fl=trt.Flavour("tensorrt", "10.16.0"))]
    assert len({base, *variants}) == len(variants) + 1  # workspace_gb too: a changed workspace is a new engine


def test_missing_plugin_names_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="silu_plugin"):
        trt.check_plugins([tmp_path / "libmissing.so"])


# --- real builds ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(xxs, flavour, tmp_path_factory):
    """The FP32 export built once for sm86 (or this GPU), in a private engine cache."""
    mp = pytest.MonkeyPatch()
    mp.setattr(paths, "ENGINES", tmp_path_factory.mktemp("engines"))
    engine = trt.build_engine(xxs[0].onnx, trt.Profile(1, 2, 4), flavour, workspace_gb=1)
    yield engine
    mp.undo()


@needs_builder
def test_a_real_engine_is_built_with_a_plan_header_and_a_record(built, flavour):
    assert built.plan.is_file() and trt.has_plan_header(built.plan, flavour.name)
    assert built.plan.stat().st_size > 1_000_000 and not built.reused
    info = built.info
    assert info["flavour"] == flavour.name and info["flavour_version"] == flavour.version
    assert info["profile"] == [1, 2, 4] and info["workspace_gb"] == 1.0
    assert info["strongly_typed"] is True and info["tf32"] is False
    assert info["profiling_verbosity"] == "DETAILED"  # set by us: the inspector then gives types and precisions
    assert info["layers_by_type"]["CONVOLUTION"] > 10 and info["plugin_layers"] == 0
    assert isinstance(info["messages"], list)
    layers = built.layers()
    assert len(layers["network"]) == info["network_layers"]
    assert trt.cache_problem(built.dir) is None


@needs_builder
def test_a_valid_engine_is_reused(built, xxs, flavour, capsys):
    again = trt.build_engine(xxs[0].onnx, trt.Profile(1, 2, 4), flavour, workspace_gb=1)
    assert again.reused and again.plan == built.plan
    assert "reusing engine" in capsys.readouterr().out


@needs_builder
@pytest.mark.parametrize("damage", ["truncate", "flip", "no_record", "bad_record", "no_layers"])
def test_a_corrupt_engine_is_reported_and_rebuilt(xxs, flavour, engines_dir, capsys, damage):
    profile = trt.Profile(1, 1, 2)
    first = trt.build_engine(xxs[0].onnx, profile, flavour, workspace_gb=1)
    plan, out = first.plan, first.dir
    if damage == "truncate":
        plan.write_bytes(plan.read_bytes()[:50])
    elif damage == "flip":
        data = bytearray(plan.read_bytes())
        data[1000] ^= 0xFF
        plan.write_bytes(bytes(data))
    elif damage == "no_record":
        (out / trt.BUILD_INFO).unlink()
    elif damage == "bad_record":
        (out / trt.BUILD_INFO).write_text("{ half a record")
    else:
        (out / trt.LAYERS).unlink()
    problem = trt.cache_problem(out)
    assert problem and problem != "not built yet"
    with pytest.raises(RuntimeError, match="cannot be used"):
        trt.load(plan)
    capsys.readouterr()
    again = trt.build_engine(xxs[0].onnx, profile, flavour, workspace_gb=1)
    printed = capsys.readouterr().out
    assert "rebuilding" in printed and problem in printed
    assert not again.reused and trt.cache_problem(out) is None and trt.has_plan_header(again.plan, flavour.name)


@needs_builder
def test_a_model_the_parser_refuses_fails_with_its_words(tmp_path, flavour, engines_dir):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 8, 8])
    node = helper.make_node("NoSuchOpAnywhere", ["input"], ["logits"], domain="nowhere")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("nowhere", 1)])
    bad = tmp_path / "model.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(trt.BuildFailed) as err:
        trt.build_engine(bad, trt.Profile(1, 1, 2), flavour)
    assert any(m.startswith("PARSER:") and "NoSuchOpAnywhere" in m for m in err.value.messages)
    table = trt.build_all("test", [trt.EngineSpec("bad", bad)], trt.Profile(1, 1, 2), flavour.name)
    assert table["status"].tolist() == ["failed"] and "NoSuchOpAnywhere" in table["messages"].iloc[0]
    with pytest.raises(AssertionError, match="bad"):
        trt.require_built(table)


@needs_builder
def test_a_built_engine_is_never_reported_as_run_where_it_cannot_run(built):
    runs, why = built.flavour.runs_here()
    if runs:
        pytest.skip("this GPU runs the flavour's engines: the run test covers it")
    with pytest.raises(StageSkipped, match="built, not run"):
        trt.runnable(built)
    with pytest.raises(StageSkipped, match="not inspected"):
        trt.layer_summary(built.dir)  # the inspector needs a deserialized engine


@needs_builder
def test_build_all_table_says_why_accuracy_and_timing_did_not_run(built, xxs, flavour):
    mp = pytest.MonkeyPatch()
    mp.setattr(paths, "ENGINES", built.dir.parent)
    try:
        table = trt.build_all("03_fp32_fp16", [trt.EngineSpec("fp32", xxs[0].onnx), trt.EngineSpec("gone", xxs[0].dir /
                              "nothing.onnx")], trt.Profile(1, 2, 4), workspace_gb=1)
    finally:
        mp.undo()
    assert list(table.columns) == trt.ENGINE_COLUMNS
    fp32, gone = table.iloc[0], table.iloc[1]
    assert fp32.status == "reused" and fp32.engine_bytes == built.plan.stat().st_size and not fp32.ran
    assert gone.status == "skipped" and "not found" in gone.messages
    if not flavour.runs_here()[0]:
        assert fp32.accuracy.startswith("skipped:") and fp32.timing.startswith("skipped:")
    text = trt.describe(table)
    assert "**fp32**" in text and "network layers" in text and "not found" in text


def test_engines_table_keeps_each_notebooks_rows(tmp_path):
    class FakeRun:  # only the table paths of mvlib.run.Run
        def table(self, name):
            return tmp_path / name

        def save_table(self, frame, name):
            io.write_csv(tmp_path / name, frame)

    run = FakeRun()
    rows = lambda nb, names: pd.DataFrame([{"notebook": nb, "engine": n, "status": "built"} for n in names])  # noqa: E731
    trt.record(run, rows("03", ["fp32", "fp16"]))
    trt.record(run, rows("04", ["int8"]))
    trt.record(run, rows("03", ["fp32", "fp16"]))  # a rerun of 03 replaces its rows, keeps 04's
    trt.annotate(run, "timing", {"int8": "timed: 2 batches"}, ran=True)
    table = pd.read_csv(tmp_path / trt.ENGINES_TABLE)
    assert sorted(table["engine"]) == ["fp16", "fp32", "int8"]
    assert table.set_index("engine").loc["int8", "timing"] == "timed: 2 batches"
    assert table.set_index("engine").loc["int8", "ran"] == True  # noqa: E712
    with pytest.raises(ValueError, match="accuracy"):
        trt.annotate(run, "speed", {})


# --- layer information --------------------------------------------------------------------------------------
def test_layer_summary_reads_tensorrt_10_and_11_inspector_json(tmp_path):
    # Field names as TensorRT's trex parses them: TensorRT 10 puts "Format/Datatype" on each tensor,
    # TensorRT 11 splits it into "Datatype" and "Format".
    info = {"inspected": True, "Layers": [
        {"Name": "/stem/conv/Conv + /stem/act/Sigmoid + /stem/act/Mul", "LayerType": "CaskConvolution",
         "Metadata": "[ONNX Layer: /stem/conv/Conv]\x1f[ONNX Layer: /stem/act/Sigmoid]\x1f[ONNX Layer: /stem/act/Mul]",
         "Inputs": [{"Name": "input", "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "a", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "TacticName": "sm90_xmma_fprop"},
        {"Name": "{ForeignNode[/stages/attn/MatMul.../stages/attn/Softmax]}", "LayerType": "Myelin",
         "Metadata": "", "Inputs": [{"Name": "a", "Datatype": "Half", "Format": "Row major linear"}],
         "Outputs": [{"Name": "b", "Datatype": "Half", "Format": "Row major linear"}]},
        {"Name": "/head/fc/Gemm", "LayerType": "CaskGemm", "Metadata": "[ONNX Layer: /head/fc/Gemm]",
         "Inputs": [{"Name": "b", "Format/Datatype": "Half"}],
         "Outputs": [{"Name": "logits", "Format/Datatype": "Float"}]},
    ], "Bindings": ["input", "logits"]}
    (tmp_path / trt.LAYERS).write_text(json.dumps(info))
    layers = trt.layer_summary(tmp_path)
    assert list(layers["onnx_nodes"]) == [3, 1, 1]
    assert list(layers["fused"]) == [True, True, False]
    assert list(layers["input_precision"]) == ["FP32", "FP16", "FP16"]
    assert list(layers["output_precision"]) == ["FP16", "FP16", "FP32"]
    assert "?" not in set(layers["type"])
    totals = trt.layer_totals(layers)
    assert totals == {"layers": 3, "fused_layers": 2, "onnx_nodes_covered": 5, "out_FP16": 2, "out_FP32": 1}


def test_layer_names_only_is_an_error_not_a_table_of_question_marks(tmp_path):
    # What polygraphy 0.49.0-0.49.8 produced (its verbosity setting failed silently): names, no types.
    (tmp_path / trt.LAYERS).write_text(json.dumps({"inspected": True, "Layers": ["conv1", "gemm"]}))
    with pytest.raises(ValueError, match="DETAILED"):
        trt.layer_summary(tmp_path)


# --- running (trt tier) ---------------------------------------------------------------------------------
@pytest.mark.trt
@needs_builder
def test_engine_runs_and_matches_onnxruntime(built, xxs):
    ok, why = built.flavour.runs_here()
    if not ok:
        pytest.skip(f"run skipped: {why}")
    exported, _ = xxs
    data = accuracy.feeds([1, 4], 256, seed=3)
    results = accuracy.run([accuracy.onnxrt_runner(exported.onnx, "onnxrt-fp32"), trt.runner(built, "trt-fp32")], data)
    ref, out = (np.concatenate([it[accuracy.OUTPUT] for it in results[name]]) for name in ("onnxrt-fp32", "trt-fp32"))
    assert np.abs(ref - out).max() < 1e-3
    assert len(trt.layer_summary(built.dir)) > 0


def test_accuracy_verdicts_key_the_engines_table_by_engine_name():
    table = pd.DataFrame([
        {"runner": "onnxrt-fp32", "batch": 1, "passed": True, "cosine_min": 1.0},
        {"runner": "trt-plugin_fp32", "batch": 1, "passed": True, "cosine_min": 0.9999991},
        {"runner": "trt-plugin_fp32", "batch": 4, "passed": False, "cosine_min": 0.998},
        {"runner": "trt-fp16", "batch": 1, "passed": True, "cosine_min": 0.99995}])
    assert trt.accuracy_verdicts(table) == {"plugin_fp32": "FAILED (cosine_min 0.998000)",
                                            "fp16": "passed (cosine_min 0.999950)"}
