"""Small real ONNX models for the TensorRT tests: seconds to build with the installed builder, random weights."""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mvlib import onnxmodel


def conv(path: Path | str, int8: bool = False, seed: int = 0, doc: str = "") -> Path:
    """input[batch, 8, 16, 16] -> Conv 3x3 (+ Q/DQ on input and weights when `int8`) -> Relu -> logits."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8, 16, 16])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8, 16, 16])
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w")]
    nodes, conv_in, conv_w = [], "input", "w"
    if int8:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
                  numpy_helper.from_array(np.array(0, np.int8), "zp")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "xs", "zp"], ["xq"], name="q_in"),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "zp"], ["xd"], name="dq_in"),
                  helper.make_node("QuantizeLinear", ["w", "ws", "zp"], ["wq"], name="q_w"),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "zp"], ["wd"], name="dq_w")]
        conv_in, conv_w = "xd", "wd"
    nodes += [helper.make_node("Conv", [conv_in, conv_w], ["c"], pads=[1, 1, 1, 1], name="conv0"),
              helper.make_node("Relu", ["c"], ["logits"], name="relu0")]
    model = onnxmodel.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                                 opset_imports=[helper.make_opsetid("", 17)])
    model.doc_string = doc
    onnx.save(model, str(path))
    return Path(path)


def plugin_graph(path: Path | str, names: list[str]) -> Path:
    """A graph of MvSiLU plugin nodes with these names (for counting, not for building)."""
    from mvlib.silu import onnx_rewrite
    pid = onnx_rewrite.plugin_id()
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])
    nodes, prev = [], "input"
    for i, name in enumerate(names):
        nodes.append(helper.make_node(pid.name, [prev], [f"t{i}"], name=name, domain=onnx_rewrite.TRT_DOMAIN))
        prev = f"t{i}"
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", 8])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(onnx_rewrite.TRT_DOMAIN, 1)]
    model = onnxmodel.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets)
    onnx.save(model, str(path))
    return Path(path)
