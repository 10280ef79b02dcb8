"""mvlib.precisions: the one table of precisions, read against export's artifacts and the notebooks."""
import pytest

from mvlib import export, metrics, precisions
from mvlib.paths import ROOT


def test_table_names_every_precision_with_its_facts():
    assert set(precisions.TABLE) == {"fp32", "fp16", "int8", "fp8"}
    assert [precisions.get(n).bytes_per_weight for n in ("fp32", "fp16", "int8", "fp8")] == [4, 2, 1, 1]
    assert precisions.get("int8").min_capability == "7.5" and precisions.get("fp8").min_capability == "8.9"
    assert precisions.label("fp16") == "FP16"


def test_every_artifact_is_an_export_role_made_by_an_existing_notebook():
    for p in precisions.TABLE.values():
        assert p.artifact in export.ARTIFACTS and p.plugin_artifact in export.ARTIFACTS
        assert (ROOT / "notebooks" / f"{p.notebook}.ipynb").exists(), p.notebook
        assert p.criterion == metrics.CRITERION


def test_an_unknown_precision_is_an_error_naming_the_known_ones():
    with pytest.raises(ValueError, match="fp32, fp16, int8, fp8"):
        precisions.get("bf16")


def test_one_criterion_judges_every_precision_by_its_own_bounds():
    m = {"n": 4, "max_abs": 0.01, "mean_abs": 0.001, "cosine_mean": 0.9995, "cosine_min": 0.9985,
         "top1_agreement": 1.0}
    assert metrics.failures(m, precisions.get("int8").tolerance) == []  # mean cosine 0.9995 >= 0.999
    fp16 = metrics.failures(m, precisions.get("fp16").tolerance, samples_within_tol=4)
    assert fp16 == ["worst-image cosine 0.998500 < 0.999"]
    assert metrics.failures(m, precisions.get("fp16").tolerance, samples_within_tol=3)[0].startswith("1 of 4 images")
    with pytest.raises(ValueError, match="samples_within_tol"):
        metrics.failures(m, precisions.get("fp32").tolerance)
