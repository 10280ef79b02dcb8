"""mvlib.precisions: the one table of precisions, read against export's artifacts, the stage registry and notebooks."""
import dataclasses

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
        assert export.ARTIFACTS[name] == p.artifact and export.ARTIFACTS.get(f"plugin_{name}") == p.plugin_artifact
    assert export.PRECISIONS == precisions.EVERY_GPU
    assert export.ARTIFACTS["int8_record"] == "model.int8.json" and export.ARTIFACTS["fp8_record"] == "model.fp8.json"


def test_every_model_file_is_made_by_the_notebook_the_registry_names():
    for p in precisions.TABLE.values():
        assert (NOTEBOOKS / f"{p.notebook}.ipynb").exists(), p.notebook
        assert stages.producer(p.artifact) == p.notebook
        assert p.criterion == metrics.CRITERION


def test_an_unknown_precision_is_an_error_naming_the_known_ones(unknown_precision):
    with pytest.raises(ValueError, match=", ".join(precisions.TABLE)):
        precisions.get(unknown_precision)
    with pytest.raises(ValueError, match="not a quantized precision: choose one of int8, fp8"):
        precisions.quantized("fp16")



def test_the_table_holds_every_per_precision_fact():
    """Rewrite tolerance, torch and numpy types, I/O bytes, marker and CPU judge: each precision's, in its row."""
    fp32, fp16, int8, fp8 = (precisions.get(n) for n in ("fp32", "fp16", "int8", "fp8"))
    assert fp32.rewrite_tolerance == (1e-6, 2e-6) and fp16.rewrite_tolerance == (1e-3, 1e-3)
    assert int8.rewrite_tolerance == fp8.rewrite_tolerance == (1e-2, 5e-2)
    assert [p.torch_dtype for p in (fp32, fp16, int8, fp8)] == ["float32", "float16", None, None]
    assert [p.io_bytes for p in (fp32, fp16, int8, fp8)] == [4, 2, 4, 4]
    assert [p.marker for p in (fp32, fp16, int8, fp8)] == ["o", "s", "^", "D"]
    assert {p.cpu_judge for p in (fp32, fp16)} == {"03_accuracy.csv"}
    assert {p.cpu_judge for p in (int8, fp8)} == {"04_int8_accuracy.csv"}
    assert precisions.of_torch_dtype("float16") is fp16 and str(precisions.torch_dtype("fp32")) == "torch.float32"


def test_a_precision_pytorch_does_not_run_is_an_error_naming_those_it_does():
    with pytest.raises(ValueError, match="PyTorch does not run INT8 here: it runs fp32, fp16"):
        precisions.torch_dtype("int8")
    with pytest.raises(ValueError, match=r"no precision runs in torch type 'complex64': choose one of float32 \("):
        precisions.of_torch_dtype("complex64")


@pytest.mark.parametrize("name, cap, ok", [("fp32", "7.5", True), ("fp32", "7.0", False), ("fp16", "sm75", True),
                                           ("int8", (6, 1), False), ("fp8", "8.6", False), ("fp8", "sm89", True),
                                           ("fp8", "12.0", True), ("fp16", None, False), ("fp8", "", False)])
def test_the_build_gate_is_the_table_s_minimum_compute_capability(name, cap, ok):
    runs, why = precisions.runs_on(name, cap)
    assert runs is ok and (why == "") is ok
    if not ok:
        p = precisions.get(name)
        assert f"{p.label} needs" in why and p.min_capability in why and p.gpus in why


def test_a_new_precision_s_gate_needs_no_code(monkeypatch):
    """A precision added with min_capability 8.0 (bf16 tensor cores, Ampere) is gated by its row alone."""
    bf16 = dataclasses.replace(precisions.get("fp16"), name="bf16", label="BF16", min_capability="8.0",
                               needs="BF16 tensor cores", gpus="Ampere (A10, A100) and newer")
    monkeypatch.setitem(precisions.TABLE, "bf16", bf16)
    assert precisions.runs_on("bf16", "8.6") == (True, "")
    assert precisions.runs_on("bf16", "7.5") == (False, "compute capability 7.5 has no BF16 tensor cores; BF16 needs "
                                                        "8.0 or newer (Ampere (A10, A100) and newer)")


def test_a_plugin_model_and_its_rewrite_tolerance_come_together():
    with pytest.raises(ValueError, match="give both plugin_artifact and rewrite_tolerance, or neither"):
        dataclasses.replace(precisions.get("fp16"), rewrite_tolerance=None)
    bare = dataclasses.replace(precisions.get("fp16"), plugin_artifact=None, rewrite_tolerance=None)
    assert bare.plugin_artifact is None  # an optional plugin model: a precision may have none
