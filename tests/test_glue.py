"""mvlib.glue: the blocks every notebook shares (export + weights, the engines record)."""
import pandas as pd
import pytest

from mvlib import glue, io
from mvlib.run import Run
from mvlib.tensorrt import table


def _rows(notebook, names, status):
    """Engines-table rows as build_all writes them (a reused engine of TensorRT-RTX for sm86, or a failure)."""
    built = {"flavour": "tensorrt_rtx", "flavour_version": "1.7", "target": "sm86", "engine_bytes": 2**20,
             "network_layers": 100, "plugin_nodes_in_onnx": 0, "compute_precision": None, "accuracy": None}
    return pd.DataFrame([{"notebook": notebook, "engine": n, "onnx": f"model.{n}.onnx", "status": status,
                          "messages": "" if status == "reused" else "the builder refused it"}
                         | (built if status == "reused" else {}) for n in names]).reindex(columns=table.ENGINE_COLUMNS)


def test_the_engines_of_several_build_stages_are_one_record(tmp_path):
    run = Run(tmp_path / "r", "04_int8")
    engines = glue.record_engines(run, _rows("04_int8", ["int8"], "reused"), None, _rows("04_int8", ["fp8"], "reused"))
    assert list(engines.engine) == ["int8", "fp8"]
    assert list(table.read(run).engine) == ["int8", "fp8"]
    assert glue.record_engines(run, None, None) is None  # every build stage skipped: nothing to record
    assert list(table.read(run).engine) == ["int8", "fp8"]


def test_an_engine_that_failed_is_recorded_then_fails_the_cell(tmp_path):
    run = Run(tmp_path / "r", "03_fp32_fp16")
    with pytest.raises(AssertionError, match="fp16 .*failed: the builder refused it"):
        glue.record_engines(run, pd.concat([_rows("03_fp32_fp16", ["fp32"], "reused"),
                                            _rows("03_fp32_fp16", ["fp16"], "failed")]))
    assert list(table.read(run).status) == ["reused", "failed"]  # the table says which, for the reader


def test_export_records_the_weights_it_used(tmp_path, xxs):
    run = Run(tmp_path / "r", "02_graph")
    exported, model = glue.export(run, "mobilevit_xxs", "random", 256, 17, 0)
    assert exported.onnx == xxs[0].onnx and model is not None
    manifest = io.read_json(run.manifest_path)
    assert manifest["weights"]["tag"] == "random-seed0" and manifest["stages"]["02_graph/export"]["status"] == "ok"

