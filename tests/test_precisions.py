"""mvlib.precisions: the one table of precisions, read against export's artifacts, the stage registry and notebooks."""
import pytest

from mvlib import export, metrics, precisions, stages
from mvlib.paths import NOTEBOOKS


def test_table_names_every_precision_with_its_facts():
    assert set(precisions.TABLE) == {"fp32", "fp16", "int8", "fp8"}
    assert [precisions.get(n).bytes_per_weight for n in ("fp32", "fp16", "int8", "fp8")] == [4, 2, 1, 1]
    assert precisions.get("int8").min_capability == "7.5" and precisions.get("fp8").capability == (8, 9)
    assert precisions.label("fp16") == "FP16"
    assert precisions.EVERY_GPU == ("fp32", "fp16", "int8") and precisions.QUANTIZED == ("int8", "fp8")


def test_export_names_its_precision_files_from_the_table():
    for name, p in precisions.TABLE.items():
        assert export.ARTIFACTS[name] == p.artifact and export.ARTIFACTS[f"plugin_{name}"] == p.plugin_artifact
    assert export.PRECISIONS == precisions.EVERY_GPU
    assert export.ARTIFACTS["int8_record"] == "model.int8.json" and export.ARTIFACTS["fp8_record"] == "model.fp8.json"


def test_every_model_file_is_made_by_the_notebook_the_registry_names():
    for p in precisions.TABLE.values():
        assert (NOTEBOOKS / f"{p.notebook}.ipynb").exists(), p.notebook
        assert stages.producer(p.artifact) == p.notebook
        assert p.criterion == metrics.CRITERION


def test_an_unknown_precision_is_an_error_naming_the_known_ones(unknown_precision):
    with pytest.raises(ValueError, match="fp32, fp16, int8, fp8"):
        precisions.get(unknown_precision)
    with pytest.raises(ValueError, match="not a quantized precision: choose one of int8, fp8"):
        precisions.quantized("fp16")

