"""mvlib.autocast: FP16 through ModelOpt AutoCast, the accuracy table's numbers, and notebook 03's smoke run."""
import logging
import shutil

import nbformat
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import smoke
import torch

from mvlib import accuracy, autocast, io, metrics, ort_providers, paths, precisions, tiers
from mvlib.run import Run
from mvlib.skips import StageSkipped
from mvlib.tensorrt import flavours
from mvlib.tensorrt import table as engines_table


@pytest.fixture(scope="module")
def fp16_xxs(xxs, tmp_path_factory):
    """mobilevit_xxs converted once with AutoCast's default rules."""
    dst = tmp_path_factory.mktemp("fp16") / precisions.get("fp16").artifact
    return autocast.convert_fp16(xxs[0].onnx, dst, seed=0)


def _ort(path, x):
    """Logits of an ONNX file on the CPU."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {accuracy.INPUT: x})[0]


def test_fp16_keeps_io_fp32_and_runs_close_to_fp32(xxs, fp16_xxs):
    model = onnx.load(str(fp16_xxs.path))
    assert autocast.io_types(fp16_xxs.path) == {accuracy.INPUT: "FLOAT", accuracy.OUTPUT: "FLOAT"}
    opset = lambda m: next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))  # noqa: E731
    assert opset(model) == opset(onnx.load(str(xxs[0].onnx))) == 17  # TensorRT 10.0's parser takes 9..20
    weights = [i.data_type for i in model.graph.initializer
               if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert weights.count(onnx.TensorProto.FLOAT16) > 0.9 * len(weights)  # the weights really are FP16
    s = fp16_xxs.summary
    assert s["autocast_fp16_nodes"] / s["autocast_nodes"] > 0.9 and s["casts_added"] > 0
    x = metrics.random_images(2, 256, seed=5)
    ref, out = _ort(xxs[0].onnx, x), _ort(fp16_xxs.path, x)
    assert out.dtype == np.float32
    m = metrics.compare(ref, out)
    assert 1e-6 < m["max_abs"] < 1e-2 and m["cosine_min"] > 0.9999  # FP16 rounding: visible but small


def test_fp32_node_table_says_why(fp16_xxs):
    nodes = fp16_xxs.fp32_nodes
    assert len(nodes) == fp16_xxs.summary["kept_fp32_by_rule"] > 0
    assert (nodes["autocast_reason"].str.len() > 0).all()
    # MobileViT's unfold/fold shape arithmetic exceeds data_max; AutoCast flags it by range
    assert set(nodes["rule"]) == {"data_max (activation range)"}
    assert nodes["autocast_reason"].str.contains("out of range").all()
    integer_only = nodes[nodes["float_tensors"] == "none"]
    assert set(integer_only["op_type"]) <= {"Mul", "Unsqueeze", "Concat", "Gather", "Shape", "Div", "Add"}
    assert integer_only["effect"].str.startswith("no float math").all()
    moving = nodes[nodes["float_tensors"] == "FP32"]
    assert set(moving["op_type"]) == {"Reshape"} and moving["effect"].str.startswith("moves FP32 data").all()
    assert fp16_xxs.summary["fp32_float_nodes"] == len(moving)


def test_excluded_op_types_stay_fp32_with_their_reason(xxs, tmp_path):
    result = autocast.convert_fp16(xxs[0].onnx, tmp_path / "m.onnx", op_types_to_exclude=["Softmax"])
    softmax = result.fp32_nodes[result.fp32_nodes["op_type"] == "Softmax"]
    n_softmax = sum(n.op_type == "Softmax" for n in onnx.load(str(xxs[0].onnx)).graph.node)
    assert len(softmax) == n_softmax > 0
    assert (softmax["rule"] == "op type excluded").all() and (softmax["float_tensors"] == "FP32").all()
    assert (softmax["effect"] == "computes in FP32").all()


def test_ensure_fp16_reuses_only_a_matching_conversion(xxs, tmp_path, monkeypatch):
    src = tmp_path / "model.onnx"
    shutil.copyfile(xxs[0].onnx, src)
    calls = []

    def fake_convert(s, d, seed=0, data_max=autocast.DATA_MAX, precision="fp16"):  # stands in for 10 s of AutoCast
        calls.append(data_max)
        io.write_bytes(d, b"converted %d" % len(calls))
        return autocast.Fp16Model(d, pd.DataFrame([{"node": "n", "op_type": "Reshape"}]),
                                   {"nodes_before": 1, "casts_added": len(calls), "autocast_fp16_nodes": 9,
                                    "autocast_nodes": 10, "kept_fp32_by_rule": 1, "fp32_float_nodes": 1})

    monkeypatch.setattr(autocast, "convert_fp16", fake_convert)
    first = autocast.ensure_fp16(src)
    reused = autocast.ensure_fp16(src)
    assert reused.summary == first.summary and len(calls) == 1  # reused
    assert list(reused.summary) == list(first.summary)  # same column order in the tables it feeds
    assert list(autocast.ensure_fp16(src).fp32_nodes["op_type"]) == ["Reshape"]
    autocast.ensure_fp16(src, data_max=256.0)  # other settings
    assert len(calls) == 2
    io.write_bytes(src.with_name(precisions.get("fp16").artifact), b"tampered")  # the file no longer matches its record
    autocast.ensure_fp16(src, data_max=256.0)
    assert len(calls) == 3


def test_captured_logs_collect_a_library_s_messages_and_show_them_only_on_failure(capsys):
    lib, root = logging.getLogger("mvlib-test-library"), logging.getLogger()
    before = (lib.level, lib.propagate, root.level)
    with autocast.captured_logs("mvlib-test-library") as got:
        lib.info("Skipping node a: out of range")
        print("per-node chatter")
    assert got.messages == [(logging.INFO, "Skipping node a: out of range")]
    assert capsys.readouterr().out == ""  # nothing shown while the call succeeds
    with pytest.raises(RuntimeError, match="boom"), autocast.captured_logs("mvlib-test-library"):
        lib.warning("careful: weights out of range")
        print("per-node chatter")
        raise RuntimeError("boom")
    shown = capsys.readouterr().out
    assert "careful: weights out of range" in shown and "per-node chatter" in shown  # the failure shows both
    assert (lib.level, lib.propagate, root.level) == before


def test_one_fp16_conversion_without_rules_turns_every_float_node_fp16(xxs, tmp_path):
    """rules=False (notebook 04's Q/DQ models): no reference run, no node kept FP32, I/O FP32, canonical bytes."""
    model, _ = autocast.to_fp16(xxs[0].onnx, tmp_path / "a.onnx", rules=False)
    autocast.to_fp16(xxs[0].onnx, tmp_path / "b.onnx", rules=False)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert autocast.io_types(tmp_path / "a.onnx") == {accuracy.INPUT: "FLOAT", accuracy.OUTPUT: "FLOAT"}
    kept = autocast.fp32_nodes(model, {})
    assert (kept["float_tensors"] != "FP32").all() or set(kept["op_type"]) <= autocast.MOVES_DATA
    with pytest.raises(FileNotFoundError, match="export the FP32 model first"):
        autocast.to_fp16(tmp_path / "missing.onnx", tmp_path / "c.onnx")


def test_the_conversion_makes_the_lower_float_type_of_the_precision_passed_down(xxs, tmp_path, monkeypatch):
    """A precision added to the table in bfloat16 is converted by the same call, its type from the precision;
    a precision that is no lower float type is refused before anything is read."""
    import dataclasses
    monkeypatch.setitem(precisions.TABLE, "bf16", dataclasses.replace(
        precisions.get("fp16"), name="bf16", label="BF16", torch_dtype="bfloat16", numpy_dtype="bfloat16"))
    model, _ = autocast.to_fp16(xxs[0].onnx, tmp_path / "bf16.onnx", rules=False, precision="bf16")
    types = {t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.BFLOAT16 in types and onnx.TensorProto.FLOAT16 not in types
    for name in ("fp32", "int8"):
        with pytest.raises(ValueError, match=f"{precisions.label(name)} is not one"):
            autocast.to_fp16(tmp_path / "missing.onnx", tmp_path / "c.onnx", precision=name)


class _Shifted(torch.nn.Module):
    """A model whose logits are the wrapped model's plus a known constant."""

    def __init__(self, model, delta):
        super().__init__()
        self.model, self.delta = model, delta

    def forward(self, x):
        return self.model(x) + self.delta


def test_accuracy_table_numbers(xxs, fp16_xxs, tmp_path):
    exported, model = xxs
    imgs = autocast.images(3, [1, 2], 256, seed=11)
    assert imgs.shape == (4, 3, 256, 256)  # 3 images rounded up to whole batches of 2
    runners = [accuracy.torch_runner(model, 256, "pytorch-fp32"), accuracy.onnxrt_runner(exported.onnx, "onnxrt-fp32"),
               accuracy.onnxrt_runner(fp16_xxs.path, "onnxrt-fp16"),
               accuracy.torch_runner(_Shifted(model, 0.01), 256, "shifted")]
    judged = {"pytorch-fp32": "fp32", "onnxrt-fp32": "fp32", "onnxrt-fp16": "fp16", "shifted": "fp32"}
    table, errors = autocast.compare_runners(runners, "pytorch-fp32", imgs, [1, 2], 3, judged)
    row = table.set_index(["runner", "batch"])
    assert row.loc[("pytorch-fp32", 1), "status"] == "reference"
    assert row.loc[("pytorch-fp32", 2), "reference"] == "pytorch-fp32 (batch 1)"
    assert row.loc[("pytorch-fp32", 1), "n"] == 3 and row.loc[("onnxrt-fp32", 2), "n"] == 4
    for b in (1, 2):
        assert row.loc[("onnxrt-fp32", b), "max_abs"] < 1e-4 and bool(row.loc[("onnxrt-fp32", b), "passed"])
        fp16 = row.loc[("onnxrt-fp16", b)]
        assert row.loc[("onnxrt-fp32", b), "max_abs"] < fp16["max_abs"] < 1e-2 and bool(fp16["passed"])
        shifted = row.loc[("shifted", b)]  # a constant error of 0.01 on every logit
        assert shifted["max_abs"] == pytest.approx(0.01, rel=1e-3)
        assert shifted["mean_abs"] == pytest.approx(0.01, rel=1e-3)
        assert shifted["top1_agreement"] == 1.0 and shifted["samples_within_tol"] == 0
        assert not shifted["passed"] and shifted["status"] == "outside tolerance"
        assert (shifted["atol"], shifted["rtol"], shifted["min_cosine"]) == (1e-4, 1e-3, 0.99999)  # fp32's bounds
        assert (fp16["atol"], fp16["rtol"], fp16["min_cosine"]) == (5e-2, 5e-2, 0.999)
    # per-sample rows add up to the table's rows
    for (runner, batch), g in errors.groupby(["runner", "batch"]):
        assert g["max_abs"].max() == pytest.approx(row.loc[(runner, batch), "max_abs"])
        assert g["within_tol"].sum() == row.loc[(runner, batch), "samples_within_tol"]
    # the figure is drawn from the saved tables, outside pyplot's global state
    import matplotlib.pyplot as plt
    table.to_csv(tmp_path / "t.csv", index=False)
    errors.to_csv(tmp_path / "e.csv", index=False)
    open_before = plt.get_fignums()
    fig = autocast.error_figure(tmp_path / "e.csv", tmp_path / "t.csv")
    assert len(fig.axes) == 2 and len(fig.axes[0].get_yticklabels()) == errors.groupby(["runner", "batch"]).ngroups
    assert plt.get_fignums() == open_before


def test_cpu_accuracy_side_by_side_gives_the_table_of_one_after_the_other(xxs, fp16_xxs, monkeypatch):
    import os
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: run_apart runs the runners in this process, one after the other")
    exported, model = xxs
    imgs = autocast.images(3, [1, 2], 256, seed=11)

    def not_here(*_a, **_k):
        raise AssertionError("the runners must run in processes of their own, not in this one")
    judged = {"pytorch-fp32": "fp32", "onnxrt-fp32": "fp32", "onnxrt-fp16": "fp16"}
    runners = lambda: [accuracy.torch_runner(model, 256, "pytorch-fp32"),  # noqa: E731
                       accuracy.onnxrt_runner(exported.onnx, "onnxrt-fp32"),
                       accuracy.onnxrt_runner(fp16_xxs.path, "onnxrt-fp16")]
    with ort_providers.on_cpu():  # the CPU's bits on any machine (the CUDA EP's may vary between sessions)
        with monkeypatch.context() as m:
            m.setattr(accuracy, "run", not_here)  # spawned processes import their own, unpatched
            m.setattr(accuracy, "APART_MIN_IMAGES", 0)  # 7 images: apart all the same
            apart, apart_errors = autocast.cpu_accuracy(model, exported.onnx, fp16_xxs.path, imgs, 3, [1, 2])
        default = autocast.compare_runners(runners(), "pytorch-fp32", imgs, [1, 2], 3, judged)[0]
        before = torch.get_num_threads()
        torch.set_num_threads(autocast.cpu_threads()[0])  # PyTorch's last bits follow its thread count
        try:
            same, same_errors = autocast.compare_runners(runners(), "pytorch-fp32", imgs, [1, 2], 3, judged)
        finally:
            torch.set_num_threads(before)
    pd.testing.assert_frame_equal(apart, same)  # byte for byte, at the same PyTorch thread count
    pd.testing.assert_frame_equal(apart_errors, same_errors)
    verdicts = ["runner", "reference", "batch", "n", "status", "passed", "samples_within_tol", "top1_agreement"]
    pd.testing.assert_frame_equal(apart[verdicts], default[verdicts])  # and the same verdicts at any
    np.testing.assert_allclose(apart["max_abs"].astype(float), default["max_abs"].astype(float), atol=1e-6)


def test_run_apart_keeps_a_small_job_in_this_process(monkeypatch):
    """Fewer images than APART_MIN_IMAGES: no process is spawned (its start would cost more than the job)."""
    calls = []
    monkeypatch.setattr(accuracy, "run", lambda runners, data: calls.append(len(runners)) or {})
    rng = np.random.default_rng(0)
    feeds = [{accuracy.INPUT: rng.random((b, 3, 8, 8), np.float32)} for b in (1, 4, 4)]
    assert accuracy.run_apart([lambda: "a", lambda: "b", lambda: "c"], feeds) == {} and calls == [3]


def test_skipped_rows_give_the_reason(monkeypatch):
    monkeypatch.setattr(tiers, "runtime_status", lambda: (False, "no TensorRT runtime here"))
    table, errors = autocast.skipped("no CUDA GPU visible", ["trt-fp32", "trt-fp16"], "onnxrt-fp32", [1, 16, 32])
    assert len(table) == 6 and errors.empty and table["max_abs"].isna().all()
    assert (table["status"] == "skipped: no TensorRT runtime here; no CUDA GPU visible").all()  # the runtime's first
    both = autocast.skipped("no TensorRT runtime here; no CUDA GPU visible", ["trt-fp32"], "onnxrt-fp32", [1])[0]
    assert both["status"].iloc[0].count("no TensorRT runtime") == 1  # a reason that names it already: said once
    monkeypatch.setattr(tiers, "runtime_status", lambda: (True, "TensorRT-RTX"))
    assert autocast.skipped("", ["trt-fp32"], "onnxrt-fp32", [1])[0]["status"].iloc[0] == "skipped: not run"


def test_the_stage_skip_reason_reaches_the_rows(tmp_path):
    def no_engine():
        raise StageSkipped("no engine was built")

    run = Run(tmp_path / "r", "03_test")
    assert run.stage("trt_accuracy", "cpu", no_engine) is None and run.stage("ran", "cpu", lambda: 1) == 1
    assert run.skip_reason("trt_accuracy") == "no engine was built"
    assert run.skip_reason("ran") == "" and run.skip_reason("never_tried") == ""
    table, _ = autocast.skipped(run.skip_reason("trt_accuracy"), ["trt-fp32"], "onnxrt-fp32", [1])
    assert table["status"].str.contains("no engine was built").all()


def test_notebook_03_smoke_run_judges_every_runner(smoke_run):
    """What notebook 03's smoke run wrote (its files are checked by tests/test_notebooks.py)."""
    nb = nbformat.read(paths.NOTEBOOKS / "03_fp32_fp16.ipynb", as_version=4)
    assert "`model.fp16.onnx`" in nb.cells[0].source and "`model.fp16.onnx.key.json`" in nb.cells[0].source
    model_dir = smoke.model_dir()  # the run builds in its own folder
    assert (model_dir / "model.fp16.onnx").exists() and io.key_path(model_dir / "model.fp16.onnx").exists()
    table = pd.read_csv(smoke_run / "results" / "03_accuracy.csv")
    for runner, name in (("onnxrt-fp32", "fp32"), ("onnxrt-fp16", "fp16")):  # the table's bounds, in every row
        tol = precisions.get(name).tolerance
        rows = table[table.runner == runner]
        assert (rows[["atol", "rtol", "min_cosine"]] == [tol.atol, tol.rtol, tol.min_cosine]).all(axis=None)
    cpu = table[table.runner.isin(["onnxrt-fp32", "onnxrt-fp16"])]
    assert set(cpu.batch) == {1, 4} and (cpu.status == "ok").all() and (cpu.n == 8).all()
    trt_rows = table[table.runner.str.startswith("trt-")]
    assert set(trt_rows.batch) == {1, 2, 4} and len(trt_rows) == 6
    if not tiers.runtime_status()[0]:
        assert trt_rows.status.str.startswith("skipped: ").all()
    errors = pd.read_csv(smoke_run / "results" / "03_errors.csv")
    assert len(errors[errors.runner == "onnxrt-fp16"]) == 16  # 8 images at batch 1 and at batch 4
    assert (smoke_run / "figures" / "03_errors.png").read_bytes()[:4] == b"\x89PNG"
    stages = io.read_json(smoke_run / "manifest.json")["stages"]
    assert stages["03_fp32_fp16/cpu_accuracy"]["status"] == "ok"
    has_builder = flavours.builder_status()[0]
    assert stages["03_fp32_fp16/engines"]["status"] == ("ok" if has_builder else "skipped")
    if has_builder:
        engines = pd.read_csv(smoke_run / "results" / engines_table.ENGINES_TABLE)
        mine = engines[engines.notebook == "03_fp32_fp16"]
        assert list(mine.engine) == ["fp32", "fp16"] and list(mine.onnx) == ["model.onnx", "model.fp16.onnx"]
        assert mine.status.isin(["built", "reused"]).all()
