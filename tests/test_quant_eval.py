"""mvlib.quant_eval: the evaluator judged by each quantized precision's criterion, groups and sensitivity."""
import numpy as np
import onnx
import pandas as pd
import pytest

from mvlib import precisions, quant_eval, quant_graph

pytest_plugins = ["quant_models"]  # the shared fixtures: images, ev, q_all, q_fp8


def test_groups_at_each_granularity():
    names = ["/stem/conv/Conv", "/stages/stages.1/stages.1.0/conv1_1x1/conv/Conv",
             "/stages/stages.2/stages.2.1/conv_kxk/conv/Conv",
             "/stages/stages.2/stages.2.1/transformer/transformer.0/attn/qkv/MatMul",
             "/stages/stages.2/stages.2.1/transformer/transformer.1/mlp/fc1/MatMul",
             "/stages/stages.2/stages.2.1/conv_fusion/conv/Conv", "/head/global_pool/pool/GlobalAveragePool"]
    assert list(quant_eval.groups(names, "stage")) == ["stem", "stages.1", "stages.2", "head"]
    block = quant_eval.groups(names, "block")
    assert list(block) == ["stem", "stages.1.0", "stages.2.1/conv", "stages.2.1/transformer", "head"]
    assert len(block["stages.2.1/conv"]) == 2 and len(block["stages.2.1/transformer"]) == 2
    assert list(quant_eval.groups(names, "layer")) == names
    with pytest.raises(ValueError, match="granularity"):
        quant_eval.group_of(names[0], "tensor")


def test_sensitivity_ranks_groups_and_stops_when_it_passes(q_all, ev):
    table, excluded = quant_eval.sensitivity(q_all[0], ev, "stage", n_images=4)
    assert list(table["rank"]) == list(range(1, len(table) + 1)) and len(table) == 8
    assert (table.error_alone.diff().dropna() <= 0).all(), "ranked worst first"
    k = int(table.excluded.sum())
    assert table.excluded.iloc[:k].all() and not table.excluded.iloc[k:].any(), "excluded in rank order"
    model = onnx.load(str(q_all[0]))
    grouped = quant_eval.groups(quant_graph.quantized_nodes(model), "stage")
    assert sorted(excluded) == sorted(n for g in table.group[table.excluded] for n in grouped[g])
    final = ev.evaluate(quant_graph.isolate(model, excluded), "int8")  # all evaluation images, not the 4 screened
    assert final["passes"] or k == len(table)
    if k:
        last = table.iloc[k - 1]
        assert last.checked_on == len(ev.images) and bool(last.passes_after) == final["passes"]
        if k > 1:  # one group fewer did not pass on the set it was checked on
            assert not table.passes_after.iloc[k - 2] or table.checked_on.iloc[k - 2] < len(ev.images)


def test_groups_judged_several_at_a_time_give_the_same_table(q_all, ev, monkeypatch):
    """On the CUDA EP the groups are judged JUDGES_AT_ONCE at a time; the table and the exclusions are the ones
    judged one by one (here on the CPU, with the same thread pool)."""
    one = quant_eval.analyse(q_all[0], ev, "stage", n_images=4)  # the analysis itself, never a kept result
    monkeypatch.setattr(quant_eval, "_judges", lambda: quant_eval.JUDGES_AT_ONCE)
    many = quant_eval.analyse(q_all[0], ev, "stage", n_images=4)
    pd.testing.assert_frame_equal(one[0], many[0])
    assert one[1] == many[1]


def test_a_rerun_reads_the_kept_analysis_and_a_changed_input_judges_again(q_all, ev, tmp_path, monkeypatch,
                                                                          capsys):
    """Issue 29 (no work done twice): the second analysis of the same model with the same evaluator judges no group
    and returns the very table and exclusions; other evaluation images, or other settings, judge again."""
    model = tmp_path / "model.int8.all.max.onnx"
    model.write_bytes(q_all[0].read_bytes())
    judged = []
    real = quant_eval.analyse
    monkeypatch.setattr(quant_eval, "analyse", lambda *a, **k: judged.append(a[0]) or real(*a, **k))
    first = quant_eval.sensitivity(model, ev, "stage", n_images=4)
    again = quant_eval.sensitivity(model, ev, "stage", n_images=4)
    assert len(judged) == 1 and "reusing" in capsys.readouterr().out
    pd.testing.assert_frame_equal(first[0], again[0])
    assert first[1] == again[1] and first[0].excluded.dtype == bool and first[0].cosine_alone.dtype == float
    fresh = real(model, ev, "stage", n_images=4)  # what was kept is what the analysis gives
    pd.testing.assert_frame_equal(first[0], fresh[0], check_exact=True)
    assert first[1] == fresh[1]
    assert (tmp_path / "model.int8.all.max.sensitivity.stage.csv").is_file()
    other = quant_eval.Evaluator(ev.images[::-1].copy(), ev.reference[::-1].copy(), None)
    quant_eval.sensitivity(model, other, "stage", n_images=4)  # other images: judged again
    quant_eval.sensitivity(model, ev, "stage", n_images=3)  # other settings: judged again
    assert len(judged) == 3


def test_criterion_boundaries():
    """The bounds of the quantized precisions' criterion, and the record notebook 04 writes of them."""
    ref = np.eye(4, dtype=np.float32) * 5 + 0.1
    same = quant_eval.Evaluator(np.zeros((4, 3, 8, 8), np.float32), ref)
    assert same.metrics(ref.copy(), "int8")["passes"] and same.metrics(ref.copy(), "fp8")["fails"] == ""
    ok = {"n": 100, "top1_agreement": 0.99, "cosine_mean": 0.999, "cosine_min": 0.9}
    tol = precisions.get("int8").tolerance
    from mvlib import metrics
    assert metrics.failures(ok, tol) == [] and metrics.failures({**ok, "top1_drop_points": 0.5}, tol) == []
    assert "top-1 drop" in metrics.failures({**ok, "top1_drop_points": 0.51}, tol)[0]
    assert "agreement" in metrics.failures({**ok, "top1_agreement": 0.989}, tol)[0]
    assert "cosine" in metrics.failures({**ok, "cosine_mean": 0.9989}, tol)[0]
    assert quant_eval.criterion("int8") == {"top1_agreement": 0.99, "cosine_mean": 0.999, "top1_drop_points": 0.5}
    assert quant_eval.criterion("fp8") == quant_eval.criterion("int8")
    with pytest.raises(ValueError, match="not a quantized precision"):
        quant_eval.criterion("fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        same.metrics(ref, "int4")  # a verdict needs a known precision, never a default


def test_labelled_metrics_report_the_top1_drop():
    ref = np.eye(4, dtype=np.float32) * 5 + 0.1
    labelled = quant_eval.Evaluator(np.zeros((4, 3, 8, 8), np.float32), ref, labels=np.array([0, 1, 2, 0]))
    worse = ref.copy()
    worse[1] = ref[0]  # image 1 now predicts class 0
    m = labelled.metrics(worse, "int8")
    assert m["top1_fp32"] == 0.75 and m["top1_quantized"] == 0.5 and m["top1_drop_points"] == pytest.approx(25.0)
    assert not m["passes"] and "top-1 drop" in m["fails"]
