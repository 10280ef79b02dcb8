"""mvlib.quant: INT8 and FP8 with ModelOpt: unquantized exclusions, reused scales, choice, engines, notebook 04."""

from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import smoke

from mvlib import autocast, data, io, paths, quant, quant_eval, quant_graph, tiers
from mvlib.accuracy import INPUT, OUTPUT
from mvlib.export import Exported
from mvlib.tensorrt import cache, flavours, shapes
from mvlib.tensorrt import table as engines_table

pytest_plugins = ["quant_models"]  # the shared fixtures: images, ev, q_all, q_fp8


def _dq_readers(model):
    """Names of non-Q/DQ nodes that read a DequantizeLinear output."""
    return set(quant_graph.quantized_nodes(model))


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


def test_unknown_excluded_node_is_an_error(xxs, images, tmp_path):
    with pytest.raises(ValueError, match="not in the model"):
        quant.quantize(xxs[0].onnx, tmp_path / "x.onnx", images.calib, "max", ["/no/such/node"])
    with pytest.raises(ValueError, match="calibration method"):
        quant.quantize(xxs[0].onnx, tmp_path / "x.onnx", images.calib, "minmax")
    assert not (tmp_path / "x.onnx").exists()


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
    monkeypatch.setattr(quant, "to_fp16", lambda src, dst, **kw: io.write_bytes(dst, q_all[0].read_bytes()))  # fails
    table = pd.DataFrame([{"precision": "int8", "policy": "sensitivity", "method": "max", "high_precision": "fp32",
                           "file": "model.int8.fp32floats.onnx", "passes": True, "quantized_weighted_ops": 1,
                           "cosine_mean": 1.0, "excluded_nodes": 0, "quantized_nodes": 1}])
    out, meta = quant.write_chosen(exp, table, ev, "fp16")
    assert list(out.high_precision) == ["fp32", "fp16", "fp32"] and list(out.passes) == [True, False, True]
    assert meta["passes"] and meta["high_precision"] == "fp32" and "FP16" in meta["note"]
    assert exp.artifact("int8").read_bytes() == xxs[0].onnx.read_bytes()
    written = io.read_json(exp.artifact("int8_record"))
    assert written["file"] == exp.artifact("int8").name and written["policy"] == "sensitivity"


def test_the_chosen_models_fp16_conversion_is_kept_until_its_source_changes(tmp_path, xxs, ev, q_all, monkeypatch):
    """A rerun of notebook 04 converts nothing again (AutoCast's cleanup takes seconds even on mobilevit_xxs):
    model.int8.onnx is reused while the variant it came from has the same bytes, made again when they change, and
    an FP32-float fallback drops the conversion's record, so it is never taken for a conversion."""
    exp = _fake_exported(tmp_path, xxs[0].onnx)
    src = exp.path("model.int8.sensitivity.max.onnx")
    src.write_bytes(xxs[0].onnx.read_bytes())  # passes: it is FP32 itself
    made = []

    def convert(s, dst, **kw):  # a stand-in for AutoCast that counts its calls
        made.append(Path(s).read_bytes())
        io.write_bytes(dst, Path(s).read_bytes())
    monkeypatch.setattr(quant, "to_fp16", convert)
    table = pd.DataFrame([{"precision": "int8", "policy": "sensitivity", "method": "max", "high_precision": "fp32",
                           "file": src.name, "passes": True, "quantized_weighted_ops": 1, "cosine_mean": 1.0,
                           "excluded_nodes": 0, "quantized_nodes": 1}])
    for _ in range(2):
        assert quant.write_chosen(exp, table, ev, "fp16")[1]["high_precision"] == "fp16"
    assert len(made) == 1
    changed = onnx.load(str(src))
    changed.doc_string = "the same graph, other bytes"
    onnx.save(changed, str(src))
    quant.write_chosen(exp, table, ev, "fp16")
    assert len(made) == 2 and made[-1] == src.read_bytes() == exp.artifact("int8").read_bytes()
    changed.doc_string = "other bytes again"
    onnx.save(changed, str(src))
    monkeypatch.setattr(quant, "to_fp16", lambda s, dst, **kw: io.write_bytes(dst, q_all[0].read_bytes()))  # fails
    assert quant.write_chosen(exp, table, ev, "fp16")[1]["high_precision"] == "fp32"
    assert not io.key_path(exp.artifact("int8")).exists()
    monkeypatch.setattr(quant, "to_fp16", convert)
    quant.write_chosen(exp, table, ev, "fp16")
    assert len(made) == 3, "the FP32-float fallback was taken for a conversion"


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
    onnxrt = ev.evaluate(exp.path("model.int8.all.max.onnx"), "int8")  # the same Q/DQ graph on ONNX Runtime
    assert abs(out.cosine_mean - onnxrt["cosine_mean"]) < 0.01 and out.top1_agreement >= onnxrt["top1_agreement"] - 0.2
    assert out.get("out_INT8", 0) > 0  # TensorRT really runs layers in INT8


def test_notebook_04_smoke_run_records_both_precisions(smoke_run):
    """What notebook 04's smoke run wrote (its files are checked by tests/test_notebooks.py)."""
    manifest = io.read_json(smoke_run / "manifest.json")
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
        meta = io.read_json(smoke.model_dir() / f"model.{prec}.json")
        assert meta["passes"] == manifest[prec]["passes"] and meta["precision"] == prec
        assert meta["criterion"] == manifest[prec]["criterion"] == quant_eval.criterion(prec)
        if meta["passes"]:
            assert (smoke.model_dir() / f"model.{prec}.onnx").exists()
    assert acc.images.nunique() == 1 and acc.images.iloc[0] == manifest["int8_images"]["label"]
    sens = pd.read_csv(smoke_run / "results" / "04_sensitivity.csv")
    assert set(sens.precision) == set(quant.PRECISIONS) and (sens.images == acc.images.iloc[0]).all()
    for _, rows in sens.groupby("precision"):
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
    opset = pd.read_csv(smoke_run / "results" / "04_fp8_opset.csv")
    assert (opset.opset_after == 19).all() and opset.unchanged.all()


def test_quantize_reuses_a_result_only_for_the_same_inputs(xxs, images, q_all, tmp_path, monkeypatch):
    import shutil

    import modelopt.onnx.quantization as mq
    path = tmp_path / "all.onnx"
    shutil.copyfile(q_all[0], path)
    shutil.copyfile(io.key_path(q_all[0]), io.key_path(path))
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
    assert not io.key_path(path).exists(), "a failed rebuild must not leave a key that vouches for the old file"
    shutil.copyfile(io.key_path(q_all[0]), io.key_path(path))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(RuntimeError, match="ModelOpt called"):
        quant.quantize(xxs[0].onnx, path, images.calib, "max")


_CHILD = """
import sys
import numpy as np
from mvlib import autocast, quant
src, calib, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
quant.quantize(src, f"{out}.int8.onnx", calib, "max", precision="int8")
autocast.to_fp16(f"{out}.int8.onnx", f"{out}.int8.fp16.onnx", rules=False)
"""


def test_two_quantizations_in_two_processes_give_identical_bytes(xxs, images, q_all, tmp_path):
    """model.int8.onnx and its FP16 conversion come out byte for byte the same from a rerun (AutoCast's value_info
    order followed the interpreter's hash seed), so the engines keyed on their bytes are reused. INT8 alone, to keep
    make test within its time: FP8 goes through the same quantize and AutoCast code (one machinery)."""
    import os
    import random
    import subprocess
    import sys
    np.save(tmp_path / "calib.npy", images.calib)
    # One side is this session's shared Q/DQ models (made by a pytest process) and FP16 conversions made here; the
    # other a child under a fresh hash seed, never the one this process may have been given.
    seed = os.environ.get("PYTHONHASHSEED")
    while seed == os.environ.get("PYTHONHASHSEED"):
        seed = str(random.randrange(1, 2**31))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(xxs[0].onnx), str(tmp_path / "calib.npy"),
                              str(tmp_path / "child")], env={**os.environ, "PYTHONHASHSEED": seed},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    here = {"int8": q_all[0]}
    autocast.to_fp16(here["int8"], tmp_path / "here.int8.fp16.onnx", rules=False)
    _, err = child.communicate(timeout=900)
    assert child.returncode == 0, err[-3000:]
    for prec in here:
        fp16 = tmp_path / f"here.{prec}.fp16.onnx"
        for mine, suffix in ((here[prec], f".{prec}.onnx"), (fp16, f".{prec}.fp16.onnx")):
            assert mine.read_bytes() == (tmp_path / f"child{suffix}").read_bytes(), \
                f"{suffix}: two quantizations of the same inputs differ"
        names = [v.name for v in onnx.load(str(tmp_path / f"child.{prec}.fp16.onnx")).graph.value_info]
        assert names == sorted(names)


def _stage_fails():
    raise RuntimeError("ONNX Runtime cannot run FP8 Q/DQ here")


def test_a_contained_failure_is_recorded_and_the_notebook_goes_on(tmp_path):
    """Issue 25: FP8's failure in notebook 04 must not stop INT8's tables and engines; the run still fails."""
    from mvlib.driver import verdicts
    from mvlib.run import Run
    run = Run(tmp_path / "run", "04_int8")
    failures: list[str] = []
    stale = tmp_path / "model.fp8.onnx"
    stale.write_bytes(b"an earlier run's FP8 model")
    with quant.contained(run, "fp8", failures, stale=[stale]):
        run.stage("fp8_policies", "cpu", _stage_fails)  # records its own failure
    with quant.contained(run, "fp8_engines", failures):
        raise ValueError("outside any stage")
    with quant.contained(run, "trt_int8_engines", failures):
        assert run.stage("int8_after", "cpu", lambda: 42) == 42  # the other precision's later stage still runs
    stages = run.manifest()["stages"]
    assert stages["04_int8/fp8_policies"]["status"] == "failed" and "04_int8/fp8" not in stages
    assert stages["04_int8/fp8_engines"]["status"] == "failed" and "outside any stage" in stages[
        "04_int8/fp8_engines"]["reason"]
    assert stages["04_int8/int8_after"]["status"] == "ok"
    assert len(failures) == 2 and not stale.exists(), "a failed block leaves no earlier model for notebooks 05/06"
    problems = verdicts.stage_problems(run.manifest(), "cpu")
    assert any(p.startswith("04_int8/fp8_policies: failed") for p in problems)  # the driver fails the run
    with pytest.raises(KeyboardInterrupt), quant.contained(run, "fp8", failures):
        raise KeyboardInterrupt


_FAIL_FP8 = """
import mvlib.fp8


def _refuse():
    raise RuntimeError("forced by the test: this ONNX Runtime refuses FP8 Q/DQ")


mvlib.fp8.require_onnxruntime = _refuse
"""


def test_notebook_04_keeps_int8_when_fp8_fails(smoke_run, tmp_path):
    """Issue 25 item 3 end to end: notebook 04 alone (`--only 04`, the smoke run's models and engines reused) with
    FP8's ONNX Runtime check made to fail in the kernel: INT8's model, JSON, tables, figures and engines are still
    written, no FP8 model is left, and the run is marked failed with exit code 1."""
    import os
    import shutil
    import subprocess
    import sys

    from mvlib.driver import runfolder
    build = tmp_path / "build"
    for sub in ("models", "engines"):  # hard links: nothing is calibrated or built again, the originals untouched
        if (smoke.BUILD / sub).exists():
            shutil.copytree(smoke.BUILD / sub, build / sub, copy_function=os.link)
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(_FAIL_FP8)  # the driver's papermill kernel loads it too
    env = {**os.environ, "MVLIB_BUILD": str(build),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), str(paths.ROOT)])}
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mvlib.study", "--profile", "smoke", "--tier", "cpu", "--only", "04",
                           "--run-dir", str(run)], cwd=paths.ROOT, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = runfolder.incomplete_of(run)
    manifest = io.read_json(folder / "manifest.json")
    stages = manifest["stages"]
    assert manifest["outcome"]["status"] == "failed"
    assert stages["04_int8/fp8_policies"]["status"] == "failed" and "forced by the test" in stages[
        "04_int8/fp8_policies"]["reason"]
    assert all(stages[f"04_int8/{s}"]["status"] == "ok" for s in ("policies", "sensitivity", "choose"))
    acc = pd.read_csv(folder / "results" / "04_int8_accuracy.csv")
    assert set(acc.precision) == {"int8"} and set(acc.policy) == set(quant.POLICIES)
    assert set(pd.read_csv(folder / "results" / "04_sensitivity.csv").precision) == {"int8"}
    assert all((folder / "figures" / f).exists() for f in ("04_int8_accuracy.png", "04_sensitivity.png"))
    models = build / smoke.model_dir().relative_to(smoke.BUILD)
    assert io.read_json(models / "model.int8.json")["precision"] == "int8"
    assert not (models / "model.fp8.onnx").exists() and not (models / "model.fp8.json").exists()
    if flavours.builder_status()[0]:  # INT8's engines were still built (reused) and recorded
        assert stages["04_int8/engines"]["status"] == "ok"
        engines = pd.read_csv(folder / "results" / engines_table.ENGINES_TABLE)
        assert set(engines[engines.notebook == "04_int8"].onnx) == set(acc.file)


CALIB_N = 32  # calibration images of the side-by-side test: enough for every method, few enough for CI


def _notebook_04_policies(folder, src, calib, ev, side_by_side: bool) -> dict:
    """Notebook 04's fixed policies of both precisions on a fresh copy of `src` in `folder`, with the calibrations
    made side by side first or, the slow path, each by its own policy step; every variant's bytes. (The sensitivity
    policy and the chosen model are made from these variants by the same code on both paths.)"""
    folder.mkdir()
    exp = _fake_exported(folder, src)
    if side_by_side:
        made = quant.calibrate_all(exp, calib, workers=2)
        assert set(made.status) == {"made"} and len(made) == 2 * len(quant.PRECISIONS) * len(quant.METHODS)
    for prec in quant.PRECISIONS:
        quant.compare_policies(exp, calib, ev, ["all", "fp_attention"], precision=prec)
    return {f.name: f.read_bytes() for f in exp.dir.glob("model.*.onnx") if f.name != "model.onnx"}


@pytest.mark.slow
def test_calibrations_side_by_side_give_the_slow_paths_models_byte_for_byte(xxs, images, ev, tmp_path):
    """Issue 29: the calibrations run in parallel processes (fewer ONNX Runtime threads each) and the policies that
    reuse them give the very files of the sequential path: every INT8 and FP8 variant, byte for byte."""
    calib = images.calib[:CALIB_N]
    slow = _notebook_04_policies(tmp_path / "slow", xxs[0].onnx, calib, ev, side_by_side=False)
    fast = _notebook_04_policies(tmp_path / "fast", xxs[0].onnx, calib, ev, side_by_side=True)
    assert slow.keys() == fast.keys() and len(slow) == 2 * len(quant.PRECISIONS) * len(quant.METHODS)
    assert [k for k in slow if slow[k] != fast[k]] == []
    exp = _fake_exported(tmp_path / "fast", xxs[0].onnx)  # a second time: every calibration is found made
    assert set(quant.calibrate_all(exp, calib).status) == {"reused"}
