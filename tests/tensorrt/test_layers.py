# ruff: noqa: E501  (LISTING below is the builder's lines verbatim: one layer per line)
"""Layer information (mvlib.tensorrt.layers): inspector JSON of TensorRT 10/11, the builder's own listing, and
engines built elsewhere inspected where they run."""
import json

import pytest
import tensorrt_models as models

from mvlib import io, paths
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cache, flavours, layers, runner, shapes

HAS_BUILDER, BUILDER = flavours.builder_status()

# Verbatim shape of TensorRT-RTX 1.7.1.116's VERBOSE listing for a Q/DQ convolution (built here for sm86).
LISTING = """Layers:
Name: __mye122_0_myl0_0, LayerType: shape_call, Inputs: [], Constants: [], Outputs: [], TacticName: , StreamId: 0, Metadata:
Name: conv0_myl0_2, LayerType: correlation, Inputs: [ { Name: __mye276_4_myl0, Dimensions: [-1,8,16,16], Strides: [2048,1,128,8], StrideOrder: [3,0,2,1], Datatype: Int8, Format: (NHWC) Channel major format }], Constants: [ { Name: __mye280dconst_myl0, Dimensions: [8,8,3,3], Strides: [72,1,24,8], StrideOrder: [3,0,2,1], Datatype: Int8, Format: (NHWC) Channel major format }, { Name: __mye285dconst_myl0, Dimensions: [1,8,1,1], Strides: [8,1,8,8], StrideOrder: [3,0,2,1], Datatype: Float, Format: (NHWC) Channel major format }], Outputs: [ { Name: __myln_k_arg__bb1_5_myl0, Dimensions: [-1,8,16,16], Strides: [2048,1,128,8], StrideOrder: [3,0,2,1], Datatype: Float, Format: (NHWC) Channel major format }], TacticName: __myelin_CASK_STUB, StreamId: 0, Metadata: [ONNX Layer: conv0][ONNX Layer: node_of_xd]
Name: attn_MatMul_myl0_7, LayerType: gemm, Inputs: [ { Name: a, Dimensions: [-1,4,64,16], Strides: [4096,1024,16,1], StrideOrder: [3,2,1,0], Datatype: Half, Format: (Linear) Row major linear format }, { Name: b, Dimensions: [-1,4,16,64], Strides: [4096,1024,64,1], StrideOrder: [3,2,1,0], Datatype: Half, Format: (Linear) Row major linear format }], Constants: [], Outputs: [ { Name: c, Dimensions: [-1,4,64,64], Strides: [16384,4096,64,1], StrideOrder: [3,2,1,0], Datatype: Half, Format: (Linear) Row major linear format }], TacticName: gemm_tactic, StreamId: 0, Metadata: [ONNX Layer: /attn/MatMul]
Name: fc_myl0_9, LayerType: gemm, Inputs: [ { Name: p, Dimensions: [-1,320], Strides: [320,1], StrideOrder: [1,0], Datatype: Half, Format: (Linear) Row major linear format }], Constants: [ { Name: w, Dimensions: [320,1000], Strides: [1000,1], StrideOrder: [1,0], Datatype: Int8, Format: (Linear) Row major linear format }], Outputs: [ { Name: logits, Dimensions: [-1,1000], Strides: [1000,1], StrideOrder: [1,0], Datatype: Float, Format: (Linear) Row major linear format }], TacticName: t, StreamId: 0, Metadata: [ONNX Layer: /head/fc/Gemm]
Name: __myl_Fused_myl0_4, LayerType: runtime_fusion, Inputs: [ { Name: c, Dimensions: [-1,4,64,64], Strides: [16384,4096,64,1], StrideOrder: [3,2,1,0], Datatype: Half, Format: (Linear) Row major linear format }], Constants: [], Outputs: [ { Name: d, Dimensions: [-1,4,64,64], Strides: [16384,4096,64,1], StrideOrder: [3,2,1,0], Datatype: Half, Format: (Linear) Row major linear format }], TacticName: f, StreamId: 0, Metadata:

I/O Tensors:
 Name: input, IOMode: Input, DataType: Float, Dimensions: [-1,8,16,16], Location: Device
"""


def test_the_builders_listing_says_each_convolution_and_matmuls_precision():
    parsed = layers.parse_builder_layers(LISTING)
    assert [p["LayerType"] for p in parsed] == ["shape_call", "correlation", "gemm", "gemm", "runtime_fusion"]
    assert parsed[1]["Inputs"][0] == {"Name": "__mye276_4_myl0", "Datatype": "Int8",
                                      "Format": "(NHWC) Channel major format"}
    assert [layers.math_precision(p) for p in parsed] == [None, ("conv", "INT8"), ("matmul", "FP16"),
                                                          ("matmul", "FP16 x INT8"), ("fused", "FP16")]
    summary = layers.compute_precision(parsed)
    assert summary == "conv: 1 INT8; matmul: 1 FP16 x INT8, 1 FP16; fused: 1 FP16"
    assert layers.int8_math(summary) == 1  # weight-only INT8 is not INT8 compute
    assert layers.compute_precision([]) == "not reported by the builder"


def test_layer_summary_reads_tensorrt_10_and_11_inspector_json(tmp_path):
    # Field names as TensorRT's trex parses them: TensorRT 10 puts "Format/Datatype" on each tensor,
    # TensorRT 11 splits it into "Datatype" and "Format".
    info = {"inspected": True, "Layers": [
        {"Name": "/stem/conv/Conv + /stem/act/Sigmoid + /stem/act/Mul", "LayerType": "CaskConvolution",
         "Metadata": "[ONNX Layer: /stem/conv/Conv]\x1f[ONNX Layer: /stem/act/Sigmoid]\x1f[ONNX Layer: /stem/act/Mul]",
         "Inputs": [{"Name": "input", "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "a", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "TacticName": "sm90_xmma_fprop"},
        {"Name": "{ForeignNode[/stages/attn/MatMul.../stages/attn/Softmax]}", "LayerType": "Myelin",
         "Metadata": "", "Inputs": [{"Name": "a", "Datatype": "Half", "Format": "Row major linear"}],
         "Outputs": [{"Name": "b", "Datatype": "Half", "Format": "Row major linear"}]},
        {"Name": "/head/fc/Gemm", "LayerType": "CaskGemm", "Metadata": "[ONNX Layer: /head/fc/Gemm]",
         "Inputs": [{"Name": "b", "Format/Datatype": "Half"}],
         "Outputs": [{"Name": "logits", "Format/Datatype": "Float"}]},
    ], "Bindings": ["input", "logits"]}
    (tmp_path / cache.LAYERS).write_text(json.dumps(info))
    table = layers.layer_summary(tmp_path)
    assert list(table["onnx_nodes"]) == [3, 1, 1]
    assert list(table["fused"]) == [True, True, False]
    assert list(table["input_precision"]) == ["FP32", "FP16", "FP16"]
    assert list(table["output_precision"]) == ["FP16", "FP16", "FP32"]
    totals = layers.layer_totals(table)
    assert totals == {"layers": 3, "fused_layers": 2, "onnx_nodes_covered": 5, "out_FP16": 2, "out_FP32": 1}


def test_layer_names_only_is_an_error_not_a_table_of_question_marks(tmp_path):
    # What an engine built without DETAILED profiling verbosity gives the inspector: names, no types.
    (tmp_path / cache.LAYERS).write_text(json.dumps({"inspected": True, "Layers": ["conv1", "gemm"]}))
    with pytest.raises(ValueError, match="DETAILED"):
        layers.layer_summary(tmp_path)


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
def test_an_engine_built_where_it_could_not_run_is_inspected_where_it_runs(tmp_path, monkeypatch):
    """Built on a CPU machine ("not inspected"), reused on a GPU that runs it: inspected at load, so its layers
    are known there, not a skip. The inspector's JSON stands in for the GPU; everything else is real."""
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    engine = cache.build_engine(models.conv(tmp_path / "model.onnx"), shapes.Profile(1, 2, 4), workspace_gb=1)
    with pytest.raises(StageSkipped, match="not inspected"):
        layers.layer_summary(engine.dir)  # here nothing runs it: still a skip, with the reason
    inspector = {"Layers": [{"Name": "conv0 + relu0", "LayerType": "CaskConvolution",
                             "Metadata": "[ONNX Layer: conv0]\x1f[ONNX Layer: relu0]",
                             "Inputs": [{"Name": "input", "Datatype": "Float"}],
                             "Outputs": [{"Name": "logits", "Datatype": "Float"}]}], "Bindings": ["input", "logits"]}
    monkeypatch.setattr(runner, "runnable", lambda e: e)
    monkeypatch.setattr(layers, "inspect_plan", lambda fl, plan, plugins=(), check=None: inspector)
    table = layers.layer_summary(engine.dir)
    assert list(table["name"]) == ["conv0 + relu0"] and list(table["onnx_nodes"]) == [2]
    assert io.read_json(engine.dir / cache.LAYERS)["inspected"] is True
    assert cache.load(engine.plan).info["inspected"] is True and cache.cache_problem(engine.dir) is None
