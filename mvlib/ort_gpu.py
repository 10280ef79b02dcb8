"""ONNX Runtime on the GPU: the benchmark rows of the CUDA, TensorRT and TensorRT-RTX execution providers, and why
a row cannot run here.

The CUDA EP comes with `onnxruntime-gpu` (`make` installs it where an NVIDIA driver is: mvlib/tensorrt/cudainfo.py
`extra ort`). Whether it runs here, and the providers the verdicts and the calibration of notebooks 01 to 05 use,
are mvlib.ort_providers'; `cuda_status` adds, for a CPU build, what `make env` would install instead, and
`judge_text` says in words where the verdicts are computed.

Benchmark rows (`onnxruntime_cuda`, `onnxruntime_tensorrt`): per batch a session on a copy of the model whose batch
dimension is fixed to that batch (`fixed_batch`), so ONNX Runtime folds the shape arithmetic that a dynamic batch
leaves on the CPU (the Memcpy nodes that refuse a CUDA-graph capture); inputs and outputs bound on the device
(`run_with_iobinding` on OrtValues on cuda); the EP's CUDA graph where it captures, else plain runs, the row's
`timing` says which and why. The EP runs on a stream of its own (`user_compute_stream`) ordered after and before the
stream the timer's CUDA events are recorded on, without a host synchronization per run (run option
`disable_synchronize_execution_providers`), so runs, plain or graph replays, are in flight as for every other GPU row
(mvlib.bench).

Serves: notebook 06 (the ONNX Runtime GPU rows, and the judge in words).
"""
from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mvlib import bench, ort_providers, precisions, stages
from mvlib.ort_providers import CPU_EP, CUDA_EP
from mvlib.skips import StageSkipped

TRT_EP = "TensorrtExecutionProvider"
RTX_EP = "NvTensorRTRTXExecutionProvider"
RTX_PLUGIN_PACKAGE = "onnxruntime-ep-nv-tensorrt-rtx-cu13"  # the RTX EP as a plugin library (EP ABI), on PyPI
# What each EP's own CUDA-graph switch is called (provider options)
GRAPH_OPTION = {CUDA_EP: "enable_cuda_graph", TRT_EP: "trt_cuda_graph_enable", RTX_EP: "enable_cuda_graph"}
# ONNX Runtime's CUDA-graph replay synchronizes the EP's stream only when the run asks for it: with the run option
# disable_synchronize_execution_providers (set below) run_with_iobinding returns while the replay still runs, as a
# plain run does (checked on an H100 with onnxruntime-gpu 1.31.1: the stream was busy on return; a GPU test holds it),
# so graph replays are in flight as every other GPU row's launches. A review read the opposite into cuda_graph.cc.
# Worded so mvlib.decision.timing_method reads them as the other GPU rows' ('CUDA graph', 'plain launches').
GRAPH_TIMING = ("CUDA events around each CUDA-graph replay (one run_with_iobinding replaying the EP's CUDA graph, "
                f"batch fixed in the model), {bench.IN_FLIGHT} in flight")
PLAIN_TIMING = ("CUDA events around each launch (one run_with_iobinding, batch fixed in the model; no CUDA graph: "
                "{why}), " f"{bench.IN_FLIGHT} in flight")

CAPTURE_RUNS = 3  # runs before the timing: ONNX Runtime captures its CUDA graph after a warm-up run or two
PRECISIONS = ("fp32", "fp16", "int8", "fp8")  # the ONNX files the study writes (export.ARTIFACTS), all timed here
TENSORRT_EPS = {TRT_EP: "trt", RTX_EP: "trtrtx"}  # ONNX Runtime's TensorRT EPs and their stages' short names


class NoProvider(StageSkipped):
    """ONNX Runtime cannot load a TensorRT execution provider here (TensorRT's libraries, or a GPU it runs on, are
    the machine's to have: as a missing builder, the skip does not fail the run's tier)."""
    no_builder = True


# --- is the CUDA EP here, and what `make env` would do about it ----------------------------------------------
def _install_hint() -> str:
    """Which extra `make env` would install here, and what that gives."""
    from mvlib.tensorrt import cudainfo
    version, how = cudainfo.driver_version()
    if version is None:
        return "no NVIDIA driver here, so `make env` installs the CPU build (extra ort-cpu)"
    extra = cudainfo.extra_for(version, "ort")
    return (f"the driver supports CUDA {cudainfo.version_text(version)}: `make env` installs onnxruntime-gpu "
            f"(extra {extra}) in place of onnxruntime")


@functools.cache
def cuda_status() -> tuple[bool, str]:
    """Whether ONNX Runtime's CUDA EP runs here (mvlib.ort_providers), and why not; for a CPU build, the fix."""
    import onnxruntime as ort
    ok, why = ort_providers.cuda_ep_runs()
    if ok or CUDA_EP in ort.get_available_providers():
        return ok, why
    return False, f"{why}; {_install_hint()}"


def judge_text() -> str:
    """Where the verdicts are computed, in words (for the notebooks' output)."""
    ok, why = cuda_status()
    if ort_providers.judge_on_gpu():
        return f"ONNX Runtime CUDA EP ({why})"
    return "ONNX Runtime on the CPU" + ("" if ok else f" (no CUDA EP: {why})")


# --- a model whose batch is fixed ------------------------------------------------------------------------------
def fixed_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of `model` with the first dimension of every graph input and output set to `batch`, and the inner
    shapes dropped (ONNX Runtime infers them again), so its optimizer folds the shape arithmetic into constants."""
    if batch < 1:
        raise ValueError(f"batch {batch}: must be at least 1")
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in list(fixed.graph.input) + list(fixed.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch
    del fixed.graph.value_info[:]
    return fixed


def io_spec(model: onnx.ModelProto) -> tuple[str, np.dtype, str, list[int], np.dtype]:
    """Input name and dtype, output name, static shape and dtype of a fixed-batch model."""
    from onnx.helper import tensor_dtype_to_np_dtype
    inp, out = model.graph.input[0], model.graph.output[0]
    shape = [d.dim_value for d in out.type.tensor_type.shape.dim]
    if not shape or not all(shape):
        raise ValueError(f"output {out.name} has no static shape ({shape}): fix the batch first (fixed_batch)")
    return (inp.name, tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type), out.name, shape,
            tensor_dtype_to_np_dtype(out.type.tensor_type.elem_type))


def cpu_nodes(model: onnx.ModelProto, providers: list) -> int:
    """How many nodes of the optimized `model` a session on `providers` leaves to the CPU or to Memcpy (a CUDA graph
    needs none), counted in the graph ONNX Runtime writes after optimizing (ORT_ENABLE_ALL)."""
    import tempfile

    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
        optimized = onnx.load(opts.optimized_model_filepath)
    return sum(n.op_type in ("Shape", "MemcpyToHost", "MemcpyFromHost") for n in optimized.graph.node)


# --- benchmark rows -------------------------------------------------------------------------------------------
def _ep_options(ep: str, stream: int, graphs: bool) -> dict:
    """Provider options: device 0, the given compute stream, the EP's CUDA graph switch."""
    opts = {"device_id": "0", "user_compute_stream": str(stream), GRAPH_OPTION[ep]: "1" if graphs else "0"}
    if ep in (CUDA_EP, TRT_EP):
        opts["has_user_compute_stream"] = "1"
    return opts


class _Batch:
    """One batch's session on the fixed-batch model, its bound device buffers and its launch."""

    def __init__(self, model: onnx.ModelProto, ep: str, stream, x: np.ndarray, graphs: bool, ort_module):
        ort = ort_module
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        providers = [(ep, _ep_options(ep, stream.cuda_stream, graphs))] + ([] if graphs else [CPU_EP])
        self.sess = ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
        if self.sess.get_providers()[0] != ep:
            raise RuntimeError(f"{ep} did not load (the session is on {self.sess.get_providers()})")
        name, dtype, out_name, shape, out_dtype = io_spec(model)
        self.x = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, dtype=dtype), "cuda", 0)
        self.y = ort.OrtValue.ortvalue_from_shape_and_type(shape, out_dtype.type, "cuda", 0)
        self.binding = self.sess.io_binding()
        self.binding.bind_ortvalue_input(name, self.x)
        self.binding.bind_ortvalue_output(out_name, self.y)
        self.run_options = ort.RunOptions()
        # no host synchronization at the end of each run: the timer's events order the runs, as for every GPU row
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def run(self) -> Any:
        """One run on the bound buffers; the output OrtValue."""
        self.sess.run_with_iobinding(self.binding, self.run_options)
        return self.y


def _ordered(stream, run: Callable[[], Any]) -> Callable[[], Any]:
    """`run` on the EP's `stream`, after and before the current stream the timer's events are recorded on."""
    import torch

    def launch() -> Any:
        timer_stream = torch.cuda.current_stream()
        stream.wait_stream(timer_stream)
        out = run()
        timer_stream.wait_stream(stream)
        return out
    return launch


def _device_memory(torch, collect: bool = True) -> dict:
    """The device's free bytes and what PyTorch's allocator reserves, after the GPU is idle (and garbage is gone)."""
    if collect:
        gc.collect()  # a dropped session's arena is freed only when Python frees the session
        torch.cuda.empty_cache()
    torch.cuda.synchronize()
    return {"free": torch.cuda.mem_get_info()[0], "reserved": torch.cuda.memory_reserved()}


def taken_outside_pytorch(before: dict, after: dict) -> float:
    """MiB of device memory taken between two readings by anything but PyTorch's allocator (ONNX Runtime's sessions,
    buffers and graphs); NaN where it came out negative: something else freed memory meanwhile, and the delta of a
    device-wide reading would be a wrong number (the H100 showed -443 MiB before this)."""
    taken = (before["free"] - after["free"]) - (after["reserved"] - before["reserved"])
    return taken / bench.MIB if taken >= 0 else float("nan")


def _first_line(err: BaseException) -> str:
    """An exception's first line, without ONNX Runtime's '[ONNXRuntimeError] : 1 : FAIL :' prefix."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(" : ")[-1][:300]


def _ep_backend(settings: bench.Settings, onnx_path: Path | str, precision: str, ep: str, backend: str,
                label: str, notes: str, graphs: bool = True) -> bench.Backend:
    """A benchmark backend on execution provider `ep`: per batch a fixed-batch session, bound device buffers, the
    EP's CUDA graph where it captures (else plain runs, the reason in `timing`)."""
    import onnxruntime as ort
    import torch
    model = onnx.load(str(onnx_path))
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    state: dict = {}
    before: dict = {}

    def prepare(batch: int) -> Callable[[], Any]:
        state.clear()  # the previous batch's session and buffers go before this batch's peak is taken
        before.update(_device_memory(torch))  # per batch: earlier rows' sessions and PyTorch's cache come and go
        fixed = fixed_batch(model, batch)
        x = bench.images(batch, settings)
        why = "not asked for"
        if graphs:
            try:
                one = _Batch(fixed, ep, stream, x, True, ort)
                launch = _ordered(stream, one.run)
                for _ in range(CAPTURE_RUNS):  # the EP captures in its first runs: a refusal shows here, not later
                    launch()
                torch.cuda.synchronize()
                state["batch"], result.timing = one, GRAPH_TIMING
                return launch
            except Exception as err:  # noqa: BLE001 (the row says why and times plain runs instead)
                why = f"{GRAPH_OPTION[ep]} refused: {_first_line(err)}"
                state.clear()
                torch.cuda.synchronize()
        plain = torch.cuda.Stream() if graphs else stream  # a stream no failed capture has touched
        try:
            one = _Batch(fixed, ep, plain, x, False, ort)
        except Exception as err:
            if ep == CUDA_EP:
                raise
            # a TensorRT EP that loads may still refuse this model or batch (its builder): the row says so
            raise bench.BatchSkipped(f"{ep}: {_first_line(err)}") from err
        state.update(batch=one, stream=plain)
        result.timing = PLAIN_TIMING.format(why=why)
        return _ordered(plain, one.run)

    def taken_mib() -> float:
        return taken_outside_pytorch(before, _device_memory(torch, collect=False))

    def logits(out) -> np.ndarray:
        torch.cuda.synchronize()  # the run was not synchronized: wait before reading its output
        return np.asarray(out.numpy(), dtype=np.float32)

    path = Path(onnx_path)
    result = bench.Backend(backend, "cuda", precision, label, prepare, GRAPH_TIMING,
                           notes=f"onnxruntime {ort.__version__}, {path.name}, I/O bound on the GPU, {notes}; "
                                 "device_mem_mib = memory taken by sessions, buffers and graph (cudaMemGetInfo)",
                           device_mem_mib=taken_mib, keep=[stream, state], artifact=path.name,
                           artifact_bytes=float(path.stat().st_size), logits=logits)
    return result


def _model_or_skip(onnx_path: Path | str) -> Path:
    """The ONNX file, or the skip that names the notebook that writes it."""
    onnx_path = Path(onnx_path)
    if not onnx_path.exists():
        raise stages.missing(onnx_path, f"looked in {onnx_path.parent}")
    return onnx_path


def _fp8_or_skip(precision: str) -> None:
    """Nothing, unless `precision` is FP8 and this GPU has no FP8 tensor cores (fp8.NoFP8, the hardware's skip)."""
    if precision == "fp8":
        from mvlib import fp8
        from mvlib.tensorrt import flavours
        ok, why = fp8.has_fp8(flavours.capability_here())
        if not ok:
            raise fp8.NoFP8(f"FP8 Q/DQ on ONNX Runtime's GPU providers: {why}")


def onnxruntime_cuda(settings: bench.Settings, onnx_path: Path | str, precision: str = "fp32",
                     graphs: bool = True) -> bench.Backend:
    """ONNX Runtime's CUDA EP on an ONNX file of the study (FP32, FP16, the INT8 or FP8 Q/DQ model)."""
    path = _model_or_skip(onnx_path)
    ok, why = cuda_status()
    if not ok:
        raise StageSkipped(why)
    _fp8_or_skip(precision)
    return _ep_backend(settings, path, precision, CUDA_EP, "onnxruntime-cuda",
                       f"ONNX Runtime CUDA EP {precisions.label(precision)}",
                       "the EP's default math (TF32 where the GPU has it, cuDNN's exhaustive algorithm search)",
                       graphs)


def tensorrt_ep_status(ep: str) -> tuple[bool, str]:
    """Whether ONNX Runtime's TensorRT (`TRT_EP`) or TensorRT-RTX (`RTX_EP`) EP loads here, and why not."""
    import onnxruntime as ort
    ok, why = cuda_status()
    if not ok:
        return False, why
    if ep not in ort.get_available_providers():
        plugin = (f"; NVIDIA ships it for ONNX Runtime as the plugin package {RTX_PLUGIN_PACKAGE}, which this study "
                  "does not drive yet") if ep == RTX_EP else ""
        return False, f"onnxruntime {ort.__version__} was built without {ep}{plugin}"
    if ep == TRT_EP:
        with contextlib.suppress(ImportError):  # full TensorRT's wheel loads libnvinfer.so.10, which the EP dlopens
            import tensorrt  # noqa: F401
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # the EP's own 'library not found' error is our reason below
    try:
        sess = ort.InferenceSession(ort_providers.probe_model(), opts, providers=[ep, CPU_EP])
    except Exception as err:  # noqa: BLE001
        return False, f"{ep} failed to make a session: {_first_line(err)}"
    if sess.get_providers()[0] != ep:
        lib = "libnvinfer.so.10 (full TensorRT 10)" if ep == TRT_EP else "libtensorrt_rtx.so"
        return False, f"{ep} is in this onnxruntime but did not load: it needs {lib}, not found here"
    return True, ep


def onnxruntime_tensorrt(settings: bench.Settings, onnx_path: Path | str, precision: str = "fp32",
                         ep: str = TRT_EP) -> bench.Backend:
    """ONNX Runtime's TensorRT or TensorRT-RTX EP on an ONNX file of the study, where that EP loads here."""
    path = _model_or_skip(onnx_path)
    ok, why = tensorrt_ep_status(ep)
    if not ok:
        raise NoProvider(why)
    _fp8_or_skip(precision)
    name = "TensorRT" if ep == TRT_EP else "TensorRT-RTX"
    return _ep_backend(settings, path, precision, ep, "onnxruntime-trt" if ep == TRT_EP else "onnxruntime-trtrtx",
                       f"ONNX Runtime {name} EP {precisions.label(precision)}",
                       f"{name} engine built by the EP in the priming run")
