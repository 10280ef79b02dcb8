"""mvlib.silu.onnx_rewrite: hand-built graphs (both input orders, FP16, INT8 and FP8 Q/DQ), the exported model, the
CPU proof and its tolerance by the precision passed down."""
import collections
import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from mvlib import accuracy, onnxmodel, paths, precisions
from mvlib.silu import onnx_rewrite

HEADER = paths.PLUGIN_SRC / "silu_plugin_id.h"


def _model(nodes, inputs, outputs, inits=(), dtype=T.FLOAT):
    """A small opset-17 model with [2, 3, 4] tensors of `dtype`."""
    vi = lambda n: h.make_tensor_value_info(n, dtype, [2, 3, 4])  # noqa: E731
    graph = h.make_graph(nodes, "g", [vi(i) for i in inputs], [vi(o) for o in outputs], initializer=list(inits))
    model = onnxmodel.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _save(model, path):
    onnx.save(model, str(path))
    return path


def _ops(path):
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _run(path, feeds, cpu_copy=False):
    sess = (onnx_rewrite.cpu_session(path) if cpu_copy
            else ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    return sess.run(None, feeds)


def _silu64(x):
    x = x.astype(np.float64)
    return x / (1 + np.exp(-x))


def test_plugin_identity_comes_from_the_one_header():
    text = HEADER.read_text()
    pid = onnx_rewrite.plugin_id()
    for key, value in (("NAME", pid.name), ("VERSION", pid.version), ("NAMESPACE", pid.namespace)):
        assert f'#define SILU_PLUGIN_{key} "{value}"' in text
    # onnx_rewrite.py reads the header rather than repeating the values, and so does the plugin
    source = (paths.ROOT / "mvlib" / "silu" / "onnx_rewrite.py").read_text()
    assert f'"{pid.name}"' not in source and f"'{pid.name}'" not in source
    assert pid.name != "Swish"  # TensorRT 11 imports Swish natively, bypassing the plugin
    plugin = (paths.PLUGIN_SRC / "silu_plugin.cpp").read_text()
    assert '#include "silu_plugin_id.h"' in plugin
    assert f'"{pid.name}"' not in plugin and f'"{pid.namespace}"' not in plugin


def test_header_without_name_is_refused(tmp_path):
    bad = tmp_path / "silu_plugin_id.h"
    bad.write_text('#define SILU_PLUGIN_VERSION "1"\n#define SILU_PLUGIN_NAMESPACE "x"\n')
    with pytest.raises(ValueError, match="SILU_PLUGIN_NAME"):
        onnx_rewrite.plugin_id(bad)


def test_both_input_orders_rewritten_and_nothing_else(tmp_path):
    nodes = [
        h.make_node("Sigmoid", ["x"], ["s1"], name="/a/act/Sigmoid"),
        h.make_node("Mul", ["x", "s1"], ["y1"], name="/a/act/Mul"),        # x * sigmoid(x)
        h.make_node("Sigmoid", ["y1"], ["s2"], name="/b/act/Sigmoid"),
        h.make_node("Mul", ["s2", "y1"], ["y2"], name="/b/act/Mul"),       # sigmoid(x) * x
        h.make_node("Sigmoid", ["y2"], ["s3"], name="/c/Sigmoid"),
        h.make_node("Mul", ["z", "s3"], ["y3"], name="/c/Mul"),            # z * sigmoid(y2): not SiLU
        h.make_node("Sigmoid", ["y3"], ["s4"], name="/d/Sigmoid"),
        h.make_node("Mul", ["y3", "s4"], ["y4"], name="/d/Mul"),           # SiLU, but s4 is also an output
    ]
    src = _save(_model(nodes, ["x", "z"], ["y4", "s4"]), tmp_path / "m.onnx")
    out = tmp_path / "m.silu.onnx"
    report = onnx_rewrite.rewrite(src, out)
    assert report.pairs == 2 and not report.already_rewritten
    assert "2 Sigmoid+Mul" in report.message
    rewritten = onnx.load(str(out))
    pid = onnx_rewrite.plugin_id()
    plugins = [n for n in rewritten.graph.node if n.op_type == pid.name]
    assert [(list(n.input), list(n.output)) for n in plugins] == [(["x"], ["y1"]), (["y1"], ["y2"])]
    for n in plugins:
        assert n.domain == onnx_rewrite.TRT_DOMAIN
        attrs = {a.name: h.get_attribute_value(a).decode() for a in n.attribute}
        assert attrs == {"plugin_version": pid.version, "plugin_namespace": pid.namespace}
    assert n.name == "/b/act/" + pid.name
    assert any(o.domain == onnx_rewrite.TRT_DOMAIN for o in rewritten.opset_import)
    assert _ops(out) == collections.Counter({"Sigmoid": 2, "Mul": 2, pid.name: 2})
    assert onnx_rewrite.graph_diff(src, out) == []
    onnx.checker.check_model(rewritten)

    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(0, 3, (2, 3, 4)).astype(np.float32), "z": rng.normal(0, 3, (2, 3, 4)).astype(np.float32)}
    ref, got = _run(src, feeds), _run(out, feeds, cpu_copy=True)
    for r, g in zip(ref, got, strict=True):
        assert np.abs(r - g).max() <= 1e-6
    # the stand-in really computes SiLU (a Python op returning x would fail this)
    probe = _save(_model([h.make_node("Sigmoid", ["x"], ["s"]), h.make_node("Mul", ["s", "x"], ["y"])], ["x"], ["y"]),
                  tmp_path / "probe.onnx")
    onnx_rewrite.rewrite(probe, tmp_path / "probe.silu.onnx")
    (y,) = _run(tmp_path / "probe.silu.onnx", {"x": feeds["x"]}, cpu_copy=True)
    np.testing.assert_allclose(y, _silu64(feeds["x"]), rtol=1e-7, atol=1e-7)


def test_fp16_pair_rewritten_and_runs_on_the_cpu(tmp_path):
    nodes = [h.make_node("Sigmoid", ["x"], ["s"]), h.make_node("Mul", ["s", "x"], ["y"])]
    src = _save(_model(nodes, ["x"], ["y"], dtype=T.FLOAT16), tmp_path / "m.onnx")
    out = tmp_path / "m.silu.onnx"
    assert onnx_rewrite.rewrite(src, out).pairs == 1
    x = np.random.default_rng(1).normal(0, 4, (2, 3, 4)).astype(np.float16)
    (y,) = _run(out, {"x": x}, cpu_copy=True)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, _silu64(x).astype(np.float32).astype(np.float16))
    (ref,) = _run(src, {"x": x})
    assert np.abs(ref.astype(np.float32) - y.astype(np.float32)).max() <= 2 * np.spacing(np.float16(np.abs(x).max()))


def _qdq(x, out, suffix=""):
    """QuantizeLinear -> DequantizeLinear nodes for tensor x (scale and zero point as initializers)."""
    return [h.make_node("QuantizeLinear", [x, "scale", "zp"], [f"q{suffix}"], name=f"Q{suffix}"),
            h.make_node("DequantizeLinear", [f"q{suffix}", "scale", "zp"], [out], name=f"DQ{suffix}")]


QDQ_INITS = [h.make_tensor("scale", T.FLOAT, [], [0.05]), h.make_tensor("zp", T.INT8, [], [0])]


def test_qdq_pair_on_one_dq_output_is_rewritten(tmp_path):
    nodes = _qdq("x", "d") + [h.make_node("Sigmoid", ["d"], ["s"]), h.make_node("Mul", ["d", "s"], ["y"])]
    src = _save(_model(nodes, ["x"], ["y"], QDQ_INITS), tmp_path / "m.onnx")
    out = tmp_path / "m.silu.onnx"
    assert onnx_rewrite.rewrite(src, out).pairs == 1
    assert _ops(out) == collections.Counter({"QuantizeLinear": 1, "DequantizeLinear": 1,
                                             onnx_rewrite.plugin_id().name: 1})
    assert onnx_rewrite.graph_diff(src, out) == []
    x = {"x": np.random.default_rng(2).normal(0, 2, (2, 3, 4)).astype(np.float32)}
    assert np.abs(_run(src, x)[0] - _run(out, x, cpu_copy=True)[0]).max() <= 1e-6


def test_qdq_lookalikes_are_not_rewritten(tmp_path):
    # Sigmoid and Mul read two different DequantizeLinear outputs of one quantized tensor, and a Mul reads
    # a quantized copy of the Sigmoid: neither is x * sigmoid(x) of one tensor, so neither may be rewritten.
    nodes = (_qdq("x", "d1", "1") + [h.make_node("DequantizeLinear", ["q1", "scale", "zp"], ["d2"], name="DQ2"),
                                     h.make_node("Sigmoid", ["d1"], ["s"]), h.make_node("Mul", ["d2", "s"], ["y"])]
             + [h.make_node("Sigmoid", ["y"], ["t"])] + _qdq("t", "tq", "t") + [h.make_node("Mul", ["y", "tq"], ["w"])])
    src = _save(_model(nodes, ["x"], ["w"], QDQ_INITS), tmp_path / "m.onnx")
    out = tmp_path / "m.silu.onnx"
    with pytest.raises(onnx_rewrite.NoSiluPairs, match="no file written"):
        onnx_rewrite.rewrite(src, out)
    assert not out.exists()


def test_no_pair_means_clear_error_and_no_file(tmp_path):
    src = _save(_model([h.make_node("Relu", ["x"], ["y"])], ["x"], ["y"]), tmp_path / "relu.onnx")
    out = tmp_path / "relu.silu.onnx"
    with pytest.raises(onnx_rewrite.NoSiluPairs, match=r"Sigmoid\+Mul.*no file written.*model\.onnx"):
        onnx_rewrite.rewrite(src, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relu.onnx"]  # no output, no temp file left
    with pytest.raises(FileNotFoundError, match="export"):
        onnx_rewrite.rewrite(tmp_path / "missing.onnx", out)


def test_already_rewritten_changes_nothing_and_says_so(tmp_path, capsys):
    nodes = [h.make_node("Sigmoid", ["x"], ["s"]), h.make_node("Mul", ["x", "s"], ["y"])]
    src = _save(_model(nodes, ["x"], ["y"]), tmp_path / "m.onnx")
    once = tmp_path / "m.silu.onnx"
    onnx_rewrite.rewrite(src, once)
    before = once.read_bytes()
    again = onnx_rewrite.rewrite(once, once)  # in place: not even rewritten
    assert again.already_rewritten and again.pairs == 0 and again.plugin_nodes == 1
    assert once.read_bytes() == before
    assert "already rewritten" in capsys.readouterr().out
    copy = onnx_rewrite.rewrite(once, tmp_path / "m.silu2.onnx")  # elsewhere: an unchanged copy
    assert copy.already_rewritten and (tmp_path / "m.silu2.onnx").read_bytes() == before
    assert "unchanged copy" in copy.message


@pytest.fixture(scope="module")
def xxs_silu(xxs, tmp_path_factory):
    """The exported xxs model rewritten: (exported, torch model, rewritten path, report)."""
    exported, model = xxs
    out = tmp_path_factory.mktemp("silu") / "model.silu.onnx"
    return exported, model, out, onnx_rewrite.rewrite(exported.onnx, out)


def test_exported_model_pairs_equal_torch_silu_calls(xxs_silu):
    exported, model, out, report = xxs_silu
    calls = onnx_rewrite.count_torch_silu(model)
    assert calls == 34  # mobilevit_xxs: 25 conv activations + 9 transformer MLP activations
    assert report.pairs == calls
    ops_before, ops_after = _ops(exported.onnx), _ops(out)
    assert ops_after[onnx_rewrite.plugin_id().name] == calls and ops_after["Sigmoid"] == ops_before["Sigmoid"] - calls
    assert ops_after["Mul"] == ops_before["Mul"] - calls
    row = onnx_rewrite.audit(exported.onnx, out, model, report)
    assert row["passed"] and row["other_changes"] == "none" and row["pairs_left"] == 0


def test_nothing_else_changes_on_the_exported_model(xxs_silu, tmp_path):
    exported, _, out, _ = xxs_silu
    a, b = onnx.load(str(exported.onnx)), onnx.load(str(out))
    key = lambda n: n.SerializeToString(deterministic=True)  # noqa: E731
    name = onnx_rewrite.plugin_id().name
    plugins = [n for n in b.graph.node if n.op_type == name]
    gone = {n.output[0] for n in plugins}  # the Muls' outputs, now written by the plugin nodes
    gone |= {i for n in a.graph.node if n.op_type == "Mul" and n.output[0] in gone for i in n.input} - \
        {n.input[0] for n in plugins}  # the Sigmoids' outputs
    kept_a = [key(n) for n in a.graph.node if n.output[0] not in gone]
    kept_b = [key(n) for n in b.graph.node if n.op_type != name]
    assert len(a.graph.node) - len(kept_a) == 2 * len(plugins)
    assert kept_a == kept_b  # same nodes, same bytes, same order
    assert {i.name: i.SerializeToString() for i in a.graph.initializer} == \
        {i.name: i.SerializeToString() for i in b.graph.initializer}
    assert a.graph.input == b.graph.input and a.graph.output == b.graph.output
    # graph_diff notices a change elsewhere
    init = next(i for i in b.graph.initializer if len(i.raw_data) >= 4)
    init.raw_data = bytes(v ^ 0xFF for v in init.raw_data[:4]) + init.raw_data[4:]  # zero weights stay caught
    tampered = tmp_path / "tampered.onnx"
    onnx.save(b, str(tampered))
    assert any("initializers differ" in p for p in onnx_rewrite.graph_diff(exported.onnx, tampered))


def test_cpu_equivalence_on_the_exported_model(xxs_silu):
    exported, _, out, _ = xxs_silu
    table, passed = onnx_rewrite.verify_cpu(exported.onnx, out, "fp32", exported.settings["img_size"],
                                           batches=(1, 3))
    assert passed and list(table["batch"]) == [1, 3] and set(table["precision"]) == {"fp32"}
    assert (table["max_abs"] <= 1e-6).all() and (table["top1_agreement"] == 1.0).all()  # the criterion


def test_fp16_variant_of_the_exported_model(xxs_silu, tmp_path):
    from modelopt.onnx.autocast import convert_to_mixed_precision
    exported, model, _, _ = xxs_silu
    fp16 = tmp_path / "model.fp16.onnx"
    onnx.save(convert_to_mixed_precision(str(exported.onnx), low_precision_type="fp16", keep_io_types=True), str(fp16))
    out = tmp_path / "model.fp16.silu.onnx"
    report = onnx_rewrite.rewrite(fp16, out)
    assert report.pairs == onnx_rewrite.count_torch_silu(model)
    assert onnx_rewrite.graph_diff(fp16, out) == []
    # one rounding to float16 instead of two: agreement to FP16 accuracy, not to 1e-6
    table, passed = onnx_rewrite.verify_cpu(fp16, out, "fp16", 256, batches=(1, 3))
    assert set(table["precision"]) == {"fp16"} and (table["atol"] == precisions.get("fp16").rewrite_tolerance[0]).all()
    assert passed and (table["max_abs"] <= 1e-3).all() and (table["top1_agreement"] == 1.0).all(), table


@pytest.mark.parametrize("variant", ["mobilevit_xs", "mobilevit_s"])
def test_pairs_equal_torch_silu_calls_in_larger_variants(variant, tmp_path):
    import torch

    from mvlib import export
    from mvlib.model import load_model
    model, _ = load_model(variant, "random", 0)
    src = export.export_onnx(model, tmp_path / "model.onnx", 64, 17)  # the SiLU count does not depend on size
    report = onnx_rewrite.rewrite(src, tmp_path / "model.silu.onnx")
    calls = onnx_rewrite.count_torch_silu(model)
    assert calls == sum(isinstance(m, torch.nn.SiLU) for m in model.modules())  # each module called once
    assert report.pairs == calls and onnx_rewrite.graph_diff(src, tmp_path / "model.silu.onnx") == []



def _fp8_image_model(path):
    """An image model at opset 19: FP8 (E4M3FN) Q/DQ of the input, x * sigmoid(x), mean over H and W as logits."""
    x = h.make_tensor_value_info(accuracy.INPUT, T.FLOAT, ["N", 3, 32, 32])
    y = h.make_tensor_value_info(accuracy.OUTPUT, T.FLOAT, ["N", 3])
    inits = [h.make_tensor("scale", T.FLOAT, [], [0.01]), h.make_tensor("zp", T.FLOAT8E4M3FN, [], [0.0]),
             h.make_tensor("axes", T.INT64, [2], [2, 3])]
    nodes = _qdq(accuracy.INPUT, "d") + [h.make_node("Sigmoid", ["d"], ["s"], name="/act/Sigmoid"),
                                         h.make_node("Mul", ["d", "s"], ["a"], name="/act/Mul"),
                                         h.make_node("ReduceMean", ["a", "axes"], [accuracy.OUTPUT], keepdims=0)]
    model = onnxmodel.make_model(h.make_graph(nodes, "fp8", [x], [y], initializer=inits),
                                 opset_imports=[h.make_opsetid("", 19)])
    onnx.checker.check_model(model)
    return _save(model, path)


def test_the_cpu_check_judges_a_graph_by_the_precision_passed_down(tmp_path):
    """An FP8 Q/DQ graph is checked as FP8, not guessed "int8" from its QuantizeLinear nodes."""
    src = _fp8_image_model(tmp_path / "model.fp8.onnx")
    out = tmp_path / "model.fp8.silu.onnx"
    assert onnx_rewrite.rewrite(src, out).pairs == 1
    table, passed = onnx_rewrite.verify_cpu(src, out, "fp8", 32, batches=(1, 3), seed=4)
    assert set(table["precision"]) == {"fp8"} and passed, table
    atol, rtol = precisions.get("fp8").rewrite_tolerance
    assert (table["atol"] == atol).all() and (table["rtol"] == rtol).all()
    assert list(table["batch"]) == [1, 3] and (table["ref_absmax"] > 0).all()  # random images, not zeros


def test_a_precision_without_a_plugin_model_is_an_error_naming_the_fix(tmp_path, monkeypatch, unknown_precision):
    src = _fp8_image_model(tmp_path / "model.fp8.onnx")
    out = tmp_path / "model.fp8.silu.onnx"
    onnx_rewrite.rewrite(src, out)
    with pytest.raises(ValueError, match=", ".join(precisions.TABLE)):
        onnx_rewrite.verify_cpu(src, out, unknown_precision, 32, batches=(1,))
    bare = dataclasses.replace(precisions.get("fp8"), plugin_artifact=None, rewrite_tolerance=None)
    monkeypatch.setitem(precisions.TABLE, "fp8", bare)
    with pytest.raises(ValueError, match="FP8 has no plugin model: give it plugin_artifact and rewrite_tolerance"):
        onnx_rewrite.verify_cpu(src, out, "fp8", 32, batches=(1,))


def test_the_cpu_check_takes_its_tolerance_from_the_table(tmp_path, monkeypatch):
    """The rewrite's CPU tolerance is the precision's rewrite_tolerance in mvlib.precisions, not a second table."""
    src = _fp8_image_model(tmp_path / "model.fp8.onnx")
    out = tmp_path / "model.fp8.silu.onnx"
    onnx_rewrite.rewrite(src, out)
    monkeypatch.setitem(precisions.TABLE, "fp8", dataclasses.replace(precisions.get("fp8"),
                                                                     rewrite_tolerance=(0.25, 0.5)))
    table, _ = onnx_rewrite.verify_cpu(src, out, "fp8", 32, batches=(1,), seed=4)
    assert (table["atol"] == 0.25).all() and (table["rtol"] == 0.5).all()


def test_the_stand_in_runs_the_lower_float_type_of_a_new_precision(tmp_path, monkeypatch):
    """A precision added to the table in bfloat16 gets its plugin nodes wrapped in Casts, like FP16's: SiLU computed
    in float32 and rounded once to bfloat16, with no edit to the stand-in."""
    import ml_dtypes
    bf16 = dataclasses.replace(precisions.get("fp16"), name="bf16", numpy_dtype="bfloat16")
    monkeypatch.setitem(precisions.TABLE, "bf16", bf16)
    nodes = [h.make_node("Cast", ["x"], ["xb"], to=T.BFLOAT16), h.make_node("Sigmoid", ["xb"], ["s"]),
             h.make_node("Mul", ["s", "xb"], ["yb"]), h.make_node("Cast", ["yb"], ["y"], to=T.FLOAT)]
    src = _save(_model(nodes, ["x"], ["y"]), tmp_path / "m.onnx")
    out = tmp_path / "m.silu.onnx"
    assert onnx_rewrite.rewrite(src, out).pairs == 1
    x = np.random.default_rng(1).normal(0, 4, (2, 3, 4)).astype(np.float32)
    (y,) = _run(out, {"x": x}, cpu_copy=True)
    xb = x.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(y, _silu64(xb).astype(ml_dtypes.bfloat16).astype(np.float32))
