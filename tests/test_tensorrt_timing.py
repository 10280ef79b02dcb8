"""Engines timed the trtexec way (mvlib.tensorrt.timing): graph or plain enqueues, memory between batches, JIT.

The decisions are tested with small stand-ins of our own (a capture that fails, a context that refuses); the
timed runs themselves need a GPU the flavour runs on (`make study TIER=trt`).
"""
import re

import pytest

from mvlib import bench
from mvlib.skips import StageSkipped
from mvlib.tensorrt import flavours, shapes, timing


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
    """Like trtexec, end the capture and time without a graph, instead of failing the notebook."""
    tried = []
    launch, how = timing.choose_launch((False, "TensorRT-RTX 1.7: the execution context is not stream-capturable"),
                                       lambda: tried.append(1) or (Graph(), ""), plain)
    assert launch() == "enqueued" and not tried  # RTX said no: never captured
    assert "plain execute_async_v3" in how and "not stream-capturable" in how
    launch, how = timing.choose_launch((None, ""), lambda: (None, "execute_async_v3 returned False under capture"),
                                       plain)
    assert launch() == "enqueued" and "returned False under capture" in how and how != timing.GRAPH_TIMING


def test_a_batchs_memory_is_freed_before_the_next_is_measured():
    """The previous batch's graph and buffers are dropped, then the caching allocator is emptied."""
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


class Stream:
    """Our stand-in for a torch.cuda.Stream: a handle, and a log of the waits between streams."""

    def __init__(self, handle, log):
        self.cuda_stream, self.log = handle, log

    def wait_stream(self, other):
        self.log.append(("wait", self.cuda_stream, other.cuda_stream))


def test_plain_enqueues_never_go_to_the_default_stream():
    """TensorRT's enqueueV3 on the default stream adds cudaDeviceSynchronize calls (NvInferRuntime.h, enqueueV3's
    warning): two launches could never be in flight. The enqueue goes to the engine's own stream, ordered after
    and before the timing stream (the default one, 0), where the timer's events are recorded."""
    log = []

    class Session:
        def execute(self, handle):
            log.append(("execute", handle))

    own, default = Stream(7, log), Stream(0, log)
    timing.plain_launch(Session(), own, lambda: default)()
    assert log == [("wait", 7, 0), ("execute", 7), ("wait", 0, 7)]


def test_a_capture_that_cannot_begin_says_why_and_never_enqueues():
    """The capture is cuda-python's (trtexec's TrtCudaGraph sequence), not torch.cuda.graph, whose __exit__ leaves
    the capture stream current when the capture fails. Real cuda-python here: there is no driver, so the capture
    cannot begin; nothing is enqueued, nothing raised, and the reason is CUDA's own error name."""
    pytest.importorskip("cuda.bindings")
    enqueued = []
    graph, why = timing.cuda_graph_capture(lambda handle: enqueued.append(handle) or True, 0, lambda: 0)
    assert graph is None and not enqueued and why.startswith("cudaStreamBeginCapture: cudaError")


def test_a_batchs_graph_is_destroyed_before_the_next_is_measured():
    closed = []

    class Graph:
        def close(self):
            closed.append(1)

    class Session:
        keep = ["x"]

    state = {"graph": Graph(), "launch": None}
    timing.release(state, Session(), lambda: None)
    assert closed == [1] and state == {}


def test_a_jit_measurement_that_hangs_is_a_failed_measurement_not_a_failed_notebook(tmp_path, monkeypatch):
    """A child that outlives its time is killed and reported in the jit column (the study goes on)."""
    monkeypatch.setattr(timing, "JIT_TIMEOUT_S", 0.001)
    spec = {"plan": str(tmp_path / "engine.plan"), "plugins": [], "batch": 1, "img_size": 16, "runtime_cache": None}
    result = timing._session_in_child(spec, flavours.Flavour("tensorrt_rtx", "1.7.1.116"))
    assert result["ok"] is False and "did not finish within" in result["error"]


def test_a_graph_nobody_closed_is_destroyed_when_dropped():
    """The last batch's graph of a backend is not released by a next batch: dropping the backend destroys it, so
    the next backend's memory is not taken by it."""
    destroyed = []

    class Runtime:  # the two cuda-python calls CudaGraph makes, recorded
        def cudaGraphExecDestroy(self, graph_exec):
            destroyed.append(graph_exec)
            return (0,)

    graph = timing.CudaGraph("exec", Runtime(), lambda: 0)
    del graph
    assert destroyed == ["exec"]


def test_every_cuda_python_call_of_the_capture_exists():
    runtime = pytest.importorskip("cuda.bindings.runtime")
    missing = [name for name in timing.CUDART_CALLS if not hasattr(runtime, name)]
    assert not missing and runtime.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    src = open(timing.__file__).read()
    called = set(re.findall(r"cudart\.(cuda[A-Z]\w+)\(", src))
    assert called <= set(timing.CUDART_CALLS), called - set(timing.CUDART_CALLS)
