"""INT8 and FP8 with ModelOpt: exclusions that stay unquantized, reused scales, sensitivity, choice, notebook 04."""
import re
import warnings

import nbformat
import numpy as np
import onnx
import pandas as pd
import pytest

from mvlib import data, io, paths, quant, quant_eval, quant_graph, quant_plots, tiers
from mvlib.accuracy import INPUT, OUTPUT
from mvlib.export import Exported
from mvlib.tensorrt import cache, flavours, shapes
from mvlib.tensorrt import table as engines_table


@pytest.fixture(scope="module")
def images(xxs):
    """Shipped sample images: 4 to calibrate, 6 to evaluate (no network in tests)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback banner
        return data.load(xxs[1], 256, calib_images=4, eval_images=6, seed=0, imagenette=False)


@pytest.fixture(scope="module")
def ev(xxs, images):
    """FP32 reference logits of the evaluation images."""
    return quant_eval.Evaluator.from_onnx(xxs[0].onnx, images.eval, images.eval_labels)


@pytest.fixture(scope="module")
def q_all(xxs, images, tmp_path_factory):
    """mobilevit_xxs with policy `all`, max calibration."""
    path = tmp_path_factory.mktemp("int8") / "all.onnx"
    info = quant.quantize(xxs[0].onnx, path, images.calib, "max")
    return path, info


@pytest.fixture(scope="module")
def q_fp8(xxs, images, tmp_path_factory):
    """mobilevit_xxs with policy `all`, max calibration, FP8 (E4M3) Q/DQ."""
    path = tmp_path_factory.mktemp("fp8") / "all.onnx"
    info = quant.quantize(xxs[0].onnx, path, images.calib, "max", precision="fp8")
    return path, info


def _dq_readers(model):
    """Names of non-Q/DQ nodes that read a DequantizeLinear output."""
    return set(quant_graph.quantized_nodes(model))


def test_attention_nodes_of_mobilevit(xxs):
    model = onnx.load(str(xxs[0].onnx))
    attn = quant_graph.attention_nodes(model)
    ops = quant_graph.count_ops(model, attn)
    # mobilevit_xxs: 9 transformer layers (2 + 4 + 3), each 2 LayerNorms, 1 Softmax, Q.K^T and P.V; 3 block norms
    assert ops == {"LayerNormalization": 21, "Softmax": 9, "MatMul": 18}
    mm = quant_graph.attention_matmuls(model)
    assert len(mm) == 18 and all(re.search(r"/attn/MatMul(_1)?$", n) for n in mm)


def test_quantize_all_places_qdq_and_leaves_the_export_alone(xxs, q_all):
    path, info = q_all
    before = xxs[0].onnx.read_bytes()
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert info["qdq_nodes"] > 100 and info["quantized_weighted_ops"] > 50
    assert quant_graph.count_ops(model, quant_graph.quantized_nodes(model))["Conv"] == 35  # every Conv of xxs
    assert quant_graph.qdq_types(model) == {"int8"}
    assert xxs[0].onnx.read_bytes() == before
    assert not list(path.parent.glob("*.tmp*")), "no temporary files left beside the output"


def test_isolate_of_every_quantized_node_gives_back_fp32(q_all, ev):
    model = onnx.load(str(q_all[0]))
    plain = quant_graph.isolate(model, [n.name for n in model.graph.node])  # shape reads too, so that no Q/DQ is left
    assert not any(n.op_type in quant_graph.QDQ for n in plain.graph.node), "Q/DQ left behind"
    # what sensitivity() uses: shape reads may keep Q/DQ
    numeric = quant_graph.isolate(model, quant_graph.quantized_nodes(model))
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
    fixed = quant_graph.isolate(model, ln)
    assert not set(ln) & _dq_readers(fixed)
    assert adds <= _dq_readers(fixed), "the Adds that share those tensors keep their Q/DQ"


@pytest.mark.parametrize("precision", quant.PRECISIONS)
def test_fp_attention_policy_leaves_the_named_nodes_unquantized(xxs, images, q_all, q_fp8, tmp_path, precision):
    base = {"int8": q_all, "fp8": q_fp8}[precision][0]
    src = onnx.load(str(xxs[0].onnx))
    attn = quant_graph.attention_nodes(src)
    cached = tmp_path / "fp_attention.cached.onnx"
    info = quant.quantize(xxs[0].onnx, cached, images.calib, "max", quant_graph.attention_matmuls(src),
                          quant_graph.HIGH_PRECISION_OPS, scales_from=base, precision=precision)
    model = onnx.load(str(cached))
    names = {n.name for n in model.graph.node}
    assert set(attn) <= names, "excluded nodes must still exist"
    assert not set(attn) & _dq_readers(model), "an excluded node reads a DequantizeLinear output"
    assert info["excluded_nodes"] == len(attn) and 0 < info["quantized_nodes"] < quant_graph.summary(base)[
        "quantized_nodes"]
    assert quant_graph.qdq_types(model) == {precision}
    # ModelOpt saw one image; the scales transplanted from the `all` model equal calibrating again on all of them
    fresh = tmp_path / "fp_attention.fresh.onnx"
    quant.quantize(xxs[0].onnx, fresh, images.calib, "max", quant_graph.attention_matmuls(src),
                   quant_graph.HIGH_PRECISION_OPS, precision=precision)
    scales = lambda m: {n.input[0]: float(np.ravel(onnx.numpy_helper.to_array(  # noqa: E731
        next(i for i in m.graph.initializer if i.name == n.input[1])))[0])
        for n in m.graph.node if n.op_type == "QuantizeLinear"}
    a, b = scales(model), scales(onnx.load(str(fresh)))
    assert a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in a) < 1e-5
    # one image alone gives other activation scales: without the transplant the test above could not pass
    one = tmp_path / "fp_attention.one.onnx"
    quant.quantize(xxs[0].onnx, one, images.calib[:1], "max", quant_graph.attention_matmuls(src),
                   quant_graph.HIGH_PRECISION_OPS, precision=precision)
    c = scales(onnx.load(str(one)))
    assert max(abs(c[k] - b[k]) / max(abs(b[k]), 1e-12) for k in b) > 1e-3


def test_transplant_refuses_a_source_without_the_tensor(q_all):
    model = onnx.load(str(q_all[0]))
    source = onnx.load(str(q_all[0]))
    victim = next(n for n in source.graph.node if n.op_type == "QuantizeLinear"
                  and n.input[0] not in {i.name for i in source.graph.initializer})
    source.graph.node.remove(victim)
    with pytest.raises(ValueError, match="no scale in the source model"):
        quant_graph.transplant_scales(model, source)


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
    final = ev.evaluate(quant_graph.isolate(model, excluded))  # on all evaluation images, not only the 4 screened
    assert final["passes"] or k == len(table)
    if k:
        last = table.iloc[k - 1]
        assert last.checked_on == len(ev.images) and bool(last.passes_after) == final["passes"]
        if k > 1:  # one group fewer did not pass on the set it was checked on
            assert not table.passes_after.iloc[k - 2] or table.checked_on.iloc[k - 2] < len(ev.images)


def test_criterion_boundaries():
    ok = {"top1_agreement": 0.99, "cosine_mean": 0.999}
    assert quant_eval.failures(ok) == []
    assert quant_eval.failures({**ok, "top1_drop_points": 0.5}) == []
    assert "top-1 drop" in quant_eval.failures({**ok, "top1_drop_points": 0.51})[0]
    assert "agreement" in quant_eval.failures({**ok, "top1_agreement": 0.989})[0]
    assert "cosine" in quant_eval.failures({**ok, "cosine_mean": 0.9989})[0]


def test_labelled_metrics_report_the_top1_drop():
    ref = np.eye(4, dtype=np.float32) * 5 + 0.1
    ev = quant_eval.Evaluator(np.zeros((4, 3, 8, 8), np.float32), ref, labels=np.array([0, 1, 2, 0]))
    worse = ref.copy()
    worse[1] = ref[0]  # image 1 now predicts class 0
    m = ev.metrics(worse)
    assert m["top1_fp32"] == 0.75 and m["top1_quantized"] == 0.5 and m["top1_drop_points"] == pytest.approx(25.0)
    assert not m["passes"] and "top-1 drop" in m["fails"]


def _fake_exported(tmp_path, src):
    """An Exported in a temporary folder holding a copy of the FP32 export."""
    (tmp_path / "model.onnx").write_bytes(src.read_bytes())
    return Exported(tmp_path, tmp_path / "model.onnx", {"tag": "t"}, {})


def test_write_chosen_writes_nothing_when_no_policy_passes(tmp_path, xxs, ev):
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    exp.path("model.int8.onnx").write_bytes(b"stale")
    table = pd.DataFrame([{"precision": "int8", "policy": "all", "method": "max", "file": "model.onnx",
                           "passes": False, "quantized_weighted_ops": 80, "cosine_mean": 0.98}])
    _, meta = quant.write_chosen(exp, table, ev, "fp32")
    assert meta["passes"] is False and not exp.path("model.int8.onnx").exists()
    written = io.read_json(exp.artifact("int8_record"))
    assert written["passes"] is False and written["file"] is None and "no policy" in written["reason"]


def test_write_chosen_lets_only_rows_of_its_precision_compete(tmp_path, xxs, ev):
    """An INT8 row that passes must not become model.fp8.onnx, and FP8's verdict leaves model.int8.onnx alone."""
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    exp.path("model.int8.onnx").write_bytes(b"int8 written earlier")
    table = pd.DataFrame([
        {"precision": "int8", "policy": "sensitivity", "method": "max", "file": "model.onnx", "passes": True,
         "quantized_weighted_ops": 70, "cosine_mean": 1.0, "excluded_nodes": 0, "quantized_nodes": 1},
        {"precision": "fp8", "policy": "all", "method": "max", "file": "model.onnx", "passes": False,
         "quantized_weighted_ops": 80, "cosine_mean": 0.99}])
    _, meta = quant.write_chosen(exp, table, ev, "fp32", precision="fp8")
    assert meta["passes"] is False and meta["precision"] == "fp8" and meta["policies"] == ["all"]
    assert not quant.chosen_path(exp, "fp8").exists() and io.read_json(quant.record_path(exp, "fp8"))["file"] is None
    assert exp.path("model.int8.onnx").read_bytes() == b"int8 written earlier"
    assert not exp.artifact("int8_record").exists()


def test_chosen_file_names_are_the_ones_export_registers(tmp_path, xxs):
    """quant and fp8 name the files they write as export.ARTIFACTS does, for INT8 and FP8 alike."""
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    for p in quant.PRECISIONS:
        assert quant.chosen_path(exp, p) == exp.artifact(p)
        assert quant.record_path(exp, p) == exp.artifact(f"{p}_record")
    assert exp.artifact("plugin_fp8") == exp.path("model.fp8.silu.onnx")
    with pytest.raises(ValueError, match="choose one of fp32, fp16, int8"):
        exp.model("fp8")  # FP8 has its artifacts, but is not one of the precisions every GPU runs
    with pytest.raises(ValueError, match="choose one of int8, fp8"):
        quant.chosen_path(exp, "int4")


def test_write_chosen_falls_back_to_fp32_floats_when_fp16_fails(tmp_path, xxs, ev, q_all, monkeypatch):
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    exp.path("model.int8.fp32floats.onnx").write_bytes(xxs[0].onnx.read_bytes())  # passes: it is FP32 itself
    monkeypatch.setattr(quant, "to_fp16", lambda src, dst: io.write_bytes(dst, q_all[0].read_bytes()))  # fails
    table = pd.DataFrame([{"precision": "int8", "policy": "sensitivity", "method": "max", "high_precision": "fp32",
                           "file": "model.int8.fp32floats.onnx", "passes": True, "quantized_weighted_ops": 1,
                           "cosine_mean": 1.0, "excluded_nodes": 0, "quantized_nodes": 1}])
    out, meta = quant.write_chosen(exp, table, ev, "fp16")
    assert list(out.high_precision) == ["fp32", "fp16", "fp32"] and list(out.passes) == [True, False, True]
    assert meta["passes"] and meta["high_precision"] == "fp32" and "FP16" in meta["note"]
    assert exp.artifact("int8").read_bytes() == xxs[0].onnx.read_bytes()
    written = io.read_json(exp.artifact("int8_record"))
    assert written["file"] == exp.artifact("int8").name and written["policy"] == "sensitivity"


def test_choose_prefers_more_quantized_ops_among_passing_rows():
    table = pd.DataFrame([("all", "max", False, 90, 0.99), ("sensitivity", "max", True, 70, 0.9991),
                          ("sensitivity", "entropy", True, 70, 0.9995), ("fp_attention", "max", True, 0, 1.0)],
                         columns=["policy", "method", "passes", "quantized_weighted_ops", "cosine_mean"])
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
        return {OUTPUT: self.buffer[:len(out)]}


def test_engine_outputs_are_copied_out_of_a_reused_buffer(xxs, ev):
    profile = shapes.Profile(1, 2, 2)  # 6 images: three chunks through one reused buffer
    logits = quant.collect_outputs(ReusingRunner(xxs[0].onnx), ev.images, profile)
    assert np.allclose(logits, ev.reference, atol=1e-4)
    assert not np.allclose(logits[:2], logits[4:], atol=1e-3)  # distinct chunks stay distinct
    # what the loop did before: keep what infer returned, without a copy
    runner, kept = ReusingRunner(xxs[0].onnx), []
    for chunk, n in profile.chunks(ev.images):
        kept.append(np.asarray(runner.infer({INPUT: chunk})[OUTPUT], dtype=np.float32)[:n])
    assert np.allclose(kept[0], kept[2])  # every entry shows the last chunk: the defect this copy prevents


def test_profile_pads_a_tail_below_batch_min_and_drops_its_outputs(xxs, ev):
    logits = quant.collect_outputs(ReusingRunner(xxs[0].onnx), ev.images[:5], shapes.Profile(2, 2, 4))
    assert logits.shape[0] == 5 and np.allclose(logits, ev.reference[:5], atol=1e-4)


def test_int8_engine_row_carries_the_float_type_that_was_written(tmp_path, xxs):
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    table = pd.DataFrame([  # FP16 floats failed, so model.int8.onnx holds the FP32-float variant (write_chosen)
        {"precision": "int8", "policy": "sensitivity", "method": "entropy", "high_precision": "fp16",
         "file": "model.int8.onnx"},
        {"precision": "int8", "policy": "sensitivity", "method": "entropy", "high_precision": "fp32",
         "file": "model.int8.onnx"},
        {"precision": "int8", "policy": "all", "method": "max", "high_precision": "fp32",
         "file": "model.int8.all.max.onnx"},
        {"precision": "fp8", "policy": "all", "method": "max", "high_precision": "fp16", "file": "model.fp8.onnx"},
        {"precision": "fp8", "policy": "all", "method": "max", "high_precision": "fp32", "file": "model.fp8.onnx"}])
    io.write_json(exp.artifact("int8_record"), {"passes": True, "high_precision": "fp32"})
    assert quant.source_row(exp, table, "model.int8.onnx").high_precision == "fp32"
    io.write_json(exp.artifact("int8_record"), {"passes": True, "high_precision": "fp16"})
    assert quant.source_row(exp, table, "model.int8.onnx").high_precision == "fp16"
    assert quant.source_row(exp, table, "model.int8.all.max.onnx").policy == "all"
    assert [s.name for s in quant.engine_specs(exp, table)] == ["int8", "int8.all.max"]
    assert [s.name for s in quant.engine_specs(exp, table, "fp8")] == ["fp8"]
    io.write_json(quant.record_path(exp, "fp8"), {"passes": True, "high_precision": "fp32"})
    assert quant.source_row(exp, table, "model.fp8.onnx").high_precision == "fp32"


@pytest.mark.skipif(not flavours.builder_status()[0], reason="no TensorRT builder here")
def test_int8_engines_are_built_for_real(tmp_path, xxs, q_all, monkeypatch):
    """INT8 Q/DQ files build with the installed builder (TensorRT-RTX on CI's CPU); runs on the trt tier."""
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    exp.path("model.int8.all.max.onnx").write_bytes(q_all[0].read_bytes())
    table = pd.DataFrame([{"precision": "int8", "policy": "all", "method": "max", "high_precision": "fp32",
                           "file": "model.int8.all.max.onnx"}])
    engines = engines_table.require_built(engines_table.build_all("04_int8", quant.engine_specs(exp, table),
                                                                  shapes.Profile(1, 2, 4)))
    row = engines.iloc[0]
    assert row.engine == "int8.all.max" and cache.has_plan_header(row.path, row.flavour)
    assert "QUANTIZE" in row.layers_by_type and "DEQUANTIZE" in row.layers_by_type


@pytest.mark.trt
@pytest.mark.skipif(not tiers.runtime_status()[0],
                    reason="no TensorRT runtime for this GPU: INT8 engines run on the trt tier")
def test_int8_engine_accuracy(tmp_path, xxs, images, ev, q_all, monkeypatch):
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    exp.path("model.int8.all.max.onnx").write_bytes(q_all[0].read_bytes())
    table = pd.DataFrame([{"precision": "int8", "policy": "all", "method": "max", "high_precision": "fp32",
                           "file": "model.int8.all.max.onnx"}])
    engines = engines_table.build_all("04_int8", quant.engine_specs(exp, table), shapes.Profile(1, 2, 4))
    out = quant.engine_accuracy(exp, table, ev, engines).iloc[0]
    onnxrt = ev.evaluate(exp.path("model.int8.all.max.onnx"))  # the same Q/DQ graph on ONNX Runtime
    assert abs(out.cosine_mean - onnxrt["cosine_mean"]) < 0.01 and out.top1_agreement >= onnxrt["top1_agreement"] - 0.2
    assert out.get("out_INT8", 0) > 0  # TensorRT really runs layers in INT8


def test_notebook_04_creates_the_files_it_lists(smoke_run):
    nb = nbformat.read(paths.NOTEBOOKS / "04_int8.ipynb", as_version=4)
    listed = set(re.findall(r"`((?:results|figures)/04_[\w.]+)`", nb.cells[0].source))
    trt_only = {"results/04_int8_trt_accuracy.csv", "results/04_fp8_trt_accuracy.csv"}
    assert trt_only <= listed
    made = {f"{p.parent.name}/{p.name}" for sub in ("results", "figures") for p in (smoke_run / sub).glob("04_*")}
    manifest = io.read_json(smoke_run / "manifest.json")
    expected = listed if manifest["tier"] == "trt" else listed - trt_only
    assert made == expected
    stages = {k: v for k, v in manifest["stages"].items() if k.startswith("04_int8/")}
    for prec in quant.PRECISIONS:
        assert stages[f"04_int8/trt_{prec}_engines"]["status"] == ("ok" if manifest["tier"] == "trt" else "skipped")
    assert all(v["status"] == "ok" for k, v in stages.items() if v["tier"] == "cpu")
    assert {"04_int8/fp8_opset", "04_int8/fp8_policies", "04_int8/fp8_sensitivity", "04_int8/fp8_choose"} <= set(stages)
    acc = pd.read_csv(smoke_run / "results" / "04_int8_accuracy.csv")
    if flavours.builder_status()[0]:  # every Q/DQ file of the accuracy table became an engine, FP8 ones for sm89
        assert stages["04_int8/engines"]["status"] == "ok" and stages["04_int8/fp8_engines"]["status"] == "ok"
        engines = pd.read_csv(smoke_run / "results" / engines_table.ENGINES_TABLE)
        mine = engines[engines.notebook == "04_int8"]
        assert set(mine.onnx) == set(acc.file) and mine.status.isin(["built", "reused"]).all()
        fp8_rows = mine[mine.onnx.isin(set(acc.file[acc.precision == "fp8"]))]
        assert len(fp8_rows) and (fp8_rows.target == "sm89").all()
    assert manifest["int8_images"]["source"] in data.SOURCES and manifest["int8"]["images"]
    for prec in quant.PRECISIONS:
        rows = acc[acc.precision == prec]
        assert set(rows.policy) == set(quant.POLICIES) and set(rows.method) == set(quant.METHODS)
        meta = io.read_json(paths.model_dir("mobilevit_xxs", "random-seed0", 256, 17) / f"model.{prec}.json")
        assert meta["passes"] == manifest[prec]["passes"] and meta["precision"] == prec
        if meta["passes"]:
            assert (paths.model_dir("mobilevit_xxs", "random-seed0", 256, 17) / f"model.{prec}.onnx").exists()
    assert acc.images.nunique() == 1 and acc.images.iloc[0] == manifest["int8_images"]["label"]
    sens = pd.read_csv(smoke_run / "results" / "04_sensitivity.csv")
    assert set(sens.precision) == set(quant.PRECISIONS) and (sens.images == acc.images.iloc[0]).all()
    for _, rows in sens.groupby("precision"):
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
    opset = pd.read_csv(smoke_run / "results" / "04_fp8_opset.csv")
    assert (opset.opset_after == 19).all() and opset.unchanged.all()


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
    fig = quant_plots.plot_accuracy(table, "fallback")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(labels) == len(set(labels)) == 5  # all, sensitivity, and one per chosen file and float type
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {"INT8 max", "INT8 entropy", "FP8 max"} <= set(legend)
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


_CHILD = """
import sys
import numpy as np
import mvlib  # noqa: F401  (its import-time fixes, before timm)
from mvlib import quant
src, calib, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
for prec in quant.PRECISIONS:
    quant.quantize(src, f"{out}.{prec}.onnx", calib, "max", precision=prec)
    quant.to_fp16(f"{out}.{prec}.onnx", f"{out}.{prec}.fp16.onnx")
"""


def test_two_quantizations_in_two_processes_give_identical_bytes(xxs, images, tmp_path):
    """model.int8.onnx / model.fp8.onnx come out byte for byte the same from a rerun (AutoCast's value_info order
    followed the interpreter's hash seed), so the engines keyed on their bytes are reused."""
    import os
    import subprocess
    import sys
    np.save(tmp_path / "calib.npy", images.calib)
    for seed in ("1", "2"):
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(xxs[0].onnx), str(tmp_path / "calib.npy"),
                               str(tmp_path / f"run{seed}")], env={**os.environ, "PYTHONHASHSEED": seed},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for prec in quant.PRECISIONS:
        for suffix in (f".{prec}.onnx", f".{prec}.fp16.onnx"):
            a, b = (tmp_path / f"run1{suffix}").read_bytes(), (tmp_path / f"run2{suffix}").read_bytes()
            assert a == b, f"{suffix}: two quantizations of the same inputs differ"
        names = [v.name for v in onnx.load(str(tmp_path / f"run1.{prec}.fp16.onnx")).graph.value_info]
        assert names == sorted(names)


def test_canonical_orders_value_info_and_keeps_the_graph(q_all, ev):
    model = onnx.load(str(q_all[0]))
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    infos = list(shuffled.graph.value_info)[::-1]
    assert infos, "expected shape information to reorder"
    shuffled.graph.ClearField("value_info")
    shuffled.graph.value_info.extend(infos)
    assert shuffled.SerializeToString() != model.SerializeToString()
    a, b = quant_graph.canonical(shuffled), quant_graph.canonical(model)
    assert a.SerializeToString() == b.SerializeToString()
    np.testing.assert_array_equal(ev.logits(a), ev.logits(q_all[0]))
