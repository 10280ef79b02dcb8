"""Running engines (mvlib.tensorrt.runner): the RTX API it calls, the context it makes, per-plan validity.

No engine runs here (no GPU; RTX's runtime refuses the H200 too). What can be real is real: the installed
tensorrt_rtx's names and enums, a plan built here and the runtime's own verdict on it. The execution context is
made through a small stand-in engine of ours that records what the runner asks for.
"""
import re
from pathlib import Path

import numpy as np
import pytest
import tensorrt_models as models

from mvlib import paths
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cache, flavours, runner, shapes, timing

HAS_RTX = flavours.installed("tensorrt_rtx")[0] is not None
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="needs the installed TensorRT-RTX")


@pytest.fixture(scope="module")
def rtx():
    if not HAS_RTX:
        pytest.skip("needs the installed TensorRT-RTX")
    return flavours.installed("tensorrt_rtx")[0]


@pytest.fixture(scope="module")
def plan(rtx, tmp_path_factory):
    """A real sm86 engine of a small convolution model, built here."""
    mp = pytest.MonkeyPatch()
    mp.setattr(paths, "ENGINES", tmp_path_factory.mktemp("engines"))
    onnx_path = models.conv(tmp_path_factory.mktemp("model") / "model.onnx")
    yield cache.build_engine(onnx_path, shapes.Profile(1, 2, 4), rtx, "sm86", workspace_gb=1)
    mp.undo()


@needs_rtx
def test_every_rtx_runtime_name_the_run_path_uses_exists(rtx):
    trt = rtx.module()
    for cls, names in runner.RTX_RUNTIME_API.items():
        assert hasattr(trt, cls), cls
        for name in names:
            assert hasattr(getattr(trt, cls), name), f"{cls}.{name}"
    assert set(runner.DIAGNOSTICS) == set(trt.EngineInvalidityDiagnostics.__members__)
    assert set(runner.REBUILD_FIXES) <= set(trt.EngineInvalidityDiagnostics.__members__)
    # every `trt.<Class>.<member>` the run path spells out, against the installed bindings
    for module in (runner, timing):
        for cls, name in re.findall(r"\btrt\.(\w+)\.(\w+)", Path(module.__file__).read_text()):
            assert hasattr(getattr(trt, cls), name), f"{module.__name__}: trt.{cls}.{name}"
    # the attributes set or read on RTX objects by name
    for cls, name in (("IRuntimeConfig", "cuda_graph_strategy"), ("ICudaEngine", "device_memory_size_v2"),
                      ("CudaGraphStrategy", "WHOLE_GRAPH_CAPTURE"), ("IRuntimeConfig", "set_runtime_cache")):
        assert name in runner.RTX_RUNTIME_API[cls]
    # Full TensorRT's bindings (NVIDIA/TensorRT python/src/infer/pyCore.cpp, release/10.13 and v11.1) have
    # IRuntimeConfig with the allocation strategy only, and no get_engine_validity or is_stream_capturable:
    # the runner asks hasattr for those, and create_context makes a plain context for full TensorRT.


class Recorder:
    """Our stand-in for an ICudaEngine / IRuntimeConfig / IRuntimeCache: records what the runner asks for."""

    def __init__(self, accept=True, cache_made=True, cache_set=True):
        self.calls, self.accept, self.cache_made, self.cache_set = [], accept, cache_made, cache_set
        self.dynamic_shapes_kernel_specialization_strategy = self.cuda_graph_strategy = None

    def create_runtime_config(self):
        self.calls.append("create_runtime_config")
        return self

    def create_runtime_cache(self):
        self.calls.append("create_runtime_cache")
        return self if self.cache_made else None

    def serialize(self):
        return b"kernels"

    def deserialize(self, blob):
        self.calls.append(("deserialize", blob))
        return self.accept

    def set_runtime_cache(self, cache_):
        self.calls.append("set_runtime_cache")
        return self.cache_set

    def create_execution_context(self, config=None):
        self.calls.append(("create_execution_context", config))
        return "context"


@needs_rtx
def test_rtx_contexts_specialize_eagerly_with_the_runtime_cache(rtx):
    """The context comes from create_runtime_config() with EAGER, not LAZY (the default)."""
    trt = rtx.module()
    engine = Recorder(accept=False)
    context, config, rt_cache, accepted = runner.create_context(engine, rtx, b"blob from an earlier run")
    assert context == "context" and config is engine and rt_cache is engine and accepted is False
    assert engine.dynamic_shapes_kernel_specialization_strategy == trt.DynamicShapesKernelSpecializationStrategy.EAGER
    assert engine.calls == ["create_runtime_config", "create_runtime_cache",
                            ("deserialize", b"blob from an earlier run"), "set_runtime_cache",
                            ("create_execution_context", engine)]
    cold = Recorder()
    runner.create_context(cold, rtx, None, use_cache=False)
    assert cold.calls == ["create_runtime_config", ("create_execution_context", cold)]
    full = Recorder()
    assert runner.create_context(full, flavours.Flavour("tensorrt", "10.16.0"))[0] == "context"
    assert full.calls == [("create_execution_context", None)]


def test_only_rtx_says_whether_a_capture_is_allowed():
    class Context:
        def is_stream_capturable(self, stream):
            return False

    session = runner.Session.__new__(runner.Session)
    session.engine = cache.Engine(paths.ENGINES / "x" / cache.PLAN, {"flavour": "tensorrt_rtx",
                                                                      "flavour_version": "1.7.1.116"})
    session.context = Context()
    ok, why = session.capturable(7)
    assert ok is False and "not stream-capturable" in why
    session.context = object()  # full TensorRT: no such call, the capture is tried
    assert session.capturable(7) == (None, "")


@needs_rtx
def test_the_runtime_judges_a_real_plan(plan, rtx):
    """Runtime.get_engine_validity called for real on a plan built here. Measured with 1.7.1.116 on this
    CPU machine: (INVALID, 0) after "Error reading CUDA GPU properties ... cudaError 35"."""
    verdict, why, rebuild = runner.plan_validity(rtx, plan.plan.read_bytes())
    assert verdict is False and "INVALID" in why and "cudaError 35" in why and rebuild is False  # no GPU: no rebuild


@needs_rtx
def test_runnable_asks_the_plan_where_a_gpu_is_seen(plan, monkeypatch):
    """With a GPU the matrix accepts (8.6), the plan's own validity decides; without one, nothing is asked."""
    with pytest.raises(StageSkipped, match="only on an NVIDIA GPU"):
        runner.runnable(plan)
    monkeypatch.setattr(flavours, "capability_here", lambda: "8.6")
    monkeypatch.setattr(runner, "capability_here", lambda: "8.6")
    with pytest.raises(StageSkipped, match="built, not run: TensorRT-RTX .* says the engine is INVALID"):
        runner.runnable(plan)


@needs_rtx
def test_a_session_does_not_demand_the_parsers_library(plan, monkeypatch, tmp_path):
    """Only the ONNX parser dlopens libtensorrt_rtx.so; a Session (plugins or not) never asks for it.
    Here the real runtime then fails to deserialize (no driver), which is the error we must see."""
    monkeypatch.setattr(runner, "runnable", lambda engine: engine)
    monkeypatch.setattr(runner, "cuda_context", lambda: None)  # PyTorch here is a CPU build
    monkeypatch.setattr(runner.plugin_libs, "load_plugins", lambda fl, libs, check: [])
    lib = tmp_path / "libplugin.so"
    lib.write_bytes(b"not loaded: load_plugins is stubbed")
    with pytest.raises(RuntimeError, match="could not deserialize"):
        runner.Session(plan, plugins=[lib])


class Context:
    """Our stand-in for an IExecutionContext: answers as TensorRT would, records what it was given."""

    def __init__(self, shape_ok=True, address_ok=True, missing=()):
        self.shape_ok, self.address_ok, self.missing = shape_ok, address_ok, list(missing)
        self.shapes, self.addresses = {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return self.shape_ok

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return self.address_ok

    def infer_shapes(self):
        return self.missing

    def get_tensor_shape(self, name):
        return (self.shapes["input"][0], 10)


class Engine:
    """Our stand-in for an ICudaEngine with a float32 input and a float32 output."""

    def __init__(self, trt):
        self.trt = trt

    def get_tensor_dtype(self, name):
        return self.trt.DataType.FLOAT


def bound_session(rtx, context) -> runner.Session:
    """A Session over stand-ins, ready to bind (no engine is deserialized)."""
    session = runner.Session.__new__(runner.Session)
    session.engine = cache.Engine(paths.ENGINES / "x" / cache.PLAN, {"flavour": "tensorrt_rtx",
                                                                      "flavour_version": rtx.version,
                                                                      "profile": [1, 2, 4]})
    session.cuda_engine, session.context = Engine(rtx.module()), context
    session.inputs, session.outputs, session.keep = ["input"], ["logits"], []
    return session


@needs_rtx
def test_bind_sets_every_tensor_address_and_checks_every_answer(rtx):
    """polygraphy's runner and the RTX sample check set_input_shape, set_tensor_address and infer_shapes; an
    unchecked False would surface only as a failed enqueue (or wrong memory) later."""
    import torch
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32))
    context = Context()
    outs = bound_session(rtx, context).bind(x)
    assert context.shapes == {"input": (2, 3)} and set(context.addresses) == {"input", "logits"}
    assert context.addresses["logits"] == outs["logits"].data_ptr() and outs["logits"].shape == (2, 10)
    with pytest.raises(RuntimeError, match="set_input_shape.*input.*2, 3"):
        bound_session(rtx, Context(shape_ok=False)).bind(x)
    with pytest.raises(RuntimeError, match="set_tensor_address.*input"):
        bound_session(rtx, Context(address_ok=False)).bind(x)
    with pytest.raises(RuntimeError, match="infer_shapes.*logits"):
        bound_session(rtx, Context(missing=["logits"])).bind(x)


@needs_rtx
def test_every_io_dtype_the_engines_can_have_maps_to_torch(rtx):
    import torch
    dt = rtx.module().DataType
    assert runner.torch_dtype(dt.FP8) is torch.float8_e4m3fn and runner.torch_dtype(dt.BF16) is torch.bfloat16
    assert runner.torch_dtype(dt.HALF) is torch.float16 and runner.torch_dtype(dt.INT64) is torch.int64
    with pytest.raises(ValueError, match="INT4"):
        runner.torch_dtype(dt.INT4)


@needs_rtx
def test_a_cuda_context_is_current_before_the_runtime_cache_is_read(plan, monkeypatch):
    """IRuntimeCache.deserialize (help() of the installed bindings): "A current CUDA context must be present";
    a cache read without one is refused and the 'cached' JIT numbers would be a cold compile."""
    order = []
    monkeypatch.setattr(runner, "runnable", lambda engine: engine)
    monkeypatch.setattr(runner, "cuda_context", lambda: order.append("context"))
    monkeypatch.setattr(runner, "deserialize",
                        lambda fl, plan, plugins, check: order.append("deserialize") or (None, None, ["no GPU"]))
    with pytest.raises(RuntimeError, match="could not deserialize"):
        runner.Session(plan)
    assert order == ["context", "deserialize"]


@needs_rtx
def test_an_old_driver_is_named_as_the_reason_with_its_fix(plan, monkeypatch):
    """A CUDA 13 wheel on an R535 driver; the runtime's own words ("cudaError 35") do not say why."""
    monkeypatch.setattr(flavours, "capability_here", lambda: "8.6")
    monkeypatch.setattr(runner, "capability_here", lambda: "8.6")
    monkeypatch.setattr(runner.cudainfo, "driver_version", lambda: (12020, "test"))
    dist, major = plan.flavour.wheel()
    with pytest.raises(StageSkipped, match=f"installed as {dist}.*CUDA 12.2.*make env.*cudaError 35"):
        runner.runnable(plan)


@needs_rtx
def test_a_runtime_cache_that_cannot_be_made_or_set_is_an_error_not_a_silent_cold_compile(rtx):
    """create_runtime_cache() may return None and set_runtime_cache() False (the bindings' documented answers);
    either would make every "cached" JIT number a cold compile."""
    with pytest.raises(RuntimeError, match=r"create_runtime_cache\(\) returned None"):
        runner.create_context(Recorder(cache_made=False), rtx, b"blob")
    with pytest.raises(RuntimeError, match=r"set_runtime_cache\(\) was refused"):
        runner.create_context(Recorder(cache_set=False), rtx, b"blob")
    assert runner.create_context(Recorder(cache_made=False), rtx, None, use_cache=False)[0] == "context"


@needs_rtx
def test_rtxs_own_graph_mode_makes_the_context_anew_with_whole_graph_capture(rtx):
    """Session.use_rtx_graphs: a new context from a runtime config with cuda_graph_strategy WHOLE_GRAPH_CAPTURE (and
    EAGER, and the JIT's kernels carried over in the runtime cache); no capture of ours is tried on it after."""
    trt = rtx.module()
    engine = Recorder()
    session = runner.Session.__new__(runner.Session)
    session.engine = cache.Engine(paths.ENGINES / "x" / cache.PLAN, {"flavour": "tensorrt_rtx",
                                                                      "flavour_version": rtx.version})
    session.cuda_engine, session.rt_cache, session.runtime_cache, session.keep = engine, Recorder(), "c", ["x"]
    session.context, session.rtx_graphs = "old context", False
    assert session.use_rtx_graphs() == "" and session.rtx_graphs and session.keep == []
    assert engine.cuda_graph_strategy == trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    assert engine.dynamic_shapes_kernel_specialization_strategy == trt.DynamicShapesKernelSpecializationStrategy.EAGER
    assert ("deserialize", b"kernels") in engine.calls and session.context == "context"
    assert session.capturable(7)[0] is False and session.use_rtx_graphs() == ""  # once is enough
    plain = Recorder()
    runner.create_context(plain, rtx)
    assert plain.cuda_graph_strategy is None  # our own capture is tried first: RTX's graphs only where refused


@needs_rtx
def test_the_runtimes_verdict_suboptimal_runs_and_says_so_invalid_rebuilds_where_that_fixes_it(rtx):
    """judge() on the installed enums: VALID runs; SUBOPTIMAL runs with its words; INVALID for another RTX version,
    CUDA runtime or a malformed plan is rebuilt (RTX's docs); for another compute capability or an old driver not."""
    trt = rtx.module()
    v, d = trt.EngineValidity, trt.EngineInvalidityDiagnostics
    assert runner.judge(rtx, v.VALID, 0, []) == (True, "", False)
    runs, why, rebuild = runner.judge(rtx, v.SUBOPTIMAL, 0, ["WARNING: tuned for another GPU"])
    assert runs and not rebuild and "SUBOPTIMAL" in why and "tuned for another GPU" in why
    for flag, fixes in (("VERSION_MISMATCH", True), ("OLD_CUDA_RUNTIME", True), ("MALFORMED_ENGINE", True),
                        ("UNSUPPORTED_CC", False), ("OLD_CUDA_DRIVER", False), ("CUDA_ERROR", False)):
        runs, why, rebuild = runner.judge(rtx, v.INVALID, int(getattr(d, flag)), [])
        assert not runs and flag in why and rebuild is fixes, flag


def _gpu_here(monkeypatch, verdicts):
    """A GPU the matrix accepts (8.6), and the runtime's verdicts on the plans it is asked about, in order."""
    monkeypatch.setattr(flavours, "capability_here", lambda: "8.6")
    monkeypatch.setattr(runner, "capability_here", lambda: "8.6")
    monkeypatch.setattr(runner.cudainfo, "driver_version", lambda: (13000, "test"))
    answers = iter(verdicts)
    monkeypatch.setattr(runner, "plan_validity", lambda fl, plan: next(answers))


@needs_rtx
def test_a_suboptimal_engine_runs_and_keeps_the_verdict(plan, monkeypatch):
    _gpu_here(monkeypatch, [(True, "TensorRT-RTX 1.7.1.116 says the engine is SUBOPTIMAL: no diagnostic given",
                             False)])
    engine = cache.Engine(plan.plan, plan.info)
    assert runner.runnable(engine) is engine and engine.validity.endswith("SUBOPTIMAL: no diagnostic given")


@needs_rtx
def test_an_invalid_cached_plan_is_rebuilt_once_and_judged_again(plan, monkeypatch, capsys):
    """A reused engine the runtime calls INVALID for a reason a rebuild fixes is built again (with why), judged
    again; a fresh build, or a reason a rebuild does not fix, stays "built, not run"."""
    invalid = (False, "TensorRT-RTX says the engine is INVALID: VERSION_MISMATCH (built by another ...)", True)
    _gpu_here(monkeypatch, [invalid, (True, "", False)])
    reused, rebuilt, asked = cache.Engine(plan.plan, plan.info, reused=True), cache.Engine(plan.plan, plan.info), []
    assert runner.usable(reused, lambda why: asked.append(why) or rebuilt) is rebuilt and rebuilt.validity == "VALID"
    assert asked == [invalid[1]] and "rebuilding it" in capsys.readouterr().out
    _gpu_here(monkeypatch, [invalid])
    with pytest.raises(runner.NotRunnable, match="VERSION_MISMATCH"):  # just built: building again changes nothing
        runner.usable(cache.Engine(plan.plan, plan.info), lambda why: pytest.fail("rebuilt twice"))
    _gpu_here(monkeypatch, [(False, "INVALID: UNSUPPORTED_CC", False)])
    with pytest.raises(runner.NotRunnable, match="UNSUPPORTED_CC"):
        runner.usable(reused, lambda why: pytest.fail("a rebuild does not fix it"))


# objects of the run path, by the names runner.py and timing.py give them, and the class each is in the bindings
RECEIVERS = {"context": "IExecutionContext", "cuda_engine": "ICudaEngine", "config": "IRuntimeConfig",
             "rt_cache": "IRuntimeCache", "runtime": "Runtime"}


@needs_rtx
def test_every_attribute_the_run_path_uses_on_rtx_objects_exists(rtx):
    """Every `context.x`, `cuda_engine.x`, `config.x`, `rt_cache.x`, `runtime.x` that runner.py and timing.py spell
    out, against the installed tensorrt_rtx's classes (a misspelt name would surface only on a GPU RTX runs on)."""
    trt = rtx.module()
    used = set()
    for module in (runner, timing):
        for obj, name in re.findall(r"\b(context|cuda_engine|config|rt_cache|runtime)\.(\w+)",
                                    Path(module.__file__).read_text()):
            used.add((RECEIVERS[obj], name))
    assert ("IExecutionContext", "execute_async_v3") in used and ("IRuntimeConfig", "cuda_graph_strategy") in used
    missing = [f"{cls}.{name}" for cls, name in sorted(used) if not hasattr(getattr(trt, cls), name)]
    assert not missing, missing


@needs_rtx
def test_a_verdict_naming_a_reason_a_rebuild_does_not_cure_is_not_rebuilt(rtx):
    """INVALID for VERSION_MISMATCH and UNSUPPORTED_CC at once (a plan of another RTX version and for another GPU): a
    rebuild for the same target cures only half of it, so it stays "built, not run" without a rebuild."""
    trt = rtx.module()
    d = trt.EngineInvalidityDiagnostics
    runs, why, rebuild = runner.judge(rtx, trt.EngineValidity.INVALID, int(d.VERSION_MISMATCH) | int(d.UNSUPPORTED_CC),
                                      [])
    assert not runs and "VERSION_MISMATCH" in why and "UNSUPPORTED_CC" in why and rebuild is False
    both = int(d.VERSION_MISMATCH) | int(d.MALFORMED_ENGINE)
    assert runner.judge(rtx, trt.EngineValidity.INVALID, both, [])[2] is True


class CapturableContext:
    """Our stand-in for an IExecutionContext that answers is_stream_capturable."""

    def __init__(self, ok):
        self.ok, self.asked = ok, []

    def is_stream_capturable(self, stream):
        self.asked.append(stream)
        return self.ok


def rtx_session(rtx, context) -> runner.Session:
    """A Session over stand-ins (an engine that records, `context`), not yet in RTX's graph mode."""
    session = runner.Session.__new__(runner.Session)
    session.engine = cache.Engine(paths.ENGINES / "x" / cache.PLAN, {"flavour": "tensorrt_rtx",
                                                                      "flavour_version": rtx.version})
    session.cuda_engine, session.rt_cache, session.runtime_cache, session.keep = Recorder(), Recorder(), "c", ["x"]
    session.context, session.rtx_graphs, session.said = context, False, []
    return session


@needs_rtx
def test_rtxs_graph_mode_is_not_claimed_for_a_context_that_is_not_stream_capturable(rtx):
    """RTX's own CUDA graphs need a stream-capturable context as well (libtensorrt_rtx.so.1: "The engine is not graph
    capturable. Falling back to not using CUDA graphs."): where the plain context says no, the switch is not made
    and the reason says why, so the row times plain enqueues and says so."""
    refusing = CapturableContext(False)
    session = rtx_session(rtx, refusing)
    why = session.use_rtx_graphs(7)
    assert why.startswith("not tried") and "Falling back to not using CUDA graphs" in why
    assert refusing.asked == [7] and not session.rtx_graphs and session.context is refusing
    allowing = rtx_session(rtx, CapturableContext(True))
    assert allowing.use_rtx_graphs(7) == "" and allowing.rtx_graphs and allowing.context == "context"


@needs_rtx
def test_rtxs_own_fallback_in_its_log_after_the_switch_is_reported(rtx):
    """The runtime's log after the switch, as its logger keeps it: RTX's fallback line makes the switch count as
    refused; the same line before the switch (another batch, another context) does not."""
    session = rtx_session(rtx, CapturableContext(True))
    session.said.append("WARNING: CUDA Graph execute failed, falling back to normal path")  # before the switch
    assert session.use_rtx_graphs(7) == "" and session.rtx_graphs_fell_back() == ""
    session.said.append("WARNING: The engine is not graph capturable. Falling back to not using CUDA graphs.")
    assert "Falling back to not using CUDA graphs" in session.rtx_graphs_fell_back()


class LoggedStream:
    """Our stand-in for a torch.cuda.Stream: its handle, and what was asked of it, in one log."""

    def __init__(self, handle, log):
        self.cuda_stream, self.log = handle, log

    def wait_stream(self, other):
        self.log.append(("wait", self.cuda_stream, other.cuda_stream))

    def synchronize(self):
        self.log.append(("synchronize", self.cuda_stream))


def test_an_inference_waits_for_the_stream_that_copied_its_input(monkeypatch):
    """The polygraphy runner's input is made on the current stream; the engine's own stream (non-blocking, as PyTorch
    makes them) waits for that stream before the input is read (a blocking .cuda() has finished on return; an input a
    kernel or a non_blocking copy made has not), as polygraphy's runner copies inputs on the stream it enqueues on."""
    import contextlib

    import torch
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())  # a CPU build of PyTorch here
    log = []

    class Session:
        def bind(self, x):
            log.append(("bind", x))
            return {"logits": "out"}

        def execute(self, handle):
            log.append(("execute", handle))

    outs = runner.infer(Session(), LoggedStream(7, log), "x", LoggedStream(0, log))
    assert outs == {"logits": "out"}
    assert log == [("wait", 7, 0), ("bind", "x"), ("execute", 7), ("synchronize", 7)]
