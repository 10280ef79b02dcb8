"""mvlib.metrics: the accuracy metrics in float64 and the one criterion's judgement and words."""
import numpy as np
import pandas as pd
import pytest

from mvlib import metrics, precisions


def test_compare_against_known_errors():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(4, 10)).astype(np.float32)
    out = ref + np.float32(0.25)
    out[2] = ref[2][::-1]  # one image reversed: its top-1 class changes
    m = metrics.compare(ref, out)
    assert m["n"] == 4 and m["max_abs"] == pytest.approx(np.abs(ref[2] - ref[2][::-1]).max())
    s = metrics.per_sample(ref, out)
    assert s["cosine"][2] == pytest.approx(float(ref[2] @ ref[2][::-1] / (ref[2] @ ref[2])), rel=1e-6)
    assert m["cosine_min"] == pytest.approx(s["cosine"].min()) and m["top1_agreement"] == 0.75
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.compare(ref, out[:3])


def test_random_images_are_fresh_and_in_range():
    a, b = metrics.random_images(2, 64, seed=0), metrics.random_images(2, 64, seed=1)
    assert a.shape == (2, 3, 64, 64) and a.dtype == np.float32 and not np.array_equal(a, b)
    assert 0 < a.min() and a.max() < 1 and a.std() > 0.2  # never zeros or ones


def test_one_criterion_judges_every_precision_by_its_own_bounds():
    m = {"n": 4, "max_abs": 0.01, "mean_abs": 0.001, "cosine_mean": 0.9995, "cosine_min": 0.9985,
         "top1_agreement": 1.0}
    assert metrics.failures(m, precisions.get("int8").tolerance) == []  # mean cosine 0.9995 >= 0.999
    fp16 = metrics.failures(m, precisions.get("fp16").tolerance, samples_within_tol=4)
    assert fp16 == ["worst-image cosine 0.998500 < 0.999"]
    outside = metrics.failures(m, precisions.get("fp16").tolerance, samples_within_tol=3)[0]
    assert outside == "1 of 4 images outside atol 0.05 / rtol 0.05"
    with pytest.raises(ValueError, match="samples_within_tol"):
        metrics.failures(m, precisions.get("fp32").tolerance)  # bounds per logit need the per-image check
    assert metrics.failures({**m, "top1_drop_points": 0.6}, precisions.get("fp8").tolerance) == [
        "top-1 drop 0.60 points > 0.5"]


def test_bounded_names_the_metrics_the_tolerance_bounds():
    rows = pd.DataFrame({"cosine_min": [0.99999, 0.9998], "cosine_mean": [0.99995, 0.9999],
                         "top1_agreement": [1.0, 0.99609375]})
    assert metrics.bounded(rows, precisions.get("fp16").tolerance) == "cosine_min 0.999800"
    assert metrics.bounded(rows, precisions.get("int8").tolerance) == "cosine_mean 0.99990, top-1 agreement 0.996"
    assert metrics.bounded(rows, None) == "cosine_min 0.999800"
