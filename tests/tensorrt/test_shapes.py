"""mvlib.tensorrt.shapes: the batch optimization profile (checked on creation) and the model's one image input."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mvlib import onnxmodel
from mvlib.tensorrt import shapes


@pytest.mark.parametrize("bounds", [(2, 1, 4), (0, 1, 1), (1, 4, 2), (1, 2.0, 4), (True, 2, 4)])
def test_a_profile_out_of_order_or_not_integers_names_the_rule(bounds):
    with pytest.raises(ValueError, match="1 <= batch_min <= batch_opt <= batch_max"):
        shapes.Profile(*bounds)


def test_a_batch_outside_the_profile_names_the_fix():
    profile = shapes.Profile(np.int64(2), 8, 16)  # numpy integers, as a parameters table gives them
    assert profile.check(2) == 2 and profile.check(16) == 16 and profile.as_list() == [2, 8, 16]
    for batch in (1, 17):
        assert not profile.covers(batch)
        with pytest.raises(ValueError, match=f"batch {batch} is outside .* rebuild the engine with batch_min <= "):
            profile.check(batch)


def test_chunks_cover_every_image_once_and_pad_a_short_tail():
    images = np.random.default_rng(5).normal(size=(7, 3, 4, 4)).astype(np.float32)
    chunks = shapes.Profile(2, 2, 3).chunks(images)
    assert [(len(c), n) for c, n in chunks] == [(3, 3), (3, 3), (2, 1)]  # the last: one image, padded to min
    np.testing.assert_array_equal(np.concatenate([c[:n] for c, n in chunks]), images)
    np.testing.assert_array_equal(chunks[-1][0][1], images[-1])  # padding repeats the last image


def _model(path, inputs):
    """An ONNX file whose graph adds its inputs (or passes the one through)."""
    vis = [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims) for name, dims in inputs]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = (helper.make_node("Add", [v.name for v in vis], ["y"]) if len(vis) == 2
            else helper.make_node("Identity", [vis[0].name], ["y"]))
    onnx.save(onnxmodel.make_model(helper.make_graph([node], "g", vis, [out])), str(path))
    return path


def test_onnx_input_reads_the_one_image_input(tmp_path):
    path = _model(tmp_path / "m.onnx", [("pixels", ["batch", 3, 64, 64])])
    assert shapes.onnx_input(path) == ("pixels", (-1, 3, 64, 64))
    with pytest.raises(ValueError, match="2 inputs"):
        shapes.onnx_input(_model(tmp_path / "two.onnx", [("a", ["n", 3]), ("b", ["n", 3])]))
    with pytest.raises(ValueError, match="dynamic non-batch dimensions .* export with a fixed image size"):
        shapes.onnx_input(_model(tmp_path / "dyn.onnx", [("x", ["n", 3, "h", "w"])]))
