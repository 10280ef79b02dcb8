"""Q/DQ graphs as ONNX protos: which nodes are quantized, rewiring excluded nodes to float, scales, saving.

Serves notebook 04 through `mvlib.quant` (INT8 and FP8 alike: both are QuantizeLinear/DequantizeLinear
pairs, differing only in the zero point's type). Excluding a node in ModelOpt keeps Q/DQ off its inputs
only where it alone reads them: ONNX Runtime's Q/DQ quantizer (which ModelOpt drives) shares one pair
among all readers of a tensor, so a LayerNorm that reads the residual stream next to a quantized Add
still reads rounded values. `isolate` rewires excluded nodes to the float tensor, so "excluded" really
means "computes on unquantized inputs".
"""
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from mvlib import io

HIGH_PRECISION_OPS = ("LayerNormalization", "Softmax")
QDQ = ("QuantizeLinear", "DequantizeLinear")
IGNORED_READERS = ("Shape",)  # reading a tensor's shape does no arithmetic on its values
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")  # where 8-bit types save time; counted to pick the policy
# The zero point's type says what a QuantizeLinear rounds to (ONNX opset 19: FP8 Q/DQ).
ZERO_POINT_TYPES = {"int8": (onnx.TensorProto.INT8, onnx.TensorProto.UINT8),
                    "fp8": (onnx.TensorProto.FLOAT8E4M3FN,)}


def load(model: onnx.ModelProto | Path | str) -> onnx.ModelProto:
    """A model proto from a proto or a path."""
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


# ---------------------------------------------------------------- queries
def attention_nodes(model: onnx.ModelProto | Path | str) -> list[str]:
    """LayerNorm and Softmax nodes, and MatMuls with no constant operand (Q·Kᵀ, P·V), in graph order."""
    graph = load(model).graph
    consts = set(constant_tensors(graph))
    return [n.name for n in graph.node
            if n.op_type in HIGH_PRECISION_OPS or (n.op_type == "MatMul" and not any(i in consts for i in n.input))]


def attention_matmuls(model: onnx.ModelProto | Path | str) -> list[str]:
    """The attention MatMuls: those of `attention_nodes` that are MatMuls."""
    graph = load(model).graph
    attn = set(attention_nodes(model))
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.name in attn]


def quantized_nodes(model: onnx.ModelProto | Path | str) -> list[str]:
    """Nodes (other than Q/DQ and shape reads) with at least one input from a DequantizeLinear, in graph order."""
    graph = load(model).graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in graph.node
            if n.op_type not in QDQ + IGNORED_READERS and any(i in dq_out for i in n.input)]


def count_ops(model: onnx.ModelProto | Path | str, names: Iterable[str]) -> dict[str, int]:
    """How many of the named nodes there are per op type."""
    wanted = set(names)
    out: dict[str, int] = {}
    for n in load(model).graph.node:
        if n.name in wanted:
            out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def qdq_types(model: onnx.ModelProto | Path | str) -> set[str]:
    """The 8-bit types the model's QuantizeLinear nodes round to ('int8', 'fp8'), from their zero points."""
    graph = load(model).graph
    zp = {i.name: i.data_type for i in graph.initializer}
    names = {t: k for k, types in ZERO_POINT_TYPES.items() for t in types}
    found = set()
    for n in graph.node:
        if n.op_type == "QuantizeLinear":
            kind = zp.get(n.input[2]) if len(n.input) > 2 else onnx.TensorProto.UINT8  # ONNX's default
            found.add(names.get(kind, onnx.TensorProto.DataType.Name(kind)))
    return found


def resolve(model: onnx.ModelProto, names: Sequence[str], op_types: Sequence[str]) -> list[str]:
    """Exact node names from a list of names and op types; unknown names are an error."""
    known = {n.name for n in model.graph.node}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"nodes to exclude not in the model: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    return list(dict.fromkeys(list(names) + [n.name for n in model.graph.node if n.op_type in set(op_types)]))


def summary(model: onnx.ModelProto | Path | str, excluded: Sequence[str] = ()) -> dict:
    """What a Q/DQ model quantizes: Q/DQ count, quantized nodes per op type, excluded node count."""
    model = load(model)
    qnodes = quantized_nodes(model)
    per_op = count_ops(model, qnodes)
    return {"qdq_nodes": sum(n.op_type in QDQ for n in model.graph.node), "quantized_nodes": len(qnodes),
            "quantized_weighted_ops": sum(per_op.get(op, 0) for op in WEIGHTED_OPS),
            "excluded_nodes": len(excluded), "quantized_per_op": per_op}


# ---------------------------------------------------------------- rewiring
def isolate(model: onnx.ModelProto | Path | str, names: Iterable[str]) -> onnx.ModelProto:
    """A copy in which nodes `names` read float tensors instead of DequantizeLinear outputs (others keep Q/DQ)."""
    wanted = set(names)
    out = onnx.ModelProto()
    out.CopyFrom(load(model))
    graph = out.graph
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name not in wanted:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                node.input[k] = _float_source(dq, producer)
    _prune(graph)
    return out


def _float_source(dq: onnx.NodeProto, producer: dict) -> str:
    """Name of the float tensor a DequantizeLinear stands for: the input of its QuantizeLinear.

    ModelOpt keeps weights in float behind a Q/DQ pair too, so this also restores
    the original weights; a DQ of pre-quantized integer weights has no float
    original to return to, and is refused rather than approximated.
    """
    q = producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        raise ValueError(f"cannot unquantize through {dq.name!r}: its input {dq.input[0]!r} is not a QuantizeLinear "
                         "output (integer weights without their float originals?)")
    return q.input[0]


def _prune(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ and Constant nodes, and initializers, that nothing reads any more."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in QDQ + ("Constant",) and not any(o in used for o in n.output)]
        if not dead:
            break
        keep = [n for n in graph.node if n not in dead]
        graph.ClearField("node")
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    keep_init = [i for i in graph.initializer if i.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(keep_init)


# ---------------------------------------------------------------- scales
# A Constant node holds its value in one of these attributes (ONNX Constant-13); the numeric ones as their dtype.
CONSTANT_VALUES = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                   "value_ints": np.int64}


def constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant nodes' values by tensor name, as TensorProtos: the one scan of a graph's constants."""
    tensors = {i.name: i for i in graph.initializer}
    for n in graph.node:
        if n.op_type != "Constant":
            continue
        for a in n.attribute:
            if a.name == "value":
                tensors[n.output[0]] = a.t
            elif a.name in CONSTANT_VALUES:
                value = np.asarray(onnx.helper.get_attribute_value(a), dtype=CONSTANT_VALUES[a.name])
                tensors[n.output[0]] = numpy_helper.from_array(value, n.output[0])
    return tensors


def constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of initializers and Constant nodes by tensor name."""
    return {name: numpy_helper.to_array(t) for name, t in constant_tensors(graph).items()}


def activation_scales(model: onnx.ModelProto | Path | str) -> dict[str, np.ndarray]:
    """The scale of every quantized activation (a QuantizeLinear of a computed tensor), by tensor name."""
    graph = load(model).graph
    consts = constants(graph)
    return {n.input[0]: consts[n.input[1]] for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in consts}


def transplant_scales(model: onnx.ModelProto, source: onnx.ModelProto | Path | str) -> onnx.ModelProto:
    """`model` with every activation scale replaced by the scale `source` has for the same tensor (in place).

    A tensor's scale depends only on its FP32 values on the calibration images, not on
    which other nodes are quantized, so a policy can take the scales its `all` model
    was calibrated with instead of calibrating again. The Q and DQ of one tensor share
    one scale initializer (ONNX Runtime's quantizer names it `<tensor>_scale`), so
    writing that initializer moves both. A tensor the source never quantized is an
    error: its scale would be a guess.
    """
    wanted = activation_scales(source)
    inits = {i.name: i for i in model.graph.initializer}
    missing = []
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits:
            continue
        if n.input[0] not in wanted:
            missing.append(n.input[0])
            continue
        init = inits.get(n.input[1])
        if init is None:
            raise ValueError(f"the scale of {n.name!r} is not an initializer; cannot transplant it")
        dtype = numpy_helper.to_array(init).dtype
        init.CopyFrom(numpy_helper.from_array(np.asarray(wanted[n.input[0]], dtype=dtype), init.name))
    if missing:
        raise ValueError(f"{len(missing)} quantized tensors have no scale in the source model (e.g. {missing[0]!r}): "
                         "make the source from the same export with the policy 'all'")
    return model


# ---------------------------------------------------------------- saving
def canonical(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (in place) with its value_info sorted by name, so the same graph always serializes to the same bytes.

    ModelOpt's AutoCast collects value_info through Python sets, whose order changes
    with the interpreter's hash seed: one model, different bytes in every process.
    value_info order carries no meaning (shape hints keyed by tensor name).
    """
    ordered = sorted(model.graph.value_info, key=lambda v: v.name)
    copies = [onnx.ValueInfoProto() for _ in ordered]
    for dst, src in zip(copies, ordered, strict=True):
        dst.CopyFrom(src)
    model.graph.ClearField("value_info")
    model.graph.value_info.extend(copies)
    return model


def save(model: onnx.ModelProto, path: Path | str) -> Path:
    """Write `model` atomically in canonical form (same graph, same bytes)."""
    with io.atomic_path(path) as tmp:
        onnx.save(canonical(model), str(tmp))
    return Path(path)
