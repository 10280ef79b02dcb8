"""Running engines: per-plan validity, deserialization, the execution context, Session and a polygraphy runner.

Shaped like NVIDIA's own runners (polygraphy `backend/trt/runner.py`, trtexec `sampleInference.cpp`, the
TensorRT-RTX samples `helloWorld`/`apiUsage`): a Runtime deserializes the plan, an execution context is made
from it, tensor addresses are bound by name and `execute_async_v3` enqueues on a stream.

TensorRT-RTX compiles its kernels when the context is created (JIT) and, for dynamic shapes, by default
compiles shape-specialized kernels lazily in the background while a shape-generic fallback runs (LAZY). A
timing or a CUDA graph taken then holds whichever kernel was current, so the context is created from
`engine.create_runtime_config()` with EAGER specialization, as the ONNX Runtime TensorRT-RTX execution
provider does when CUDA graphs are on (onnxruntime/core/providers/nv_tensorrt_rtx/nv_execution_provider.cc),
with the runtime cache beside the engine so the JIT's kernels survive the process. Buffers and streams come
from PyTorch, which the trt tier has anyway.

Serves: notebooks 03 to 06 (every engine that runs).
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvlib import env, io
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cache, cudainfo
from mvlib.tensorrt import plugins as plugin_libs
from mvlib.tensorrt.flavours import Flavour, capability_here

# RTX-only names the run path uses (tests assert each against the installed tensorrt_rtx with hasattr).
RTX_RUNTIME_API = {"ICudaEngine": ("create_runtime_config", "create_execution_context", "device_memory_size_v2"),
                   "IRuntimeConfig": ("dynamic_shapes_kernel_specialization_strategy", "cuda_graph_strategy",
                                      "create_runtime_cache", "set_runtime_cache", "get_runtime_cache"),
                   "IRuntimeCache": ("serialize", "deserialize"),
                   "IExecutionContext": ("is_stream_capturable", "execute_async_v3", "set_input_shape",
                                         "infer_shapes", "get_tensor_shape", "set_tensor_address"),
                   "Runtime": ("get_engine_validity", "deserialize_cuda_engine"),
                   "DynamicShapesKernelSpecializationStrategy": ("EAGER", "LAZY"),
                   "CudaGraphStrategy": ("DISABLED", "WHOLE_GRAPH_CAPTURE"),
                   "EngineValidity": ("VALID", "SUBOPTIMAL", "INVALID"),
                   "EngineInvalidityDiagnostics": ("CUDA_ERROR", "INSUFFICIENT_GPU_MEMORY", "MALFORMED_ENGINE",
                                                   "OLD_CUDA_DRIVER", "OLD_CUDA_RUNTIME", "UNSUPPORTED_CC",
                                                   "VERSION_MISMATCH")}
DIAGNOSTICS = {"VERSION_MISMATCH": "built by another TensorRT-RTX version: rebuild it",
               "UNSUPPORTED_CC": "built for another compute capability: rebuild it with trt_target='auto'",
               "OLD_CUDA_DRIVER": "the driver is too old for this TensorRT-RTX build (`make env` picks the wheel)",
               "OLD_CUDA_RUNTIME": "the CUDA runtime is too old for this engine",
               "INSUFFICIENT_GPU_MEMORY": "not enough GPU memory for this engine",
               "MALFORMED_ENGINE": "the plan is malformed: rebuild it",
               "CUDA_ERROR": "a CUDA error while checking (no usable GPU or driver)"}


def logger(fl: Flavour, keep: list[str], verbose: bool = False):
    """A TensorRT logger of flavour `fl` that keeps every warning and error (and all messages if `verbose`)."""
    trt = fl.module()

    class Logger(trt.ILogger):
        """Keeps what TensorRT says, verbatim."""

        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if verbose or severity <= trt.ILogger.Severity.WARNING:
                keep.append(f"{severity.name}: {msg}")

    return Logger()


def diagnosis(fl: Flavour, validity, diagnostics: int, said: Sequence[str]) -> str:
    """Why Runtime.get_engine_validity refused a plan: its diagnostic flags in words, else what the runtime logged."""
    enum = fl.module().EngineInvalidityDiagnostics
    flags = [name for name, member in enum.__members__.items() if int(diagnostics) & int(member)]
    words = [f"{name} ({DIAGNOSTICS.get(name, '')})" for name in flags]
    logged = [re.sub(r"^\w+: ", "", m) for m in said if not m.startswith(("VERBOSE", "INFO"))]
    return (f"{fl.label} says the engine is {validity.name}: " + ("; ".join(words) if words else
            (logged[-1] if logged else "no diagnostic given")))


# INVALID for these reasons is fixed by building the plan again here (RTX's docs: on invalidity, rebuild); the
# others (no GPU, an old driver, another compute capability, too little memory) are not, nor is a verdict that names
# one of them beside a fixable one.
REBUILD_FIXES = ("VERSION_MISMATCH", "MALFORMED_ENGINE", "OLD_CUDA_RUNTIME")
# What libtensorrt_rtx.so.1 (1.7) says where its own CUDA-graph mode runs without a graph (`strings` of the library):
# enqueues then run plain, which a row must not call graph replays.
RTX_GRAPH_FALLBACK = ("The engine is not graph capturable. Falling back to not using CUDA graphs",
                      "CUDA graph capture failed, falling back to normal path",
                      "CUDA Graph execute failed, falling back to normal path")


class NotRunnable(StageSkipped):
    """A built engine that does not run here; `rebuild`: building it again here fixes that."""

    def __init__(self, why: str, rebuild: bool = False):
        super().__init__(f"built, not run: {why}")
        self.rebuild = rebuild


def judge(fl: Flavour, validity, diagnostics: int, said: Sequence[str]) -> tuple[bool, str, bool]:
    """(runs, what to say, whether a rebuild fixes it) from Runtime.get_engine_validity's answer: VALID runs;
    SUBOPTIMAL runs and says so with its diagnostics; INVALID does not, and is rebuilt where every reason it names is
    one of REBUILD_FIXES (a rebuild here does not cure another compute capability or an old driver beside them)."""
    trt = fl.module()
    if validity == trt.EngineValidity.VALID:
        return True, "", False
    why = diagnosis(fl, validity, diagnostics, said)
    if validity == trt.EngineValidity.SUBOPTIMAL:
        return True, why, False
    flags = {name for name, member in trt.EngineInvalidityDiagnostics.__members__.items()
             if int(diagnostics) & int(member)}
    return False, why, bool(flags) and flags <= set(REBUILD_FIXES)


def plan_validity(fl: Flavour, plan: bytes) -> tuple[bool | None, str, bool]:
    """Whether this flavour's runtime says `plan` runs here (Runtime.get_engine_validity; TensorRT-RTX has it,
    TensorRT 10.13 / 11.1 bindings do not), what it said (a SUBOPTIMAL verdict too), and whether a rebuild fixes a
    refusal; None where the runtime cannot tell."""
    trt = fl.module()
    if not hasattr(trt.Runtime, "get_engine_validity"):
        return None, "", False
    said: list[str] = []
    runtime = trt.Runtime(logger(fl, said))
    validity, diagnostics = runtime.get_engine_validity(plan)
    return judge(fl, validity, diagnostics, said)


def runnable(engine: cache.Engine) -> cache.Engine:
    """`engine` if it runs on this GPU; NotRunnable (a StageSkipped) naming why not (a built engine is never
    reported as run). A SUBOPTIMAL verdict runs, and is kept in `engine.validity` for its rows to say.

    Without a GPU nothing is asked. Where the runtime can judge a plan it decides (an sm86 plan on an sm89 GPU,
    a version mismatch, an old driver); elsewhere the flavour's documented support matrix and the driver do."""
    fl = engine.flavour
    if not capability_here():
        raise NotRunnable(fl.runs_on(None)[1])
    verdict, why, rebuild = plan_validity(fl, engine.plan.read_bytes())
    if verdict is None:
        verdict, why = fl.runs_here()
        if not verdict:
            raise NotRunnable(why)
        engine.validity = f"not judged: {fl.label}'s runtime has no get_engine_validity"
        return engine
    if not verdict:
        # an old driver makes the runtime say only "cudaError 35": name the driver and the fix first
        driver = fl.driver_problem(cudainfo.driver_version()[0])
        raise NotRunnable(f"{driver} ({why})" if driver else why, rebuild=rebuild and not driver)
    engine.validity = why or "VALID"
    return engine


def usable(engine: cache.Engine, rebuild) -> cache.Engine:
    """`engine` if it runs here; where the runtime says building it again here fixes it (an INVALID cached plan:
    another RTX version or CUDA runtime, a malformed plan), `rebuild(why)` builds it again, judged once more."""
    try:
        return runnable(engine)
    except NotRunnable as err:
        if not (err.rebuild and engine.reused):
            raise
        why = str(err).removeprefix("built, not run: ")
        print(f"engine {engine.dir.name}: the cached plan does not run here ({why}); rebuilding it")
        return runnable(rebuild(why))


def cuda_context() -> None:
    """Make the device's primary CUDA context current on this thread (PyTorch, cuda-python and TensorRT share it):
    IRuntimeCache.deserialize and serialize compare against the current context's device, and refuse without one."""
    import torch
    torch.cuda.synchronize()


def deserialize(fl: Flavour, plan: bytes, plugins: Sequence[Path | str] = (),
                check: plugin_libs.Check | str | None = None):
    """(ICudaEngine or None, its Runtime, what the runtime said), plugins loaded first (each after `check`); keep
    the Runtime as long as the engine (NVIDIA's runners hold both)."""
    plugin_libs.load_plugins(fl, plugins, check)
    said: list[str] = []
    runtime = fl.module().Runtime(logger(fl, said))
    return runtime.deserialize_cuda_engine(plan), runtime, said


def runtime_cache_path(engine: cache.Engine) -> Path:
    """The RTX runtime cache of an engine on this GPU and driver: a file in the engine's cache folder (the cache
    is only valid for the GPU, driver major and TensorRT-RTX version that wrote it)."""
    info = env.gpu_info()
    tag = re.sub(r"[^A-Za-z0-9.]+", "-", f"{info.get('gpu') or 'no-gpu'}-{info.get('driver') or 'no-driver'}")
    return engine.dir / f"runtime-{tag.strip('-')}.cache"


def create_context(cuda_engine, fl: Flavour, runtime_cache: bytes | None = None, use_cache: bool = True,
                   graphs: bool = False):
    """(execution context, runtime config, runtime cache, whether the cached blob was accepted).

    TensorRT-RTX: from a runtime config with EAGER shape specialization (never timing a fallback kernel) and a
    runtime cache, loaded from `runtime_cache` where given and accepted; `graphs`: RTX's own CUDA graphs
    (cuda_graph_strategy WHOLE_GRAPH_CAPTURE). Full TensorRT: a plain context."""
    if not fl.rtx:
        return cuda_engine.create_execution_context(), None, None, False
    trt = fl.module()
    config = cuda_engine.create_runtime_config()
    config.dynamic_shapes_kernel_specialization_strategy = trt.DynamicShapesKernelSpecializationStrategy.EAGER
    if graphs:  # RTX captures each enqueue in a CUDA graph of its own and replays it (NVIDIA's RTX samples)
        config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    rt_cache, accepted = None, False
    if use_cache:
        # both answers are checked, as the RTX samples do: an unchecked failure would make every "cached" JIT
        # number a cold compile
        rt_cache = config.create_runtime_cache()
        if rt_cache is None:
            raise RuntimeError(f"{fl.label}: IRuntimeConfig.create_runtime_cache() returned None (see its log)")
        if runtime_cache:
            accepted = bool(rt_cache.deserialize(runtime_cache))  # False: another GPU/driver/version; recompiles
        if not config.set_runtime_cache(rt_cache):
            raise RuntimeError(f"{fl.label}: IRuntimeConfig.set_runtime_cache() was refused (see its log)")
    return cuda_engine.create_execution_context(config), config, rt_cache, accepted


_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                 "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8_e4m3fn"}


def torch_dtype(trt_dtype):
    """The torch dtype of a TensorRT DataType (FP8 is E4M3, TensorRT's only FP8); an error naming one without."""
    import torch
    if trt_dtype.name not in _TORCH_DTYPES:
        raise ValueError(f"an engine input or output of TensorRT type {trt_dtype.name} has no PyTorch buffer type "
                         f"here ({', '.join(_TORCH_DTYPES)}): export the model with float inputs and outputs")
    return getattr(torch, _TORCH_DTYPES[trt_dtype.name])


@dataclass
class Session:
    """A deserialized engine and one execution context, ready for execute_async_v3 (buffers from PyTorch CUDA).

    `runtime_cache`: 'auto' (the file beside the engine for this GPU), a path, or None (cold: no cache)."""
    engine: cache.Engine
    plugins: Sequence[Path | str] = ()
    runtime_cache: Path | str | None = "auto"
    keep: list = field(default_factory=list)
    rtx_graphs: bool = False  # the context runs in TensorRT-RTX's own CUDA-graph mode (use_rtx_graphs)

    def __post_init__(self):
        runnable(self.engine)
        fl = self.engine.flavour
        cuda_context()
        # the plugins' check is the one the engine's build recorded (the caller's, at build time)
        self.cuda_engine, self.runtime, self.said = deserialize(fl, self.engine.plan.read_bytes(), self.plugins,
                                                                self.engine.info.get("plugin_check"))
        said = self.said  # the runtime's warnings and errors, for as long as the Session lives
        if self.cuda_engine is None:
            raise RuntimeError(f"{fl.label} could not deserialize {self.engine.plan}: {' | '.join(said[-3:])}")
        if self.runtime_cache == "auto":
            self.runtime_cache = runtime_cache_path(self.engine)
        path = Path(self.runtime_cache) if self.runtime_cache else None
        blob = path.read_bytes() if path is not None and path.is_file() else None
        start = time.perf_counter()
        self.context, self.config, self.rt_cache, self.cache_accepted = create_context(
            self.cuda_engine, fl, blob, use_cache=path is not None)
        self.context_seconds = time.perf_counter() - start
        if self.context is None:
            raise RuntimeError(f"{fl.label} could not create an execution context for {self.engine.plan}")
        names = [self.cuda_engine.get_tensor_name(i) for i in range(self.cuda_engine.num_io_tensors)]
        mode = fl.module().TensorIOMode.INPUT
        self.inputs = [n for n in names if self.cuda_engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.cuda_engine.get_tensor_mode(n) != mode]
        if len(self.inputs) != 1:
            raise ValueError(f"{self.engine.plan}: expected one input tensor, the engine has {self.inputs}")

    def bind(self, x) -> dict:
        """Set the input shape and every tensor address for device tensor `x`; the output tensors.

        Every answer of TensorRT is checked, as polygraphy's runner and the TensorRT-RTX samples do: a refused
        shape or address would otherwise surface only as a failed enqueue, or as reads of the wrong memory."""
        import torch
        self.engine.profile.check(int(x.shape[0]))
        name = self.inputs[0]
        x = x.to(torch_dtype(self.cuda_engine.get_tensor_dtype(name))).contiguous()
        if not self.context.set_input_shape(name, tuple(x.shape)):
            raise RuntimeError(f"{self.engine.plan}: set_input_shape({name!r}, {tuple(x.shape)}) was refused (see "
                               "TensorRT's log): the shape is outside the engine's profile or the wrong rank")
        missing = self.context.infer_shapes()
        if missing:
            raise RuntimeError(f"{self.engine.plan}: infer_shapes left {list(missing)} unknown after setting "
                               f"{name!r} to {tuple(x.shape)}")
        outs = {n: torch.empty(tuple(self.context.get_tensor_shape(n)), device=x.device,
                               dtype=torch_dtype(self.cuda_engine.get_tensor_dtype(n))) for n in self.outputs}
        for n, t in {name: x, **outs}.items():
            if not self.context.set_tensor_address(n, t.data_ptr()):
                raise RuntimeError(f"{self.engine.plan}: set_tensor_address({n!r}) was refused (see TensorRT's log)")
        self.keep = [x, *outs.values()]  # alive as long as the addresses are bound
        return outs

    def enqueue(self, stream_handle: int) -> bool:
        """Enqueue one inference on a CUDA stream; False where TensorRT refused (e.g. under a failed capture)."""
        return bool(self.context.execute_async_v3(stream_handle))

    def execute(self, stream_handle: int) -> None:
        """Enqueue one inference on a CUDA stream, or raise."""
        if not self.enqueue(stream_handle):
            raise RuntimeError(f"execute_async_v3 failed for {self.engine.plan}")

    def capturable(self, stream_handle: int) -> tuple[bool | None, str]:
        """Whether TensorRT allows a CUDA-graph capture of an enqueue on this stream (RTX answers; full TensorRT
        cannot tell before trying: None). Never in RTX's own graph mode: RTX captures there itself."""
        if self.rtx_graphs:
            return False, f"{self.engine.flavour.label}: the context captures its own CUDA graphs"
        if not hasattr(self.context, "is_stream_capturable"):
            return None, ""
        ok = bool(self.context.is_stream_capturable(stream_handle))
        return ok, "" if ok else f"{self.engine.flavour.label}: the execution context is not stream-capturable"

    def use_rtx_graphs(self, stream_handle: int | None = None) -> str:
        """Make the context anew in TensorRT-RTX's own CUDA-graph mode (cuda_graph_strategy WHOLE_GRAPH_CAPTURE, as
        NVIDIA's RTX samples run), its JIT kernels kept through the runtime cache; '' when done, else why not.
        Its tensors must be bound again.

        Not where the present context says it is not stream-capturable on `stream_handle`: RTX's graph mode needs
        that too, and otherwise runs plain enqueues ("The engine is not graph capturable. Falling back to not using
        CUDA graphs", libtensorrt_rtx), which a row would then wrongly call graph replays."""
        fl = self.engine.flavour
        if self.rtx_graphs:
            return ""
        if not fl.rtx:
            return f"{fl.label} has no CUDA-graph mode of its own"
        if (stream_handle is not None and hasattr(self.context, "is_stream_capturable")
                and not self.context.is_stream_capturable(stream_handle)):
            return (f"not tried: {fl.label}'s own CUDA graphs need a stream-capturable context too (without one it "
                    "runs plain enqueues: 'The engine is not graph capturable. Falling back to not using CUDA "
                    "graphs.')")
        blob = bytes(self.rt_cache.serialize() or b"") if self.rt_cache is not None else None
        self.context = self.config = None  # the old context's device memory goes first
        self.keep = []
        self.context, self.config, self.rt_cache, _ = create_context(self.cuda_engine, fl, blob,
                                                                     use_cache=blob is not None, graphs=True)
        if self.context is None:
            raise RuntimeError(f"{fl.label} could not create an execution context in its CUDA-graph mode for "
                               f"{self.engine.plan}")
        # setCudaGraphStrategy answers with a bool the Python property drops: read the setting back instead
        kept = self.config.cuda_graph_strategy
        if kept != fl.module().CudaGraphStrategy.WHOLE_GRAPH_CAPTURE:
            return f"{fl.label} did not keep cuda_graph_strategy WHOLE_GRAPH_CAPTURE (it reads back {kept})"
        self.rtx_graphs, self.said_before_graphs = True, len(getattr(self, "said", []))
        return ""

    def rtx_graphs_fell_back(self) -> str:
        """'' while RTX's own CUDA-graph mode captures, as far as its log says; else the line in which TensorRT-RTX
        said (since the switch) that it runs without a graph. Ask after an enqueue."""
        said = getattr(self, "said", [])[getattr(self, "said_before_graphs", 0):]
        fell = [m for m in said if any(f in m for f in RTX_GRAPH_FALLBACK)]
        return f"{self.engine.flavour.label} said: {fell[0]}" if fell else ""

    def save_runtime_cache(self) -> Path | None:
        """Write the runtime cache (RTX's JIT-compiled kernels) beside the engine, atomically; its path."""
        if self.rt_cache is None or not self.runtime_cache:
            return None
        blob = self.rt_cache.serialize()
        if not blob:
            return None
        io.write_bytes(Path(self.runtime_cache), bytes(blob))
        return Path(self.runtime_cache)


def infer(session: Session, stream, x, current) -> dict:
    """One inference of device tensor `x` on the engine's own `stream`, ordered after the `current` stream that made
    `x` (as polygraphy's runner copies its inputs on its own stream), then waited for; the output tensors. A blocking
    `.cuda()` copy has finished on return anyway; an input made by a kernel or a non_blocking copy has not, and
    PyTorch's streams do not wait for the default one by themselves."""
    import torch
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        outs = session.bind(x)
        session.execute(stream.cuda_stream)
    stream.synchronize()
    return outs


def runner(engine: cache.Engine | Path | str, name: str, plugins: Sequence[Path | str] = ()):
    """A polygraphy runner over our own Session, so polygraphy's Comparator drives either flavour."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata
    engine = engine if isinstance(engine, cache.Engine) else cache.load(engine)

    class EngineRunner(BaseRunner):
        def __init__(self):
            super().__init__(name=name, prefix="mvlib-trt-runner")

        def activate_impl(self):
            import torch
            self.session = Session(engine, plugins)
            self.stream = torch.cuda.Stream()

        def get_input_metadata_impl(self):
            ce, inp = self.session.cuda_engine, self.session.inputs[0]
            return TensorMetadata().add(inp, np.float32, (-1, *tuple(ce.get_tensor_shape(inp))[1:]))

        def infer_impl(self, feed_dict):
            import torch
            start = time.perf_counter()
            x = torch.from_numpy(np.ascontiguousarray(feed_dict[self.session.inputs[0]])).cuda()
            outs = infer(self.session, self.stream, x, torch.cuda.current_stream())
            # .cpu() makes new host arrays every call: no caller ever holds a view of a reused buffer.
            result = {n: t.float().cpu().numpy() for n, t in outs.items()}
            self.inference_time = time.perf_counter() - start
            return result

        def deactivate_impl(self):
            self.session.save_runtime_cache()
            del self.session, self.stream

    return EngineRunner()
