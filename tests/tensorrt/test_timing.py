"""Engines timed the trtexec way (mvlib.tensorrt.timing): graph or plain enqueues, memory between batches, JIT.

The decisions are tested with small stand-ins of our own (a capture that fails, a context that refuses); the
timed runs themselves need a GPU the flavour runs on (`make study TIER=trt`).
"""
import os
import re

import numpy as np
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


def test_the_jit_children_start_with_the_drivers_compute_cache_disabled(monkeypatch, tmp_path):
    """RTX's JIT compiles into the CUDA driver's compute cache, which honours CUDA_CACHE_DISABLE: both measuring
    children get CUDA_CACHE_DISABLE=1 whatever the parent has, beside the flavour's library path."""
    import subprocess
    monkeypatch.setenv("CUDA_CACHE_DISABLE", "0")
    fl = flavours.Flavour("tensorrt_rtx", "1.7.1.116")
    seen = []

    def run(cmd, **kw):  # our seam: the child's command line and environment, recorded
        seen.append((cmd, kw["env"]))
        return subprocess.CompletedProcess(cmd, 1, "", "no GPU")
    monkeypatch.setattr(timing.subprocess, "run", run)
    spec = {"plan": str(tmp_path / "engine.plan"), "plugins": [], "batch": 1, "img_size": 16, "runtime_cache": None}
    result = timing._session_in_child(spec, fl)
    assert result["ok"] is False and "no GPU" in result["error"]
    (cmd, env), = seen
    assert cmd[-3] == "jit" and env["CUDA_CACHE_DISABLE"] == "1"
    # the library folder where TensorRT-RTX is installed (none at the floors, which install no builder)
    assert env.get("LD_LIBRARY_PATH") == timing.plugin_libs.library_env(fl).get("LD_LIBRARY_PATH")
    assert env["MVLIB_PARENT_PID"] == str(os.getpid())  # the child dies with this process


def test_a_refused_capture_tries_rtxs_own_graph_mode_before_plain_enqueues():
    """A plugin engine ("Found non-capturable custom layer op"): the context is made anew in RTX's graph mode and
    its enqueues timed, and the text says so; where that is refused too, plain enqueues with both reasons."""
    switched = []
    launch, how = timing.choose_launch((False, "TensorRT-RTX 1.7: the execution context is not stream-capturable"),
                                       lambda: (Graph(), ""), plain, lambda: switched.append(1) or "")
    assert launch() == "enqueued" and switched == [1]
    assert how.startswith("CUDA events around each execute_async_v3 of a context in TensorRT-RTX's own CUDA-graph")
    assert "WHOLE_GRAPH_CAPTURE" in how and "not stream-capturable" in how
    launch, how = timing.choose_launch((None, ""), lambda: (None, "the capture failed (cudaErrorX)"), plain,
                                       lambda: "no graph mode today")
    assert how.startswith("CUDA events around each plain execute_async_v3") and "cudaErrorX" in how
    assert "no graph mode today" in how
    launch, how = timing.choose_launch((True, ""), lambda: (Graph(), ""), plain, lambda: pytest.fail("not asked"))
    assert how == timing.GRAPH_TIMING


class Cudart:
    """Our stand-in for cuda-python's runtime: answers every call with success, records each."""

    class cudaError_t:
        cudaSuccess = 0

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = 2

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, *args))
            return {"cudaStreamEndCapture": (0, "graph"), "cudaGraphInstantiate": (0, "exec"),
                    "cudaGetErrorName": (0, b"cudaSuccess")}.get(name, (0,))
        return call


def test_an_enqueue_that_raises_under_capture_ends_the_capture_and_destroys_its_graph():
    """trtexec's endCaptureOnError: the capture is ended, the graph it made destroyed, the error cleared, and the
    enqueue's exception goes on to the caller."""
    cudart = Cudart()

    def enqueue(handle):
        raise RuntimeError("TensorRT refused mid-capture")
    with pytest.raises(RuntimeError, match="mid-capture"):
        timing.cuda_graph_capture(enqueue, 7, lambda: 0, cudart=cudart)
    assert [c[0] for c in cudart.calls] == ["cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphDestroy",
                                            "cudaGetLastError"]
    assert cudart.calls[2] == ("cudaGraphDestroy", "graph")
    ok = Cudart()
    graph, why = timing.cuda_graph_capture(lambda handle: True, 7, lambda: 0, cudart=ok)
    assert why == "" and graph.graph_exec == "exec" and ("cudaGraphDestroy", "graph") in ok.calls
    graph.graph_exec = None  # the stand-in's graph needs no destroying


def test_an_engine_row_reports_the_engines_own_memory_and_a_pytorch_row_its_allocators_peak(monkeypatch):
    """Two measures, two columns: an engine's execution-context memory (device_memory_size_v2, as trtexec reports
    it) in engine_mem_mib, PyTorch's max_memory_allocated in peak_mem_mib; neither fills the other's."""
    import torch
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 300 * bench.MIB)
    monkeypatch.setattr(bench, "time_cuda", bench.time_host)  # no GPU here: the host clock stands in
    s = bench.Settings(seconds=0.01, repeats=2, warmup_s=0.0)
    meter = timing.bench.energy.NoMeter("test")
    engine = bench.Backend("tensorrt", "cuda", "fp16", "TensorRT-RTX FP16", lambda b: lambda: None, "t",
                           engine_mem_mib=lambda: 42.0)
    eager = bench.Backend("pytorch-eager", "cuda", "fp16", "PyTorch eager FP16", lambda b: lambda: None, "t")
    e_row, p_row = (bench.measure(b, 1, s, meter=meter) for b in (engine, eager))
    assert e_row["engine_mem_mib"] == 42.0 and np.isnan(e_row["peak_mem_mib"])
    assert p_row["peak_mem_mib"] == 300.0 and np.isnan(p_row["engine_mem_mib"])
    assert {"peak_mem_mib", "engine_mem_mib"} <= set(bench.COLUMNS)


def test_on_a_gpu_an_enqueue_that_raises_under_a_real_capture_leaves_the_stream_usable():
    """The same clean-up with the real cuda-python on a real stream (a GPU machine; skipped elsewhere): after an
    enqueue that raised mid-capture, the stream is no longer capturing and runs work again."""
    torch = pytest.importorskip("torch")
    runtime = pytest.importorskip("cuda.bindings.runtime")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (PyTorch CUDA)")
    stream = torch.cuda.Stream()
    x = torch.ones(1024, device="cuda")

    def enqueue(handle):
        with torch.cuda.stream(stream):
            x.mul_(2)  # captured work, then the failure
        raise RuntimeError("TensorRT refused mid-capture")
    with pytest.raises(RuntimeError, match="mid-capture"):
        timing.cuda_graph_capture(enqueue, stream.cuda_stream, lambda: stream.cuda_stream)
    err, status = runtime.cudaStreamIsCapturing(stream.cuda_stream)
    assert err == runtime.cudaError_t.cudaSuccess
    assert status == runtime.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
    with torch.cuda.stream(stream):
        x.add_(1)
    stream.synchronize()
    assert float(x[0]) == 2.0  # the captured multiply never ran; the add after the clean-up did


class SwitchingSession:
    """Our stand-in for a Session on its way to RTX's graph mode: what it answers, and what was asked, in order."""

    def __init__(self, refused="", fell_back=""):
        self.refused, self.fell_back, self.calls = refused, fell_back, []

    def use_rtx_graphs(self, stream_handle):
        self.calls.append(("use_rtx_graphs", stream_handle))
        return self.refused

    def rtx_graphs_fell_back(self):
        self.calls.append("fell_back?")
        return self.fell_back


def test_rtxs_graph_mode_counts_only_where_rtx_did_not_say_it_fell_back():
    """The switch, the rebind (one enqueue, where RTX captures), then RTX's own log: a fallback line there makes the
    batch time plain enqueues, saying so, instead of rows that call plain enqueues graph replays."""
    session = SwitchingSession()
    assert timing.switch_to_rtx_graphs(session, 7, lambda: session.calls.append("rebind")) == ""
    assert session.calls == [("use_rtx_graphs", 7), "rebind", "fell_back?"]
    fell = SwitchingSession(fell_back="TensorRT-RTX said: WARNING: The engine is not graph capturable. Falling back")
    why = timing.switch_to_rtx_graphs(fell, 7, lambda: None)
    launch, how = timing.choose_launch((True, ""), lambda: (None, "the capture failed (cudaErrorX)"), plain,
                                       lambda: why)
    assert how.startswith("CUDA events around each plain execute_async_v3") and "not graph capturable" in how
    refused = SwitchingSession(refused="not tried: the context is not stream-capturable")
    assert timing.switch_to_rtx_graphs(refused, 7, lambda: pytest.fail("not rebound")).startswith("not tried")
    assert refused.calls == [("use_rtx_graphs", 7)]
