"""Engines timed the trtexec way, and TensorRT-RTX's JIT costs (context creation, first inference, runtime cache).

Throughput (`tensorrt` / `tensorrt_engine`, measured by mvlib.bench's generic machinery): per batch, bind, one
plain enqueue (TensorRT's deferred shape-dependent setup must not land in a graph), then a CUDA graph of one
`execute_async_v3` replayed, as trtexec does. Where a graph is not allowed, it times plain enqueues instead,
as trtexec does when a capture fails (NVIDIA/TensorRT samples/common/sampleInference.cpp: `endCaptureOnError`
then "inference will be launched without using CUDA graph"); TensorRT-RTX is asked first with
`is_stream_capturable`. The row's `timing` column says which way each batch was timed.

JIT (`jit`): each engine in two fresh processes, as a user meets it: cold (no runtime cache: RTX compiles every
kernel when the context is created), then with the runtime cache the first one wrote beside the engine; each
measures context creation and the first inference, the second also the warm steady state.
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
PLAIN_TIMING = ("CUDA events around each plain execute_async_v3 (no CUDA graph: {why}), "
                f"{bench.IN_FLIGHT} in flight")
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
                  plain: Callable[[], Any]) -> tuple[Callable[[], Any], str]:
    """(launch, timing text): a graph's replay where TensorRT allows a capture and it succeeds, else plain enqueues."""
    ok, why = capturable
    if ok is not False:
        graph, why = capture()
        if graph is not None:
            return graph.replay, GRAPH_TIMING
    return plain, PLAIN_TIMING.format(why=why)


def torch_capture(session: runner.Session, stream) -> tuple[Any, str]:
    """A CUDA graph of one enqueue on `stream`, or None and why (a failed capture is ended, not raised)."""
    import torch
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            enqueued = session.enqueue(stream.cuda_stream)
    except RuntimeError as err:  # the capture was invalidated: trtexec ends it and times without a graph
        return None, f"the capture failed ({str(err).splitlines()[0]})"
    if not enqueued:
        return None, "execute_async_v3 returned False under capture"
    return graph, ""


def release(state: dict, session: runner.Session, empty_cache: Callable[[], None]) -> None:
    """Free the previous batch's graph and buffers, then hand the freed blocks back to the driver, so the next
    batch's peak memory is its own."""
    state.clear()
    session.keep = []
    empty_cache()


def tensorrt_engine(settings: bench.Settings, engine, precision: str, label: str,
                    plugin_libs: Sequence[Path | str] = (), backend: str = "tensorrt",
                    notes: str = "") -> bench.Backend:
    """A built engine run through execute_async_v3, captured once per batch in a CUDA graph where allowed."""
    import torch
    engine = engine if isinstance(engine, cache.Engine) else cache.load(engine)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free_before = torch.cuda.mem_get_info()[0]
    session = runner.Session(engine, plugin_libs)
    profile = engine.profile
    stream = torch.cuda.Stream()
    state: dict = {}  # the current batch's graph and buffers: they must live while it replays

    def empty_cache() -> None:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def prepare(batch: int) -> Callable[[], Any]:
        within(profile, batch)
        release(state, session, empty_cache)
        # the same fresh random images bench gives every backend (seeded by the run's seed and the batch)
        x = torch.from_numpy(metrics.random_images(batch, settings.img_size, seed=settings.seed * 1000 + batch))
        x = x.to("cuda")
        with torch.cuda.stream(stream):
            buffers = session.bind(x)
            # One plain enqueue after a shape change, before capture: TensorRT does its deferred
            # shape-dependent setup there, which must not land inside the graph.
            session.execute(stream.cuda_stream)
        stream.synchronize()

        def plain() -> None:
            session.execute(torch.cuda.current_stream().cuda_stream)

        launch, result.timing = choose_launch(session.capturable(stream.cuda_stream),
                                              lambda: torch_capture(session, stream), plain)
        state.update(launch=launch, buffers=buffers, bound=list(session.keep))
        return launch

    def taken_mb() -> float:
        torch.cuda.synchronize()
        return (free_before - torch.cuda.mem_get_info()[0]) / bench.MIB

    result = bench.Backend(backend, "cuda", precision, label, prepare, GRAPH_TIMING,
                           notes=(f"{engine.flavour.label}, target {engine.info['target']}, "
                                  f"profile {profile.min}..{profile.max}"
                                  + ("; EAGER shape specialization" if engine.flavour.rtx else "")
                                  + "; peak = device memory taken by engine, context, I/O and graph (cudaMemGetInfo)"
                                  + (f"; {notes}" if notes else "")),
                           peak_mem_mb=taken_mb, keep=[session, stream, state])
    return result


def tensorrt(settings: bench.Settings, onnx_path: Path | str, precision: str, profile, plugin: bool = False,
             trt_flavour: str | None = "auto", trt_target: str = "auto", workspace_gb: float = 4) -> bench.Backend:
    """Build (or reuse) the engine of an ONNX variant with cache.build_engine and wrap it for timing."""
    onnx_path = Path(onnx_path)
    if not onnx_path.exists():
        raise StageSkipped(f"{onnx_path.name} not found in {onnx_path.parent}: notebooks 01 to 05 write it")
    libs: tuple = ()
    if plugin:
        from mvlib import kernel
        try:
            libs = (kernel.plugin_library(),)
        except FileNotFoundError as err:
            raise StageSkipped(f"the SiLU plugin library is not built (notebook 05 builds it): {err}") from err
    engine = runner.runnable(cache.build_engine(onnx_path, profile, select(trt_flavour), trt_target, libs,
                                                workspace_gb))
    label = f"{engine.flavour.label.split()[0]} {precision.upper()}" + (" + SiLU plugin" if plugin else "")
    return tensorrt_engine(settings, engine, precision, label, plugin_libs=libs,
                           backend="tensorrt+plugin" if plugin else "tensorrt", notes=onnx_path.name)


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


def _session_in_child(spec: dict, fl) -> dict:
    """Run measure_session in a fresh process (a cold JIT is a new process's), its result."""
    folder = Path(spec["plan"]).parent
    with io.atomic_path(folder / "jit_spec.json") as spec_path, io.atomic_path(folder / "jit.json") as result_path:
        spec_path.write_text(json.dumps(spec))
        subprocess.run([sys.executable, "-m", "mvlib.tensorrt", "jit", str(spec_path), str(result_path)],
                       env=plugin_libs.library_env(fl), capture_output=True, text=True, timeout=1800)
        text = result_path.read_text() if result_path.stat().st_size else ""
    return json.loads(text) if text else {"ok": False, "error": "the measuring process died before it reported"}


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
