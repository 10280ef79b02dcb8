"""The engines table and its prose (mvlib.tensorrt.table): columns, JIT columns, what INT8 means, runs recorded."""
import pandas as pd
import pytest
import tensorrt_models as models

from mvlib import io, onnxmodel, paths
from mvlib.tensorrt import flavours, shapes, table, timing

HAS_BUILDER, BUILDER = flavours.builder_status()


class FakeRun:  # only the table paths of mvlib.run.Run
    def __init__(self, folder):
        self.folder = folder

    def table(self, name):
        return self.folder / name

    def save_table(self, frame, name):
        io.write_csv(self.folder / name, frame)


def test_engines_table_keeps_each_notebooks_rows(tmp_path):
    run = FakeRun(tmp_path)
    rows = lambda nb, names: pd.DataFrame([{"notebook": nb, "engine": n, "status": "built"} for n in names])  # noqa: E731
    table.record(run, rows("03", ["fp32", "fp16"]))
    table.record(run, rows("04", ["int8"]))
    table.record(run, rows("03", ["fp32", "fp16"]))  # a rerun of 03 replaces its rows, keeps 04's
    table.annotate(run, "timing", {"int8": "timed: 2 batches"}, ran=True)
    saved = pd.read_csv(tmp_path / table.ENGINES_TABLE)
    assert list(saved.columns) == table.ENGINE_COLUMNS
    saved = saved.set_index("engine")
    assert sorted(saved.index) == ["fp16", "fp32", "int8"]
    assert saved.loc["int8", "timing"] == "timed: 2 batches" and saved.loc["int8", "ran"] == True  # noqa: E712
    with pytest.raises(ValueError, match="accuracy"):
        table.annotate(run, "speed", {})


def test_rebuilt_rows_become_console_lines(tmp_path):
    run = FakeRun(tmp_path)
    table.record(run, pd.DataFrame([{"notebook": "03_fp32_fp16", "engine": "fp32", "status": "rebuilt",
                                     "messages": "rebuilt: engine.plan is corrupt | WARNING: x"},
                                    {"notebook": "03_fp32_fp16", "engine": "fp16", "status": "reused"}]))
    assert table.rebuilt_lines(run) == [table.rebuilt_line("03_fp32_fp16", "fp32", "engine.plan is corrupt")]


def test_no_row_is_called_int8_that_the_builder_did_not_make_int8():
    assert table.int8_words("int8", "conv: 35 INT8; matmul: 50 INT8").startswith("the builder ran 85 ")
    words = table.int8_words("int8.all.max", "conv: 35 FP16 x INT8; matmul: 50 FP16")
    assert words.startswith("INT8 in name only") and "FP16 x INT8" in words
    assert table.int8_words("fp16", "conv: 35 FP16") == "" and table.int8_words("int8", float("nan")) == ""
    row = {"notebook": "04", "engine": "int8", "onnx": "model.int8.onnx", "flavour": "tensorrt_rtx",
           "flavour_version": "1.7.1.116", "target": "sm86", "status": "built", "messages": "", "build_seconds": 5.0,
           "engine_bytes": 2**21, "network_layers": 10, "plugin_nodes_in_onnx": 0, "plugin_layers": 0,
           "compute_precision": "conv: 3 FP32", "accuracy": "skipped: no GPU"}
    text = table.describe(pd.DataFrame([row]).reindex(columns=table.ENGINE_COLUMNS))
    assert "compute precision: conv: 3 FP32" in text and "INT8 in name only" in text


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
def test_build_all_rows_say_why_accuracy_timing_and_jit_did_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    specs = [table.EngineSpec("int8", models.conv(tmp_path / "model.int8.onnx", int8=True)),
             table.EngineSpec("gone", tmp_path / "nothing.onnx")]
    rows = table.build_all("04_int8", specs, shapes.Profile(1, 2, 4), workspace_gb=1)
    assert list(rows.columns) == table.ENGINE_COLUMNS and set(timing.JIT_COLUMNS) <= set(rows.columns)
    built, gone = rows.iloc[0], rows.iloc[1]
    assert built.status == "built" and built.compute_precision == "conv: 1 INT8" and not built.ran
    assert gone.status == "skipped" and "not found" in gone.messages
    if not flavours.select().runs_here()[0]:
        for column in ("accuracy", "timing", "jit"):
            assert built[column].startswith("skipped:") and "NVIDIA GPU" in built[column], column
        assert pd.isna(built.context_cold_ms)
    text = table.describe(rows)
    assert "**int8**" in text and "the builder ran 1 convolutions/matmuls in INT8" in text and "not found" in text


def test_accuracy_verdicts_key_the_engines_table_by_engine_name():
    acc = pd.DataFrame([
        {"runner": "onnxrt-fp32", "batch": 1, "passed": True, "cosine_min": 1.0},
        {"runner": "trt-plugin_fp32", "batch": 1, "passed": True, "cosine_min": 0.9999991},
        {"runner": "trt-plugin_fp32", "batch": 4, "passed": False, "cosine_min": 0.998},
        {"runner": "trt-fp16", "batch": 1, "passed": True, "cosine_min": 0.99995}])
    assert table.accuracy_verdicts(acc) == {"plugin_fp32": "FAILED (cosine_min 0.998000)",
                                            "fp16": "passed (cosine_min 0.999950)"}


def test_plugin_layer_check_fails_on_a_missing_plugin_layer():
    row = {"status": "built", "plugin_nodes_in_onnx": 34}
    checked = pd.DataFrame([{**row, "engine": "plugin_fp32", "plugin_layers": 34},
                            {**row, "engine": "plugin_fp16", "plugin_layers": 33}])
    with pytest.raises(AssertionError, match="(?s)plugin layers differ.*plugin_fp16"):
        table.plugin_layer_check(checked)
    assert table.plugin_layer_check(checked.iloc[:1])["matches"].all()


def test_plugin_nodes_are_counted_by_tensorrts_plugin_domain(tmp_path):
    """Plugin nodes are those in TensorRT's plugin domain, whatever their op: the table knows no plugin's name."""
    import onnx
    from onnx import TensorProto, helper

    from mvlib.tensorrt import plugins
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 8]) for n in ("input", "t2"))
    nodes = [helper.make_node("MvSiLU", ["input"], ["t0"], name="a", domain=plugins.PLUGIN_DOMAIN),
             helper.make_node("Relu", ["t0"], ["t1"], name="b"),
             helper.make_node("SomeoneElsesOp", ["t1"], ["t2"], name="c", domain=plugins.PLUGIN_DOMAIN)]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(plugins.PLUGIN_DOMAIN, 1)]
    path = tmp_path / "p.onnx"
    onnx.save(onnxmodel.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets), str(path))
    assert table.plugin_nodes_in(path) == 2 and plugins.plugin_nodes(path) == ["a", "c"]
    assert table.plugin_nodes_in(models.conv(tmp_path / "m.onnx")) == 0
