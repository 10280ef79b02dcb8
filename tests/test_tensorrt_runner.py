"""Running engines (mvlib.tensorrt.runner): the RTX API it calls, the context it makes, per-plan validity.

No engine runs here (no GPU; RTX's runtime refuses the H200 too). What can be real is real: the installed
tensorrt_rtx's names and enums, a plan built here and the runtime's own verdict on it. The execution context is
made through a small stand-in engine of ours that records what the runner asks for.
"""
import numpy as np
import pytest
import tensorrt_models as models

from mvlib import paths
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cache, flavours, runner, shapes

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
    # Full TensorRT's bindings (NVIDIA/TensorRT python/src/infer/pyCore.cpp, release/10.13 and v11.1) have
    # IRuntimeConfig with the allocation strategy only, and no get_engine_validity or is_stream_capturable:
    # the runner asks hasattr for those, and create_context makes a plain context for full TensorRT.


class Recorder:
    """Our stand-in for an ICudaEngine / IRuntimeConfig / IRuntimeCache: records what the runner asks for."""

    def __init__(self, accept=True):
        self.calls, self.accept = [], accept
        self.dynamic_shapes_kernel_specialization_strategy = None

    def create_runtime_config(self):
        self.calls.append("create_runtime_config")
        return self

    def create_runtime_cache(self):
        self.calls.append("create_runtime_cache")
        return self

    def deserialize(self, blob):
        self.calls.append(("deserialize", blob))
        return self.accept

    def set_runtime_cache(self, cache_):
        self.calls.append("set_runtime_cache")
        return True

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
    verdict, why = runner.plan_validity(rtx, plan.plan.read_bytes())
    assert verdict is False and "INVALID" in why and "cudaError 35" in why


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
