"""ONNX models made by hand (the FP8 probe, the tests' toy models) at the IR version of the study's own models.

`onnx.helper.make_model` stamps the newest IR version the installed onnx knows (14 under onnx 1.23), whatever
opsets the model imports; ONNX Runtime refuses a model whose IR is newer than it reads, at load (1.30 refuses
14: "Unsupported model IR version: 14, max supported IR version: 13"). ModelOpt writes its quantized models, the
study's INT8 and FP8 ones, at IR 10 (it pins 10 for ONNX Runtime's sake), which every ONNX Runtime the project
allows reads; so a model made here is what the study writes, whichever onnx made it.

Serves: notebooks 01-06 through the probes of mvlib.fp8 (FP8 Q/DQ on the CPU) and mvlib.ort_providers (the CUDA
EP), and the tests.
"""
import onnx

IR_VERSION = 10  # ModelOpt's quantized models (its quantize() sets ir_version = 10); it covers opsets up to 21
OPSET = 17  # the study's export opset, for a model that names none


def make_model(graph: onnx.GraphProto, opset_imports=None, ir_version: int = IR_VERSION, **kwargs) -> onnx.ModelProto:
    """`onnx.helper.make_model` at IR `ir_version` (10), importing opset 17 of the default domain unless told."""
    if opset_imports is None:
        opset_imports = [onnx.helper.make_opsetid("", OPSET)]
    model = onnx.helper.make_model(graph, opset_imports=opset_imports, **kwargs)
    model.ir_version = ir_version
    return model
