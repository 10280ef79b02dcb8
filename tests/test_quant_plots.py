"""mvlib.quant_plots: notebook 04's figures from its saved tables, with each precision's criterion bounds."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mvlib import quant_eval, quant_plots


def test_plot_accuracy_with_fp32_fallback_rows(tmp_path):
    """The accuracy figure draws both precisions, with model.int8.onnx twice (FP16 failed, FP32 fallback)."""
    rows = [("int8", "all", "max", "fp32", "model.int8.all.max.onnx", 0.92, 0.05, False),
            ("int8", "sensitivity", "entropy", "fp32", "model.int8.sensitivity.entropy.onnx", 0.99975, 0.992, True),
            ("int8", "sensitivity", "entropy", "fp16", "model.int8.onnx", 0.99975, 0.977, False),
            ("int8", "sensitivity", "entropy", "fp32", "model.int8.onnx", 0.99975, 0.992, True),
            ("fp8", "all", "max", "fp32", "model.fp8.all.max.onnx", 0.9976, 1.0, False),
            ("fp8", "sensitivity", "max", "fp16", "model.fp8.onnx", 0.9993, 1.0, True)]
    table = pd.DataFrame(rows, columns=["precision", "policy", "method", "high_precision", "file", "cosine_mean",
                                        "top1_agreement", "passes"])
    open_before = plt.get_fignums()
    fig = quant_plots.plot_accuracy(table, "fallback")
    assert plt.get_fignums() == open_before  # a pyplot-free Figure (mvlib.figures)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(labels) == len(set(labels)) == 5  # all, sensitivity, and one per chosen file and float type
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {"INT8 max", "INT8 entropy", "FP8 max"} <= set(legend)
    bound = 1 - quant_eval.criterion("int8")["cosine_mean"]
    assert [line.get_ydata()[0] for line in fig.axes[0].get_lines()] == [bound]  # one threshold: the bounds agree
    fig.savefig(tmp_path / "f.png")


def test_plot_sensitivity_marks_the_excluded_groups_and_the_precision_s_thresholds():
    table = pd.DataFrame({"precision": "fp8", "group": ["stem", "stages.1", "stages.2/transformer", "head"],
                          "order": [0, 1, 2, 3], "rank": [3, 2, 1, 4], "error_alone": [1e-4, 1e-3, 1e-2, 1e-5],
                          "excluded": [False, True, True, False], "cosine_after": [np.nan, 0.9995, 0.998, np.nan],
                          "top1_agreement_after": [np.nan, 1.0, 0.98, np.nan]})
    fig = quant_plots.plot_sensitivity(table, "fp8 sensitivity")
    bars = fig.axes[0].patches
    assert [b.get_facecolor()[:3] for b in bars].count(bars[1].get_facecolor()[:3]) == 2  # the two excluded, red
    assert "FP8" in fig.axes[0].get_xlabel()
    assert 1 - quant_eval.criterion("fp8")["cosine_mean"] in [line.get_ydata()[0] for line in fig.axes[1].get_lines()]
