"""mvlib.accuracy: polygraphy runners on the same feeds, the one criterion per precision."""
import numpy as np
import pytest

from mvlib import accuracy
from mvlib.tensorrt import table as engines_table


def test_feeds_are_fresh_random_batches():
    feeds = accuracy.feeds([1, 3], 32, seed=0)
    assert [f[accuracy.INPUT].shape for f in feeds] == [(1, 3, 32, 32), (3, 3, 32, 32)]
    x = feeds[1][accuracy.INPUT]
    assert x.dtype == np.float32 and 0 < x.min() and x.max() < 1


def test_polygraphy_check_follows_the_stated_tolerances():
    zeros, shifted = np.zeros((2, 5)), np.full((2, 5), 0.01)
    assert accuracy.polygraphy_check(zeros, shifted, 0.02, 0) == [True, True]
    assert accuracy.polygraphy_check(zeros, shifted, 0.005, 0) == [False, False]
    with pytest.raises(ValueError, match="shape mismatch"):
        accuracy.polygraphy_check(zeros, shifted[:1], 0.02, 0)


def test_judge_applies_the_precision_s_criterion(unknown_precision):
    rng = np.random.default_rng(7)
    ref = rng.normal(0, 3, size=(8, 100)).astype(np.float32)
    near = ref + rng.normal(0, 1e-3, size=ref.shape).astype(np.float32)  # FP16-like rounding noise
    m = accuracy.metrics.compare(ref, near)
    fails, within = accuracy.judge(ref, near, m, "fp16")
    assert fails == [] and within == [True] * 8
    fails, within = accuracy.judge(ref, near, m, "fp32")  # 1e-3 noise is beyond FP32's atol 1e-4 / rtol 1e-3
    assert fails and fails[0].endswith("images outside atol 0.0001 / rtol 0.001") and not all(within)
    fails, within = accuracy.judge(ref, near, m, "int8")  # a quantized precision bounds no logit: no per-image check
    assert fails == [] and within is None
    with pytest.raises(ValueError, match="unknown precision"):
        accuracy.judge(ref, near, m, unknown_precision)


def test_table_judges_the_named_runners():
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult
    rng = np.random.default_rng(1)
    ref = [rng.normal(size=(b, 10)).astype(np.float32) for b in (1, 3)]
    results = RunResults()
    for name, outs in (("onnxrt-original", ref), ("trt-plugin_fp16", [r + 0.01 for r in ref]),
                       ("trt-plugin_fp32", [r + 0.01 for r in ref])):
        results.append((name, [IterationResult({accuracy.OUTPUT: o}, runner_name=name) for o in outs]))
    table = accuracy.table(results, "onnxrt-original", judged={"trt-plugin_fp16": "fp16", "trt-plugin_fp32": "fp32"})
    rows = table.set_index(["runner", "batch"])
    assert list(rows.loc["trt-plugin_fp16"].passed) == [True, True]
    assert list(rows.loc["trt-plugin_fp32"].passed) == [False, False]  # 0.01 per logit is outside FP32's bounds
    assert (rows.loc["trt-plugin_fp32"].samples_within_tol == 0).all()
    worst = table.groupby("runner").cosine_min.min()
    assert engines_table.accuracy_verdicts(table) == {  # the engines table's words for them
        "plugin_fp16": f"passed (cosine_min {worst['trt-plugin_fp16']:.6f})",
        "plugin_fp32": f"FAILED (cosine_min {worst['trt-plugin_fp32']:.6f})"}
