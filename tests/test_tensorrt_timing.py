"""Engines timed the trtexec way (mvlib.tensorrt.timing): graph or plain enqueues, memory between batches, JIT.

The decisions are tested with small stand-ins of our own (a capture that fails, a context that refuses); the
timed runs themselves need a GPU the flavour runs on (`make study TIER=trt`).
"""
import pytest

from mvlib import bench
from mvlib.skips import StageSkipped
from mvlib.tensorrt import shapes, timing


class Graph:
    def replay(self):
        return "replayed"


def plain():
    return "enqueued"


def test_a_graph_is_replayed_where_the_capture_works():
    launch, how = timing.choose_launch((True, ""), lambda: (Graph(), ""), plain)
    assert launch() == "replayed" and how == timing.GRAPH_TIMING
    launch, how = timing.choose_launch((None, ""), lambda: (Graph(), ""), plain)  # full TensorRT: just try
    assert launch() == "replayed"


def test_a_refused_or_failed_capture_times_plain_enqueues_and_says_so():
    """Defect 2: like trtexec, end the capture and time without a graph, instead of failing the notebook."""
    tried = []
    launch, how = timing.choose_launch((False, "TensorRT-RTX 1.7: the execution context is not stream-capturable"),
                                       lambda: tried.append(1) or (Graph(), ""), plain)
    assert launch() == "enqueued" and not tried  # RTX said no: never captured
    assert "plain execute_async_v3" in how and "not stream-capturable" in how
    launch, how = timing.choose_launch((None, ""), lambda: (None, "execute_async_v3 returned False under capture"),
                                       plain)
    assert launch() == "enqueued" and "returned False under capture" in how and how != timing.GRAPH_TIMING


def test_a_batchs_memory_is_freed_before_the_next_is_measured():
    """Defect 9: the previous batch's graph and buffers are dropped, then the caching allocator is emptied."""
    state = {"launch": Graph(), "buffers": ["x"], "bound": ["y"]}

    class Session:
        keep = ["x", "y"]

    session, seen = Session(), []
    timing.release(state, session, lambda: seen.append((dict(state), list(session.keep))))
    assert seen == [({}, [])]


def test_within_leaves_batches_outside_the_profile_out():
    with pytest.raises(bench.BatchSkipped, match="outside"):
        timing.within(shapes.Profile(1, 1, 2), 4)
    assert timing.within(shapes.Profile(1, 1, 2), 2) == 2


def test_a_missing_onnx_file_is_a_skip(tmp_path):
    s = bench.Settings(img_size=64, seconds=0.1, repeats=2)
    with pytest.raises(StageSkipped, match="model.fp16.onnx not found"):
        timing.tensorrt(s, tmp_path / "model.fp16.onnx", "fp16", shapes.Profile(1, 16, 32))
