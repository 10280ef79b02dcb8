"""INT8 with ModelOpt: exclusions that really stay unquantized, reused calibration, sensitivity, choice, notebook 04."""
import re
import warnings

import nbformat
import numpy as np
import onnx
import pandas as pd
import pytest

from mvlib import data, io, paths, quant, tiers
from mvlib.export import Exported


@pytest.fixture(scope="module")
def images(xxs):
    """Shipped sample images: 4 to calibrate, 6 to evaluate (no network in tests)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback banner
        return data.load(xxs[1], 256, calib_images=4, eval_images=6, seed=0, imagenette=False)


@pytest.fixture(scope="module")
def ev(xxs, images):
    """FP32 reference logits of the evaluation images."""
    return quant.Evaluator.from_onnx(xxs[0].onnx, images.eval, images.eval_labels)


@pytest.fixture(scope="module")
def q_all(xxs, images, tmp_path_factory):
    """mobilevit_xxs with policy `all`, max calibration."""
    path = tmp_path_factory.mktemp("int8") / "all.onnx"
    info = quant.quantize(xxs[0].onnx, path, images.calib, "max")
    return path, info


def _dq_readers(model):
    """Names of non-Q/DQ nodes that read a DequantizeLinear output."""
    return set(quant.quantized_nodes(model))


def test_attention_nodes_of_mobilevit(xxs):
    model = onnx.load(str(xxs[0].onnx))
    attn = quant.attention_nodes(model)
    ops = quant.count_ops(model, attn)
    # mobilevit_xxs: 9 transformer layers (2 + 4 + 3), each 2 LayerNorms, 1 Softmax, Q.K^T and P.V; 3 block norms
    assert ops == {"LayerNormalization": 21, "Softmax": 9, "MatMul": 18}
    mm = quant.attention_matmuls(model)
    assert len(mm) == 18 and all(re.search(r"/attn/MatMul(_1)?$", n) for n in mm)


def test_quantize_all_places_qdq_and_leaves_the_export_alone(xxs, q_all):
    path, info = q_all
    before = xxs[0].onnx.read_bytes()
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert info["qdq_nodes"] > 100 and info["int8_weighted_ops"] > 50
    assert quant.count_ops(model, quant.quantized_nodes(model))["Conv"] == 35  # every Conv of xxs
    assert xxs[0].onnx.read_bytes() == before
    assert not list(path.parent.glob("*.tmp*")), "no temporary files left beside the output"


def test_isolate_of_every_quantized_node_gives_back_fp32(q_all, ev):
    model = onnx.load(str(q_all[0]))
    plain = quant.isolate(model, [n.name for n in model.graph.node])  # shape reads too, so that no Q/DQ is left
    assert not any(n.op_type in quant.QDQ for n in plain.graph.node), "Q/DQ left behind"
    numeric = quant.isolate(model, quant.quantized_nodes(model))  # what sensitivity() uses: shape reads may keep Q/DQ
    np.testing.assert_array_equal(ev.logits(numeric), ev.logits(plain))
    out = ev.logits(plain)
    assert np.abs(out - ev.reference).max() < 1e-4
    assert ev.metrics(out)["passes"]


def test_modelopt_exclusion_alone_shares_qdq_and_isolate_fixes_it(q_all):
    """ORT's quantizer shares one Q/DQ pair per tensor: a LayerNorm beside a quantized Add reads INT8 values."""
    model = onnx.load(str(q_all[0]))
    ln = [n.name for n in model.graph.node if n.op_type == "LayerNormalization"]
    adds = {n.name for n in model.graph.node if n.op_type == "Add"} & _dq_readers(model)
    assert set(ln) & _dq_readers(model), "expected LayerNorms reading shared Q/DQ pairs"
    fixed = quant.isolate(model, ln)
    assert not set(ln) & _dq_readers(fixed)
    assert adds <= _dq_readers(fixed), "the Adds that share those tensors keep their Q/DQ"


def test_fp_attention_policy_leaves_the_named_nodes_unquantized(xxs, images, q_all, tmp_path):
    src = onnx.load(str(xxs[0].onnx))
    attn = quant.attention_nodes(src)
    cached = tmp_path / "fp_attention.cached.onnx"
    info = quant.quantize(xxs[0].onnx, cached, images.calib, "max", quant.attention_matmuls(src),
                          quant.HIGH_PRECISION_OPS, scales_from=q_all[0])
    model = onnx.load(str(cached))
    names = {n.name for n in model.graph.node}
    assert set(attn) <= names, "excluded nodes must still exist"
    assert not set(attn) & _dq_readers(model), "an excluded node reads a DequantizeLinear output"
    assert info["excluded_nodes"] == len(attn) and 0 < info["quantized_nodes"] < quant.summary(q_all[0])[
        "quantized_nodes"]
    # reusing the `all` scales through the calibration cache equals calibrating again on the same images
    fresh = tmp_path / "fp_attention.fresh.onnx"
    quant.quantize(xxs[0].onnx, fresh, images.calib, "max", quant.attention_matmuls(src), quant.HIGH_PRECISION_OPS)
    scales = lambda m: {n.input[0]: float(np.ravel(onnx.numpy_helper.to_array(  # noqa: E731
        next(i for i in m.graph.initializer if i.name == n.input[1])))[0])
        for n in m.graph.node if n.op_type == "QuantizeLinear"}
    a, b = scales(model), scales(onnx.load(str(fresh)))
    assert a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in a) < 1e-5


def test_unknown_excluded_node_is_an_error(xxs, images, tmp_path):
    with pytest.raises(ValueError, match="not in the model"):
        quant.quantize(xxs[0].onnx, tmp_path / "x.onnx", images.calib, "max", ["/no/such/node"])
    with pytest.raises(ValueError, match="calibration method"):
        quant.quantize(xxs[0].onnx, tmp_path / "x.onnx", images.calib, "minmax")
    assert not (tmp_path / "x.onnx").exists()


def test_groups_at_each_granularity():
    names = ["/stem/conv/Conv", "/stages/stages.1/stages.1.0/conv1_1x1/conv/Conv",
             "/stages/stages.2/stages.2.1/conv_kxk/conv/Conv",
             "/stages/stages.2/stages.2.1/transformer/transformer.0/attn/qkv/MatMul",
             "/stages/stages.2/stages.2.1/transformer/transformer.1/mlp/fc1/MatMul",
             "/stages/stages.2/stages.2.1/conv_fusion/conv/Conv", "/head/global_pool/pool/GlobalAveragePool"]
    assert list(quant.groups(names, "stage")) == ["stem", "stages.1", "stages.2", "head"]
    block = quant.groups(names, "block")
    assert list(block) == ["stem", "stages.1.0", "stages.2.1/conv", "stages.2.1/transformer", "head"]
    assert len(block["stages.2.1/conv"]) == 2 and len(block["stages.2.1/transformer"]) == 2
    assert list(quant.groups(names, "layer")) == names
    with pytest.raises(ValueError, match="granularity"):
        quant.group_of(names[0], "tensor")


def test_sensitivity_ranks_groups_and_stops_when_it_passes(q_all, ev):
    table, excluded = quant.sensitivity(q_all[0], ev, "stage", n_images=4)
    assert list(table["rank"]) == list(range(1, len(table) + 1)) and len(table) == 8
    assert (table.error_alone.diff().dropna() <= 0).all(), "ranked worst first"
    k = int(table.excluded.sum())
    assert table.excluded.iloc[:k].all() and not table.excluded.iloc[k:].any(), "excluded in rank order"
    model = onnx.load(str(q_all[0]))
    grouped = quant.groups(quant.quantized_nodes(model), "stage")
    assert sorted(excluded) == sorted(n for g in table.group[table.excluded] for n in grouped[g])
    final = ev.evaluate(quant.isolate(model, excluded))  # on all evaluation images, not only the 4 screened
    assert final["passes"] or k == len(table)
    if k:
        last = table.iloc[k - 1]
        assert last.checked_on == len(ev.images) and bool(last.passes_after) == final["passes"]
        if k > 1:  # one group fewer did not pass on the set it was checked on
            assert not table.passes_after.iloc[k - 2] or table.checked_on.iloc[k - 2] < len(ev.images)


def test_criterion_boundaries():
    ok = {"top1_agreement": 0.99, "cosine_mean": 0.999}
    assert quant.failures(ok) == []
    assert quant.failures({**ok, "top1_drop_points": 0.5}) == []
    assert "top-1 drop" in quant.failures({**ok, "top1_drop_points": 0.51})[0]
    assert "agreement" in quant.failures({**ok, "top1_agreement": 0.989})[0]
    assert "cosine" in quant.failures({**ok, "cosine_mean": 0.9989})[0]


def test_labelled_metrics_report_the_top1_drop():
    ref = np.eye(4, dtype=np.float32) * 5 + 0.1
    ev = quant.Evaluator(np.zeros((4, 3, 8, 8), np.float32), ref, labels=np.array([0, 1, 2, 0]))
    worse = ref.copy()
    worse[1] = ref[0]  # image 1 now predicts class 0
    m = ev.metrics(worse)
    assert m["top1_fp32"] == 0.75 and m["top1_int8"] == 0.5 and m["top1_drop_points"] == pytest.approx(25.0)
    assert not m["passes"] and "top-1 drop" in m["fails"]


def _fake_exported(tmp_path, src):
    """An Exported in a temporary folder holding a copy of the FP32 export."""
    (tmp_path / "model.onnx").write_bytes(src.read_bytes())
    return Exported(tmp_path, tmp_path / "model.onnx", {"tag": "t"}, {})


def test_write_chosen_writes_nothing_when_no_policy_passes(tmp_path, xxs, ev):
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    exp.path("model.int8.onnx").write_bytes(b"stale")
    table = pd.DataFrame([{"policy": "all", "method": "max", "file": "model.onnx", "passes": False,
                           "int8_weighted_ops": 80, "cosine_mean": 0.98}])
    _, meta = quant.write_chosen(exp, table, ev, "fp32")
    assert meta["passes"] is False and not exp.path("model.int8.onnx").exists()
    written = io.read_json(exp.artifact("int8_record"))
    assert written["passes"] is False and written["file"] is None and "no policy" in written["reason"]


def test_write_chosen_falls_back_to_fp32_floats_when_fp16_fails(tmp_path, xxs, ev, q_all, monkeypatch):
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    exp.path("model.int8.fp32floats.onnx").write_bytes(xxs[0].onnx.read_bytes())  # passes: it is FP32 itself
    monkeypatch.setattr(quant, "to_fp16", lambda src, dst: io.write_bytes(dst, q_all[0].read_bytes()))  # fails
    table = pd.DataFrame([{"policy": "sensitivity", "method": "max", "high_precision": "fp32",
                           "file": "model.int8.fp32floats.onnx", "passes": True, "int8_weighted_ops": 1,
                           "cosine_mean": 1.0, "excluded_nodes": 0, "quantized_nodes": 1}])
    out, meta = quant.write_chosen(exp, table, ev, "fp16")
    assert list(out.high_precision) == ["fp32", "fp16", "fp32"] and list(out.passes) == [True, False, True]
    assert meta["passes"] and meta["high_precision"] == "fp32" and "FP16" in meta["note"]
    assert exp.artifact("int8").read_bytes() == xxs[0].onnx.read_bytes()
    written = io.read_json(exp.artifact("int8_record"))
    assert written["file"] == exp.artifact("int8").name and written["policy"] == "sensitivity"


def test_choose_prefers_more_int8_among_passing_rows():
    table = pd.DataFrame([
        {"policy": "all", "method": "max", "passes": False, "int8_weighted_ops": 90, "cosine_mean": 0.99},
        {"policy": "sensitivity", "method": "max", "passes": True, "int8_weighted_ops": 70, "cosine_mean": 0.9991},
        {"policy": "sensitivity", "method": "entropy", "passes": True, "int8_weighted_ops": 70, "cosine_mean": 0.9995},
        {"policy": "fp_attention", "method": "max", "passes": True, "int8_weighted_ops": 0, "cosine_mean": 1.0}])
    best = quant.choose(table)
    assert (best.policy, best.method) == ("sensitivity", "entropy")
    assert quant.choose(table.iloc[[0, 3]]) is None


class ReusingRunner:
    """Returns views of one output buffer it overwrites on every call, as polygraphy's TrtRunner does."""

    def __init__(self, onnx_path):
        import onnxruntime as ort
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.buffer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def infer(self, feed):
        out = self.session.run(None, feed)[0]
        if self.buffer is None:
            self.buffer = np.empty((64, *out.shape[1:]), dtype=np.float32)
        self.buffer[:len(out)] = out
        return {quant.OUTPUT: self.buffer[:len(out)]}


def test_engine_outputs_are_copied_out_of_a_reused_buffer(xxs, ev):
    from mvlib import trt
    profile = trt.Profile(1, 2, 2)  # 6 images: three chunks through one reused buffer
    logits = quant.collect_outputs(ReusingRunner(xxs[0].onnx), ev.images, profile)
    assert np.allclose(logits, ev.reference, atol=1e-4)
    assert not np.allclose(logits[:2], logits[4:], atol=1e-3)  # distinct chunks stay distinct
    # what the loop did before: keep what infer returned, without a copy
    runner, kept = ReusingRunner(xxs[0].onnx), []
    for chunk, n in profile.chunks(ev.images):
        kept.append(np.asarray(runner.infer({quant.INPUT: chunk})[quant.OUTPUT], dtype=np.float32)[:n])
    assert np.allclose(kept[0], kept[2])  # every entry shows the last chunk: the defect this copy prevents


def test_profile_pads_a_tail_below_batch_min_and_drops_its_outputs(xxs, ev):
    from mvlib import trt
    logits = quant.collect_outputs(ReusingRunner(xxs[0].onnx), ev.images[:5], trt.Profile(2, 2, 4))
    assert logits.shape[0] == 5 and np.allclose(logits, ev.reference[:5], atol=1e-4)


def test_int8_engine_row_carries_the_float_type_that_was_written(tmp_path, xxs):
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    table = pd.DataFrame([  # FP16 floats failed, so model.int8.onnx holds the FP32-float variant (write_chosen)
        {"policy": "sensitivity", "method": "entropy", "high_precision": "fp16", "file": "model.int8.onnx"},
        {"policy": "sensitivity", "method": "entropy", "high_precision": "fp32", "file": "model.int8.onnx"},
        {"policy": "all", "method": "max", "high_precision": "fp32", "file": "model.int8.all.max.onnx"}])
    io.write_json(exp.artifact("int8_record"), {"passes": True, "high_precision": "fp32"})
    assert quant.source_row(exp, table, "model.int8.onnx").high_precision == "fp32"
    io.write_json(exp.artifact("int8_record"), {"passes": True, "high_precision": "fp16"})
    assert quant.source_row(exp, table, "model.int8.onnx").high_precision == "fp16"
    assert quant.source_row(exp, table, "model.int8.all.max.onnx").policy == "all"
    assert [s.name for s in quant.engine_specs(exp, table)] == ["int8", "int8.all.max"]


@pytest.mark.skipif(not __import__("mvlib.trt").trt.builder_status()[0], reason="no TensorRT builder here")
def test_int8_engines_are_built_for_real(tmp_path, xxs, q_all, monkeypatch):
    """INT8 Q/DQ files build with the installed builder (TensorRT-RTX on CI's CPU); runs on the trt tier."""
    from mvlib import trt
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    exp.path("model.int8.all.max.onnx").write_bytes(q_all[0].read_bytes())
    table = pd.DataFrame([{"policy": "all", "method": "max", "high_precision": "fp32",
                           "file": "model.int8.all.max.onnx"}])
    engines = trt.require_built(trt.build_all("04_int8", quant.engine_specs(exp, table), trt.Profile(1, 2, 4)))
    row = engines.iloc[0]
    assert row.engine == "int8.all.max" and trt.has_plan_header(row.path, row.flavour)
    assert "QUANTIZE" in row.layers_by_type and "DEQUANTIZE" in row.layers_by_type


@pytest.mark.trt
@pytest.mark.skipif(not tiers.runtime_status()[0],
                    reason="no TensorRT runtime for this GPU: INT8 engines run on the trt tier")
def test_int8_engine_accuracy(tmp_path, xxs, images, ev, q_all, monkeypatch):
    from mvlib import trt
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    exp.path("model.int8.all.max.onnx").write_bytes(q_all[0].read_bytes())
    table = pd.DataFrame([{"policy": "all", "method": "max", "high_precision": "fp32",
                           "file": "model.int8.all.max.onnx"}])
    engines = trt.build_all("04_int8", quant.engine_specs(exp, table), trt.Profile(1, 2, 4))
    out = quant.int8_engine_accuracy(exp, table, ev, engines).iloc[0]
    onnxrt = ev.evaluate(exp.path("model.int8.all.max.onnx"))  # the same Q/DQ graph on ONNX Runtime
    assert abs(out.cosine_mean - onnxrt["cosine_mean"]) < 0.01 and out.top1_agreement >= onnxrt["top1_agreement"] - 0.2
    assert out.get("out_INT8", 0) > 0  # TensorRT really runs layers in INT8


def test_notebook_04_creates_the_files_it_lists(smoke_run):
    nb = nbformat.read(paths.NOTEBOOKS / "04_int8.ipynb", as_version=4)
    listed = set(re.findall(r"`((?:results|figures)/04_[\w.]+)`", nb.cells[0].source))
    trt_only = {"results/04_int8_trt_accuracy.csv"}
    assert trt_only <= listed
    made = {f"{p.parent.name}/{p.name}" for sub in ("results", "figures") for p in (smoke_run / sub).glob("04_*")}
    manifest = io.read_json(smoke_run / "manifest.json")
    expected = listed if manifest["tier"] == "trt" else listed - trt_only
    assert made == expected
    stages = {k: v for k, v in manifest["stages"].items() if k.startswith("04_int8/")}
    assert stages["04_int8/trt_int8_engines"]["status"] == ("ok" if manifest["tier"] == "trt" else "skipped")
    assert all(v["status"] == "ok" for k, v in stages.items() if v["tier"] == "cpu")
    from mvlib import trt
    if trt.builder_status()[0]:  # every Q/DQ file of the accuracy table became an engine
        assert stages["04_int8/engines"]["status"] == "ok"
        engines = pd.read_csv(smoke_run / "results" / trt.ENGINES_TABLE)
        mine = engines[engines.notebook == "04_int8"]
        acc_files = set(pd.read_csv(smoke_run / "results" / "04_int8_accuracy.csv").file)
        assert set(mine.onnx) == acc_files and mine.status.isin(["built", "reused"]).all()
    assert manifest["int8_images"]["source"] in data.SOURCES and manifest["int8"]["images"]
    acc = pd.read_csv(smoke_run / "results" / "04_int8_accuracy.csv")
    assert set(acc.policy) == set(quant.POLICIES) and set(acc.method) == set(quant.METHODS)
    assert acc.images.nunique() == 1 and acc.images.iloc[0] == manifest["int8_images"]["label"]
    sens = pd.read_csv(smoke_run / "results" / "04_sensitivity.csv")
    assert (sens.images == acc.images.iloc[0]).all() and sens["rank"].tolist() == list(range(1, len(sens) + 1))
    meta = io.read_json(paths.model_dir("mobilevit_xxs", "random-seed0", 256, 17) / "model.int8.json")
    assert meta["passes"] == manifest["int8"]["passes"]
    if meta["passes"]:
        assert (paths.model_dir("mobilevit_xxs", "random-seed0", 256, 17) / "model.int8.onnx").exists()


def test_plot_accuracy_with_fp32_fallback_rows(tmp_path):
    """The accuracy figure draws a table where model.int8.onnx appears twice (FP16 failed, FP32 fallback)."""
    import pandas as pd
    rows = [("all", "max", "fp32", "model.int8.all.max.onnx", 0.92, 0.05, False),
            ("sensitivity", "entropy", "fp32", "model.int8.sensitivity.entropy.onnx", 0.99975, 0.992, True),
            ("sensitivity", "entropy", "fp16", "model.int8.onnx", 0.99975, 0.977, False),
            ("sensitivity", "entropy", "fp32", "model.int8.onnx", 0.99975, 0.992, True)]
    table = pd.DataFrame(rows, columns=["policy", "method", "high_precision", "file", "cosine_mean",
                                        "top1_agreement", "passes"])
    fig = quant.plot_accuracy(table, "fallback")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(labels) == len(set(labels)) == 4
    fig.savefig(tmp_path / "f.png")


def test_quantize_reuses_a_result_only_for_the_same_inputs(xxs, images, q_all, tmp_path, monkeypatch):
    import shutil

    import modelopt.onnx.quantization as mq
    path = tmp_path / "all.onnx"
    shutil.copyfile(q_all[0], path)
    shutil.copyfile(f"{q_all[0]}.json", f"{path}.json")
    made = path.stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise RuntimeError("ModelOpt called")
    monkeypatch.setattr(mq, "quantize", refuse)
    # same model, images and method: the saved result comes back without calibrating
    assert quant.quantize(xxs[0].onnx, path, images.calib, "max") == q_all[1]
    assert path.stat().st_mtime_ns == made
    # other images, or a changed file on disk, mean a new calibration
    with pytest.raises(RuntimeError, match="ModelOpt called"):
        quant.quantize(xxs[0].onnx, path, images.calib[:3], "max")
    assert not (tmp_path / "all.onnx.json").exists(), \
        "a failed rebuild must not leave a key that vouches for the old file"
    shutil.copyfile(f"{q_all[0]}.json", f"{path}.json")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(RuntimeError, match="ModelOpt called"):
        quant.quantize(xxs[0].onnx, path, images.calib, "max")
