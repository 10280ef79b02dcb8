"""Engines timed the trtexec way, and TensorRT-RTX's JIT costs (context creation, first inference, runtime cache).

Throughput (`tensorrt` / `tensorrt_engine`, measured by mvlib.bench's generic machinery): per batch, bind, one
plain enqueue (TensorRT's deferred shape-dependent setup must not land in a graph), then a CUDA graph of one
`execute_async_v3` replayed, as trtexec does. The graph is captured with cuda-python exactly as trtexec's
TrtCudaGraph does (samples/common/sampleDevice.h: thread-local capture mode, end the capture on error, clear the
error), not with torch.cuda.graph, whose exit leaves its capture stream current when the capture fails. Where a
graph is not allowed, it times plain enqueues instead, as trtexec does when a capture fails
(samples/common/sampleInference.cpp: `endCaptureOnError` then "inference will be launched without using CUDA
graph"); TensorRT-RTX is asked first with `is_stream_capturable`. Where a capture was allowed but failed, the context
is made anew in RTX's own graph mode (cuda_graph_strategy WHOLE_GRAPH_CAPTURE, as NVIDIA's RTX samples run) and its
log checked for RTX's own fallback; where the context is not stream-capturable (a plugin engine: "Found
non-capturable custom layer op") RTX's graph mode is not tried, since it then runs plain enqueues too
(libtensorrt_rtx: "The engine is not graph capturable. Falling back to not using CUDA graphs"). Plain enqueues go to
the engine's own stream, never the default one, on which enqueueV3 adds device synchronizations
(NvInferRuntime.h, enqueueV3). The row's `timing` column says which way each batch was timed. Memory: an
engine row reports the engine's own device memory (`engine_mem_mib`), never an allocator peak.

JIT (`jit`): each engine in two fresh processes, as a user meets it: cold (no runtime cache: RTX compiles every
kernel when the context is created), then with the runtime cache the first one wrote beside the engine; each
measures context creation and the first inference, the second also the warm steady state. Both start with
CUDA_CACHE_DISABLE=1 (`jit_env`), so the driver's own compute cache never makes "cold" warm.

Serves: notebook 06 (the TensorRT rows of 06_benchmark.csv and the JIT costs).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mvlib import bench, io, metrics
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cache, runner
from mvlib.tensorrt import plugins as plugin_libs
from mvlib.tensorrt.flavours import select

GRAPH_TIMING = f"CUDA events around each CUDA-graph replay of execute_async_v3, {bench.IN_FLIGHT} in flight"
RTX_GRAPH_TIMING = ("CUDA events around each execute_async_v3 of a context in TensorRT-RTX's own CUDA-graph mode "
                    "(cuda_graph_strategy WHOLE_GRAPH_CAPTURE: RTX captures and replays; our capture was refused: "
                    "{why}), " f"{bench.IN_FLIGHT} in flight")
PLAIN_TIMING = ("CUDA events around each plain execute_async_v3 on the engine's own stream (no CUDA graph: {why}), "
                f"{bench.IN_FLIGHT} in flight")
# the cuda-python runtime calls the capture makes (a test asserts each against the installed cuda-python)
CUDART_CALLS = ("cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiate", "cudaGraphLaunch",
                "cudaGraphDestroy", "cudaGraphExecDestroy", "cudaGetLastError", "cudaGetErrorName")
JIT_TIMEOUT_S = 1800  # one fresh process's context creation and first inference (RTX compiles every kernel)
JIT_COLUMNS = ["jit_batch", "context_cold_ms", "first_inference_cold_ms", "context_cached_ms",
               "first_inference_cached_ms", "steady_ms", "jit"]
STEADY_LAUNCHES = 50


def within(profile, batch: int) -> int:
    """`batch`, or BatchSkipped (left out of the table, with the reason) where the engine's profile refuses it."""
    try:
        return profile.check(batch)
    except ValueError as err:
        raise bench.BatchSkipped(str(err)) from err


def choose_launch(capturable: tuple[bool | None, str], capture: Callable[[], tuple[Any, str]],
                  plain: Callable[[], Any],
                  rtx_graphs: Callable[[], str] | None = None) -> tuple[Callable[[], Any], str]:
    """(launch, timing text): a graph's replay where TensorRT allows a capture and it succeeds; else, where
    `rtx_graphs` switches the context to TensorRT-RTX's own graph mode ('' when it did, else why not), its enqueues;
    else plain enqueues. The text says which, and why."""
    ok, why = capturable
    if ok is not False:
        graph, why = capture()
        if graph is not None:
            return graph.replay, GRAPH_TIMING
    if rtx_graphs is not None:
        refused = rtx_graphs()
        if not refused:
            return plain, RTX_GRAPH_TIMING.format(why=why)
        why = f"{why}; RTX's graph mode: {refused}"
    return plain, PLAIN_TIMING.format(why=why)


class CudaGraph:
    """An instantiated CUDA graph (cuda-python), replayed on the stream `current()` names, destroyed by close()."""

    def __init__(self, graph_exec, cudart, current: Callable[[], int]):
        self.graph_exec, self.cudart, self.current = graph_exec, cudart, current

    def replay(self) -> None:
        """Launch the graph once on the current stream."""
        err, = self.cudart.cudaGraphLaunch(self.graph_exec, self.current())
        if err != self.cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"cudaGraphLaunch: {cuda_error(self.cudart, err)}")

    def close(self) -> None:
        """Destroy the executable graph (its device memory goes back before the next batch is measured)."""
        if self.graph_exec is not None:
            self.cudart.cudaGraphExecDestroy(self.graph_exec)
            self.graph_exec = None

    def __del__(self):
        self.close()  # a backend's last graph, which no next batch releases


def cuda_error(cudart, err) -> str:
    """CUDA's own name of a runtime error ('cudaErrorStreamCaptureInvalidated')."""
    found, name = cudart.cudaGetErrorName(err)
    return name.decode() if found == cudart.cudaError_t.cudaSuccess else str(err)


def cuda_graph_capture(enqueue: Callable[[int], bool], stream_handle: int,
                       current: Callable[[], int], cudart=None) -> tuple[CudaGraph | None, str]:
    """A CUDA graph of one `enqueue(stream_handle)`, or None and why: trtexec's TrtCudaGraph sequence (begin in
    thread-local mode, enqueue, end; on failure end the capture, destroy what it made and clear the error). An
    enqueue that raises is re-raised after the same clean-up (trtexec's endCaptureOnError)."""
    if cudart is None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            return None, "cuda-python, which captures the graph, is not installed (`make env` installs it)"
    ok = cudart.cudaError_t.cudaSuccess
    err, = cudart.cudaStreamBeginCapture(stream_handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
    if err != ok:
        cudart.cudaGetLastError()
        return None, f"cudaStreamBeginCapture: {cuda_error(cudart, err)}"
    try:
        enqueued = enqueue(stream_handle)
    except BaseException:
        end_capture_on_error(cudart, stream_handle)
        raise
    err, graph = cudart.cudaStreamEndCapture(stream_handle)
    if err != ok or not enqueued:
        if err == ok and graph:
            cudart.cudaGraphDestroy(graph)
        cudart.cudaGetLastError()
        return None, ("execute_async_v3 returned False under capture" if not enqueued
                      else f"the capture failed ({cuda_error(cudart, err)})")
    err, graph_exec = cudart.cudaGraphInstantiate(graph, 0)
    cudart.cudaGraphDestroy(graph)
    if err != ok:
        cudart.cudaGetLastError()
        return None, f"cudaGraphInstantiate: {cuda_error(cudart, err)}"
    return CudaGraph(graph_exec, cudart, current), ""


def end_capture_on_error(cudart, stream_handle: int) -> None:
    """End a capture an exception interrupted, destroy the graph it made, clear the error (trtexec's
    endCaptureOnError), so the stream is usable again and nothing leaks."""
    err, graph = cudart.cudaStreamEndCapture(stream_handle)
    if err == cudart.cudaError_t.cudaSuccess and graph:
        cudart.cudaGraphDestroy(graph)
    cudart.cudaGetLastError()


def switch_to_rtx_graphs(session: runner.Session, stream_handle: int, rebind: Callable[[], None]) -> str:
    """Session.use_rtx_graphs, then `rebind` (a new context: bound again, one enqueue, where RTX captures), then
    whether RTX said it runs without a graph after all; '' where its graph mode is on, else why not."""
    refused = session.use_rtx_graphs(stream_handle)
    if refused:
        return refused
    rebind()
    return session.rtx_graphs_fell_back()


def plain_launch(session: runner.Session, stream, current: Callable[[], Any]) -> Callable[[], None]:
    """One enqueue on the engine's own `stream`, ordered after and before the `current()` stream that the timer's
    events are recorded on (enqueueV3 on the default stream synchronizes the device: NvInferRuntime.h)."""
    def plain() -> None:
        timer_stream = current()
        stream.wait_stream(timer_stream)
        session.execute(stream.cuda_stream)
        timer_stream.wait_stream(stream)
    return plain


def release(state: dict, session: runner.Session, empty_cache: Callable[[], None]) -> None:
    """Destroy the previous batch's graph, free its buffers, then hand the freed blocks back to the driver, so the
    next batch's peak memory is its own."""
    graph = state.get("graph")
    if graph is not None:
        graph.close()
    state.clear()
    session.keep = []
    empty_cache()


def tensorrt_engine(settings: bench.Settings, engine, precision: str, label: str,
                    plugin_libs: Sequence[Path | str] = (), backend: str = "tensorrt",
                    notes: str = "") -> bench.Backend:
    """A built engine run through execute_async_v3, captured once per batch in a CUDA graph where allowed, else in
    TensorRT-RTX's own graph mode where that is on offer, else plain; the row's `timing` says which."""
    import torch
    engine = engine if isinstance(engine, cache.Engine) else cache.load(engine)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    session = runner.Session(engine, plugin_libs)
    profile = engine.profile
    stream = torch.cuda.Stream()
    state: dict = {}  # the current batch's graph and buffers: they must live while it replays

    def empty_cache() -> None:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def current_handle() -> int:
        return torch.cuda.current_stream().cuda_stream

    def bind_and_enqueue(x) -> None:
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            session.bind(x)
            # One plain enqueue after a shape change, before capture: TensorRT does its deferred
            # shape-dependent setup there, which must not land inside the graph.
            session.execute(stream.cuda_stream)
        stream.synchronize()

    def prepare(batch: int) -> Callable[[], Any]:
        within(profile, batch)
        release(state, session, empty_cache)
        # the same fresh random images bench gives every backend (seeded by the run's seed and the batch)
        x = torch.from_numpy(bench.images(batch, settings)).to("cuda")
        bind_and_enqueue(x)

        def capture():
            graph, why = cuda_graph_capture(session.enqueue, stream.cuda_stream, current_handle)
            state["graph"] = graph
            return graph, why

        def rtx_graphs() -> str:
            return switch_to_rtx_graphs(session, stream.cuda_stream, lambda: bind_and_enqueue(x))

        launch, result.timing = choose_launch(session.capturable(stream.cuda_stream), capture,
                                              plain_launch(session, stream, torch.cuda.current_stream),
                                              rtx_graphs if engine.flavour.rtx else None)
        state.update(launch=launch, bound=list(session.keep))
        return launch

    def engine_mib() -> float:
        return session.cuda_engine.device_memory_size_v2 / bench.MIB

    validity = engine.validity if "SUBOPTIMAL" in engine.validity else ""
    result = bench.Backend(backend, "cuda", precision, label, prepare, GRAPH_TIMING,
                           notes=(f"{engine.flavour.label}, target {engine.info['target']}, "
                                  f"profile {profile.min}..{profile.max}"
                                  + ("; EAGER shape specialization" if engine.flavour.rtx else "")
                                  + (f"; {validity}" if validity else "")
                                  + "; engine_mem = the execution context's device memory (device_memory_size_v2, "
                                    "as trtexec reports it; weights are the plan's bytes)"
                                  + (f"; {notes}" if notes else "")),
                           engine_mem_mib=engine_mib, keep=[session, stream, state])
    return result


def tensorrt(settings: bench.Settings, onnx_path: Path | str, precision: str, profile,
             trt_flavour: str | None = "auto", trt_target: str = "auto", workspace_gb: float = 4,
             plugins: Sequence[Path | str] = (), check: plugin_libs.Check | None = None,
             plugin_label: str = "plugin") -> bench.Backend:
    """Build (or reuse) the engine of an ONNX variant with cache.build_engine and wrap it for timing.

    An engine with plugin libraries (each loaded after `check`) is labelled '... + <plugin_label>'."""
    onnx_path = Path(onnx_path)
    if not onnx_path.exists():
        raise StageSkipped(f"{onnx_path.name} not found in {onnx_path.parent}: notebooks 01 to 05 write it")
    fl = select(trt_flavour)

    def make(why: str) -> cache.Engine:
        return cache.build_engine(onnx_path, profile, fl, trt_target, plugins, workspace_gb, check=check, force=why)
    engine = runner.usable(make(""), make)
    label = f"{engine.flavour.label.split()[0]} {precision.upper()}" + (f" + {plugin_label}" if plugins else "")
    return tensorrt_engine(settings, engine, precision, label, plugin_libs=plugins,
                           backend="tensorrt+plugin" if plugins else "tensorrt", notes=onnx_path.name)


# --- RTX's JIT: context creation and first inference, cold and with the runtime cache ---------------------------
def measure_session(spec: dict) -> dict:
    """In this (fresh) process: context creation, first inference and, if asked, the warm steady state (ms)."""
    import torch
    engine = cache.load(spec["plan"])
    session = runner.Session(engine, spec["plugins"], runtime_cache=spec["runtime_cache"])
    x = torch.from_numpy(metrics.random_images(spec["batch"], spec["img_size"], seed=spec["batch"])).cuda()
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.cuda.stream(stream):
        session.bind(x)
        session.execute(stream.cuda_stream)
    stream.synchronize()
    out = {"context_ms": session.context_seconds * 1e3, "first_inference_ms": (time.perf_counter() - start) * 1e3,
           "cache_accepted": session.cache_accepted, "saved": str(session.save_runtime_cache() or "")}
    if spec.get("steady"):
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(STEADY_LAUNCHES)]
        with torch.cuda.stream(stream):
            for _ in range(10):
                session.execute(stream.cuda_stream)
            for begin, end in events:
                begin.record(stream)
                session.execute(stream.cuda_stream)
                end.record(stream)
        stream.synchronize()
        times = sorted(b.elapsed_time(e) for b, e in events)
        out["steady_ms"] = times[len(times) // 2]
    return out


def jit_child(spec_path: str, result_path: str) -> int:
    """`python -m mvlib.tensorrt jit SPEC RESULT`: one measure_session in this process, reported as JSON."""
    try:
        result = {"ok": True, **measure_session(json.loads(Path(spec_path).read_text()))}
    except Exception as err:  # reported to the parent, which records it in the jit column
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    Path(result_path).write_text(json.dumps(result))
    return 0 if result["ok"] else 1


def jit_env(fl) -> dict:
    """The measuring children's environment: the flavour's library path, and CUDA_CACHE_DISABLE=1. RTX's JIT
    compiles through NVRTC into the CUDA driver's compute cache, which honours that variable (RTX's library:
    "[nvrtc cache] ENV: CUDA_CACHE_DISABLE"): without it "cold" is cold only on a machine's first run, and the
    "cached" columns would measure the driver's cache beside RTX's runtime cache."""
    return {**cache.child_env(fl), "CUDA_CACHE_DISABLE": "1"}


def _session_in_child(spec: dict, fl) -> dict:
    """Run measure_session in a fresh process (a cold JIT is a new process's), its result."""
    folder = Path(spec["plan"]).parent
    with io.atomic_path(folder / "jit_spec.json") as spec_path, io.atomic_path(folder / "jit.json") as result_path:
        spec_path.write_text(json.dumps(spec))
        try:
            proc = subprocess.run([sys.executable, "-m", "mvlib.tensorrt", "jit", str(spec_path), str(result_path)],
                                  env=jit_env(fl), capture_output=True, text=True, timeout=JIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # a measurement, not the study: the jit column says so
            return {"ok": False, "error": f"the measuring process did not finish within {JIT_TIMEOUT_S:g} s"}
        text = result_path.read_text() if result_path.stat().st_size else ""
    if text:
        return json.loads(text)
    said = cache.output_tail(proc.stderr, 3)
    return {"ok": False, "error": f"the measuring process died ({cache.exit_text(proc.returncode)}) before it "
                                  "reported" + (": " + " | ".join(said) if said else "")}


def jit(engine: cache.Engine, plugins: Sequence[Path | str] = (), img_size: int | None = None) -> dict:
    """The engines-table JIT columns of an engine that runs here: cold, then with the runtime cache, then warm."""
    batch = engine.profile.opt
    img_size = img_size or int(engine.info["shape"][-1])
    base = {"plan": str(engine.plan), "plugins": [str(p) for p in plugins], "batch": batch, "img_size": img_size}
    path = runner.runtime_cache_path(engine)
    path.unlink(missing_ok=True)  # cold means no cache, also none from an earlier run
    cold = _session_in_child({**base, "runtime_cache": str(path) if engine.flavour.rtx else None}, engine.flavour)
    if not cold.get("ok"):
        return {"jit_batch": batch, "jit": f"failed: {cold.get('error')}"}
    warm = _session_in_child({**base, "runtime_cache": str(path) if engine.flavour.rtx else None, "steady": True},
                             engine.flavour)
    if not warm.get("ok"):
        return {"jit_batch": batch, "jit": f"failed: {warm.get('error')}"}
    row = {"jit_batch": batch, "context_cold_ms": round(cold["context_ms"], 2),
           "first_inference_cold_ms": round(cold["first_inference_ms"], 2), "steady_ms": round(warm["steady_ms"], 4)}
    if engine.flavour.rtx:
        row.update(context_cached_ms=round(warm["context_ms"], 2),
                   first_inference_cached_ms=round(warm["first_inference_ms"], 2),
                   jit="measured" + ("" if warm["cache_accepted"] else "; the runtime cache was refused"))
    else:
        row["jit"] = "measured (full TensorRT compiles ahead of time: no runtime cache)"
    return row
