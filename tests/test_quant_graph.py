"""mvlib.quant_graph: quantized nodes, rewiring excluded nodes to float, scales, constants, canonical bytes."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mvlib import quant_graph

pytest_plugins = ["quant_models"]  # the shared fixtures: images, ev, q_all, q_fp8


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
    assert len(mm) == 18 and all(__import__("re").search(r"/attn/MatMul(_1)?$", n) for n in mm)


def test_isolate_of_every_quantized_node_gives_back_fp32(q_all, ev):
    model = onnx.load(str(q_all[0]))
    plain = quant_graph.isolate(model, [n.name for n in model.graph.node])  # shape reads too, so that no Q/DQ is left
    assert not any(n.op_type in quant_graph.QDQ for n in plain.graph.node), "Q/DQ left behind"
    # what sensitivity() uses: shape reads may keep Q/DQ
    numeric = quant_graph.isolate(model, quant_graph.quantized_nodes(model))
    np.testing.assert_array_equal(ev.logits(numeric), ev.logits(plain))
    out = ev.logits(plain)
    assert np.abs(out - ev.reference).max() < 1e-4
    assert ev.metrics(out, "int8")["passes"]


def test_modelopt_exclusion_alone_shares_qdq_and_isolate_fixes_it(q_all):
    """ORT's quantizer shares one Q/DQ pair per tensor: a LayerNorm beside a quantized Add reads INT8 values."""
    model = onnx.load(str(q_all[0]))
    ln = [n.name for n in model.graph.node if n.op_type == "LayerNormalization"]
    adds = {n.name for n in model.graph.node if n.op_type == "Add"} & _dq_readers(model)
    assert set(ln) & _dq_readers(model), "expected LayerNorms reading shared Q/DQ pairs"
    fixed = quant_graph.isolate(model, ln)
    assert not set(ln) & _dq_readers(fixed)
    assert adds <= _dq_readers(fixed), "the Adds that share those tensors keep their Q/DQ"


def test_transplant_refuses_a_source_without_the_tensor(q_all):
    model = onnx.load(str(q_all[0]))
    source = onnx.load(str(q_all[0]))
    victim = next(n for n in source.graph.node if n.op_type == "QuantizeLinear"
                  and n.input[0] not in {i.name for i in source.graph.initializer})
    source.graph.node.remove(victim)
    with pytest.raises(ValueError, match="no scale in the source model"):
        quant_graph.transplant_scales(model, source)


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


def test_constant_tensors_reads_initializers_and_every_kind_of_constant_node():
    """The one scan of a graph's constants: initializers, Constant `value` tensors and scalar/list attributes."""
    nodes = [helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.arange(3, dtype=np.float16))),
             helper.make_node("Constant", [], ["f"], value_float=0.5),
             helper.make_node("Constant", [], ["ints"], value_ints=[2, 3]),
             helper.make_node("Add", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                              [numpy_helper.from_array(np.ones(3, np.float32), "w")])
    tensors = quant_graph.constant_tensors(graph)
    assert set(tensors) == {"w", "t", "f", "ints"}
    assert tensors["t"].data_type == TensorProto.FLOAT16 and tensors["ints"].data_type == TensorProto.INT64
    values = quant_graph.constants(graph)
    assert values["f"] == np.float32(0.5) and values["ints"].tolist() == [2, 3] and values["w"].sum() == 3
    with pytest.raises(KeyError):
        values["y"]  # a computed tensor is no constant
