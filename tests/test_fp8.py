"""mvlib.fp8: FP8 beside INT8: the Q/DQ model, its opset, ONNX Runtime on the CPU, FP8 targets and engines."""
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from mvlib import env, fp8, onnxmodel, paths, precisions, quant, quant_graph
from mvlib.export import Exported
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cache, flavours, shapes
from mvlib.tensorrt import table as engines_table

needs_builder = pytest.mark.skipif(not flavours.builder_status("tensorrt_rtx")[0],
                                   reason="TensorRT-RTX not installed: it builds FP8 engines ahead of time")


pytest_plugins = ["quant_models"]  # the shared fixtures: images, ev, q_fp8


def test_onnxruntime_runs_fp8_qdq_on_the_cpu():
    ok, why = fp8.onnxruntime_runs_fp8()
    assert ok, why
    assert fp8.require_onnxruntime() == why


def test_the_fp8_probe_is_written_as_the_studys_fp8_models_are(q_fp8):
    """The probe asks about the models the study runs: the IR version and opset of ModelOpt's FP8 model, not the
    installed onnx's newest IR (14 under onnx 1.23, which ONNX Runtime 1.30 refuses at load)."""
    study = onnx.load(str(q_fp8[0]))
    probe = fp8._qdq_model(np.zeros((2, 3), np.float32), 0.1)
    opset = lambda m: next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))  # noqa: E731
    assert (probe.ir_version, opset(probe)) == (study.ir_version, opset(study)) == (onnxmodel.IR_VERSION, 19)


def _fix_not_installed(message: str) -> None:
    """The message names an ONNX Runtime to install that the installed one does not already satisfy."""
    import onnxruntime as ort
    from packaging.specifiers import SpecifierSet
    specs = re.findall(r"'onnxruntime([<>=!~][^']*)'", message)
    assert specs, f"no onnxruntime fix named: {message}"
    assert not any(SpecifierSet(s).contains(ort.__version__) for s in specs), message


def _probe_with(monkeypatch, change):
    """require_onnxruntime's error when the probe model is changed by `change` (model -> model) before ORT sees it."""
    made = fp8._qdq_model
    monkeypatch.setattr(fp8, "_qdq_model", lambda values, scale: change(made(values, scale)))
    assert not fp8.onnxruntime_runs_fp8()[0]
    with pytest.raises(RuntimeError) as err:
        fp8.require_onnxruntime()
    return str(err.value)


def test_a_refused_ir_version_is_named_with_a_fix_not_yet_installed(monkeypatch):
    """ONNX Runtime refuses an IR newer than it reads (onnx 1.23's make_model under ONNX Runtime 1.30): the message
    says so, with ONNX Runtime's own limit, instead of suggesting the range the project already installed."""
    def newer_ir(model):
        model.ir_version = 99
        return model
    message = _probe_with(monkeypatch, newer_ir)
    assert re.search(r"reads ONNX IR up to version \d+; the model is IR 99", message), message
    assert "onnxruntime>=1.20" not in message
    _fix_not_installed(message)


def test_a_refused_opset_is_named_with_a_fix_not_yet_installed(monkeypatch):
    def newer_opset(model):
        model.opset_import[0].version = 99
        return model
    message = _probe_with(monkeypatch, newer_opset)
    assert "opset 99" in message, message
    _fix_not_installed(message)


def test_a_missing_fp8_kernel_is_named_with_a_fix_not_yet_installed(monkeypatch):
    """ONNX Runtime's CPU QuantizeLinear has no BFLOAT16-to-FP8 kernel: a real 'no implementation' refusal."""
    def bfloat16_input(model):
        h = onnx.helper
        cast = h.make_node("Cast", ["x"], ["xb"], to=onnx.TensorProto.BFLOAT16)
        scale = h.make_tensor("scale_b", onnx.TensorProto.BFLOAT16, [], [0.05])
        q, dq = model.graph.node
        q.input[:2], dq.input[1] = ["xb", "scale_b"], "scale_b"
        model.graph.node.insert(0, cast)
        model.graph.initializer.append(scale)
        model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.BFLOAT16
        return model
    message = _probe_with(monkeypatch, bfloat16_input)
    assert "no CPU kernel for QuantizeLinear (opset 19)" in message and "IR 10, opset 19" in message, message
    _fix_not_installed(message)


def test_hand_made_models_are_made_at_the_studys_ir_version():
    """Every model mvlib or the tests make by hand goes through onnxmodel.make_model (IR 10), none through
    onnx.helper.make_model directly, whose IR follows the installed onnx."""
    direct = [f"{path.relative_to(paths.ROOT)}:{i}" for folder in ("mvlib", "tests")
              for path in sorted((paths.ROOT / folder).rglob("*.py")) if path.name != "onnxmodel.py"
              for i, line in enumerate(path.read_text().splitlines(), 1)
              if re.search(r"(?<!onnxmodel)\.make_model\(", line)]
    assert not direct, direct
    graph = onnx.helper.make_graph([], "g", [], [])
    assert onnxmodel.make_model(graph).ir_version == 10 and onnxmodel.make_model(graph).opset_import[0].version == 17


def test_fp8_model_is_e4m3_qdq_at_opset_19_and_unquantizing_it_gives_back_fp32(xxs, q_fp8, ev):
    """ModelOpt's FP8 model: E4M3 zero points, opset 19, and with every Q/DQ rewired away the FP32 logits: so
    ModelOpt's opset conversion and preprocessing left the float graph as it was."""
    path, info = q_fp8
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 19
    assert quant_graph.qdq_types(model) == {"fp8"}
    zero_points = {i.data_type for i in model.graph.initializer if i.name.endswith("_zero_point")}
    assert zero_points == {onnx.TensorProto.FLOAT8E4M3FN}
    per_op = info["quantized_per_op"]
    assert per_op.get("Conv", 0) > 0 and per_op.get("MatMul", 0) > 0 and info["quantized_weighted_ops"] > 50
    assert "GlobalAveragePool" not in per_op  # INT8 quantizes pooling inputs; ModelOpt's FP8 mode does not
    plain = quant_graph.isolate(model, [n.name for n in model.graph.node])
    assert not any(n.op_type in quant_graph.QDQ for n in plain.graph.node)
    assert np.abs(ev.logits(plain) - ev.reference).max() < 1e-4
    m = ev.evaluate(path, "fp8")  # and the FP8 rounding itself does change the logits
    assert 0 < m["max_abs"] and m["cosine_mean"] > 0.99


def test_opset_conversion_leaves_the_fp32_graph_unchanged(xxs):
    table = fp8.opset_check(xxs[0].onnx, 256, seed=5, batches=(1, 3))
    assert (table.opset_before == 17).all() and (table.opset_after == 19).all()
    assert list(table.batch) == [1, 3] and table.unchanged.all()
    assert table.max_abs.max() <= 1e-5 and table.cosine_min.min() > 0.999999 and (table.top1_agreement == 1).all()


@pytest.mark.parametrize("cap, ok", [("7.5", False), ("8.0", False), ("8.6", False), ("8.9", True), ("9.0", True),
                                     ("10.0", True), ("12.0", True), ("sm86", False), ("sm89", True),
                                     ("sm120", True), ((9, 0), True), (None, False)])
def test_which_gpus_have_fp8(cap, ok):
    has, why = fp8.has_fp8(cap)
    assert has is ok and (why == "") is ok
    if not ok:
        assert "8.9" in why


@pytest.fixture
def gpu(monkeypatch):
    """Set the compute capability this machine reports (our own seam), e.g. gpu('8.9'); None for no GPU."""
    def set_capability(cap):
        monkeypatch.setattr(flavours, "capability_here", lambda: cap)
    return set_capability


@needs_builder
@pytest.mark.parametrize("cap, asked, expected", [(None, "auto", "sm89"), ("8.6", "auto", "sm89"),
                                                  ("8.9", "auto", "sm89"), ("9.0", "auto", "sm89"),
                                                  ("12.0", "auto", "sm120"), (None, "sm120", "sm120"),
                                                  ("8.9", "sm89", "sm89")])
def test_rtx_fp8_target(gpu, cap, asked, expected):
    """TensorRT-RTX: this GPU where it has FP8 and RTX runs on it (not Hopper), else sm89."""
    gpu(cap)
    assert fp8.build_target("tensorrt_rtx", asked) == expected


@needs_builder
@pytest.mark.parametrize("asked, words", [("sm86", "no FP8 tensor cores"), ("sm80", "no FP8 tensor cores"),
                                          ("sm90", "builds for"), ("h100", "builds for")])
def test_rtx_fp8_target_without_fp8_is_refused(gpu, asked, words):
    gpu(None)
    with pytest.raises(ValueError, match=words):
        fp8.build_target("tensorrt_rtx", asked)


def test_full_tensorrt_builds_fp8_only_on_an_fp8_gpu(gpu, monkeypatch):
    monkeypatch.setattr(flavours, "select", lambda name="auto": flavours.Flavour("tensorrt", "10.16.0"))
    gpu("8.6")
    with pytest.raises(flavours.NoBuilder, match="8.9") as err:
        fp8.build_target("tensorrt", "auto")
    assert err.value.no_builder  # a build stage skipped for this reason does not fail the run
    gpu("9.0")
    assert fp8.build_target("tensorrt", "auto") == "auto"
    with pytest.raises(ValueError, match="only for this GPU"):
        fp8.build_target("tensorrt", "sm89")


def _engine(target):
    """A cached-engine record built by TensorRT-RTX for `target` (what fp8.runnable reads of it)."""
    return cache.Engine(Path("/nonexistent/engine.plan"), {"target": target, "flavour": "tensorrt_rtx",
                                                           "flavour_version": "1.7.1.116"})


def test_fp8_engines_run_only_on_an_fp8_gpu_they_were_built_for(gpu, monkeypatch):
    from mvlib.tensorrt import runner
    monkeypatch.setattr(runner, "runnable", lambda engine: engine)  # the flavour runs here; FP8's own checks remain
    gpu("8.6")
    with pytest.raises(fp8.NoFP8, match="no FP8 tensor cores") as err:
        fp8.runnable(_engine("sm89"))
    assert err.value.no_fp8_hardware
    gpu("8.9")
    assert fp8.runnable(_engine("sm89")).info["target"] == "sm89"
    gpu("12.0")
    with pytest.raises(StageSkipped, match="built for sm89") as err:
        fp8.runnable(_engine("sm89"))
    assert not getattr(err.value, "no_fp8_hardware", False)


def _exported_with(tmp_path, xxs, files):
    """An Exported in a temporary folder: the FP32 export plus `files` ({name: source path})."""
    (tmp_path / "model.onnx").write_bytes(xxs[0].onnx.read_bytes())
    for name, src in files.items():
        (tmp_path / name).write_bytes(Path(src).read_bytes())
    return Exported(tmp_path, tmp_path / "model.onnx", {"tag": "t"}, {})


@needs_builder
def test_fp8_engines_build_for_sm89_and_the_builder_refuses_sm86(tmp_path, xxs, q_fp8, monkeypatch, gpu):
    """What TensorRT-RTX makes of the FP8 graph: FP8 convolutions and matmuls for sm89; nothing for sm86."""
    gpu(None)
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    exp = _exported_with(tmp_path, xxs, {"model.fp8.all.max.onnx": q_fp8[0]})
    specs = [engines_table.EngineSpec("fp8.all.max", exp.path("model.fp8.all.max.onnx"))]
    engines = engines_table.require_built(fp8.build_engines("04_int8", specs, shapes.Profile(1, 2, 4),
                                                            "tensorrt_rtx", "auto"))
    row = engines.iloc[0]
    assert row.target == "sm89" and cache.has_plan_header(row.path, row.flavour)
    assert "QUANTIZE" in row.layers_by_type and "DEQUANTIZE" in row.layers_by_type
    assert "FP8" in str(row.compute_precision), row.compute_precision  # the builder's own layer listing
    with pytest.raises(cache.BuildFailed, match="fp8"):
        cache.build_engine(exp.path("model.fp8.all.max.onnx"), shapes.Profile(1, 2, 4),
                           flavours.select("tensorrt_rtx"), "sm86")


@needs_builder
@pytest.mark.skipif(env.nvcc_path() is None, reason="nvcc not found: the SiLU plugin cannot be compiled here")
def test_plugin_fp8_engine_builds_for_sm89(tmp_path, xxs, q_fp8, monkeypatch, gpu):
    """The SiLU plugin takes FP32/FP16: in the FP8 graph each SiLU sits between float tensors (DQ outputs and
    float ops), so the plugin rewrite of model.fp8.onnx is proven on the CPU and builds with 34 plugin layers."""
    from mvlib.silu import build, engines
    headers = os.environ.get("TRT_INCLUDE") or str(paths.ROOT.parent / "shared" / "tensorrt-include" / "11.1"
                                                   / "include")
    if not Path(headers, "NvInferRuntime.h").is_file():
        pytest.skip("no TensorRT 11 headers: set TRT_INCLUDE to compile the plugin")
    gpu(None)
    monkeypatch.setenv("SILU_ARCHS", "-gencode=arch=compute_89,code=sm_89")  # one architecture: quicker
    info = build.build(trt_include=headers, build_root=tmp_path / "b", trt_flavour="tensorrt_rtx")
    assert info.get("plugin"), info.get("note")
    monkeypatch.setattr(paths, "PLUGIN_BUILD", build.build_dir(tmp_path / "b"))
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    exp = _exported_with(tmp_path, xxs, {quant.chosen_name("fp8"): q_fp8[0]})
    row = engines.rewrite_model(exp, "fp8", 256, seed=3)
    assert row["status"] == "ok" and row["plugin_nodes"] == 34 and row["rewritten"] == "model.fp8.silu.onnx"
    assert row["pairs_left"] == 0 and row["cpu_atol"] == precisions.get("fp8").rewrite_tolerance[0]
    assert quant_graph.qdq_types(exp.artifact("plugin_fp8")) == {"fp8"}
    table = engines.build_engines(exp, ["fp8"], shapes.Profile(1, 2, 4), "tensorrt_rtx")
    built = engines_table.require_built(table).iloc[0]
    assert built.engine == "plugin_fp8" and built.target == "sm89"
    assert built.plugin_layers == built.plugin_nodes_in_onnx == 34


@pytest.mark.trt
@pytest.mark.skipif(not (flavours.capability_here() and fp8.has_fp8(flavours.capability_here())[0]
                         and __import__("mvlib.tiers").tiers.runtime_status()[0]),
                    reason="FP8 engines run on a trt-tier GPU with FP8 (compute capability 8.9+)")
def test_fp8_engine_accuracy(tmp_path, xxs, q_fp8, ev, monkeypatch):
    import pandas as pd
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    exp = _exported_with(tmp_path, xxs, {"model.fp8.all.max.onnx": q_fp8[0]})
    table = pd.DataFrame([{"precision": "fp8", "policy": "all", "method": "max", "high_precision": "fp32",
                           "file": "model.fp8.all.max.onnx"}])
    engines = fp8.build_engines("04_int8", quant.engine_specs(exp, table, "fp8"), shapes.Profile(1, 2, 4))
    out = quant.engine_accuracy(exp, table, ev, engines, fp8.runnable).iloc[0]
    onnxrt = ev.evaluate(exp.path("model.fp8.all.max.onnx"), "fp8")  # the same Q/DQ graph on ONNX Runtime
    assert out.precision == "fp8" and abs(out.cosine_mean - onnxrt["cosine_mean"]) < 0.01
    assert out.get("out_FP8", 0) > 0  # TensorRT really runs layers in FP8
