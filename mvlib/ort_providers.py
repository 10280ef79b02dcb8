"""ONNX Runtime's providers for the verdicts and the calibration: the CUDA EP where it runs here, else the CPU.

The CUDA EP comes with `onnxruntime-gpu`; it loads its CUDA and cuDNN libraries from the `nvidia-*` wheels after
`onnxruntime.preload_dlls()`. `cuda_ep_runs` asks for it once: listed by `get_available_providers()`, and a session
on a one-node model really on it (ONNX Runtime falls back to the CPU, with only a log line, when a library is
missing). Judging (`providers_for_judging`) and calibration (`calibration_eps`) follow it; `on_cpu()` asks for the
CPU, the reference whose verdicts the GPU's must match. Which build `make env` installs, and the benchmark rows on
the GPU, are mvlib.ort_gpu's (this module stays below the TensorRT side, so accuracy can import it).

Serves: notebooks 01 to 05 (judging, calibration) and 06 (through mvlib.ort_gpu).
"""
from __future__ import annotations

import contextlib
import functools
import io as _io
from collections.abc import Iterator

from mvlib import onnxmodel

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
_CPU_ONLY = {"on": False}  # on_cpu(): the judge and the calibration on the CPU whatever the machine has


def probe_model() -> bytes:
    """A one-node model (Relu on [1, 8]) at the study's IR version (mvlib.onnxmodel), which ONNX Runtime >= 1.16
    loads whatever onnx wrote it."""
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    model = onnxmodel.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y]),
                                 opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def preload() -> str:
    """onnxruntime.preload_dlls() (CUDA and cuDNN from the nvidia-* wheels), once; what it printed."""
    import onnxruntime as ort
    if not hasattr(ort, "preload_dlls"):
        return "onnxruntime has no preload_dlls (older than 1.21): the CUDA libraries must be on LD_LIBRARY_PATH"
    out = _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            ort.preload_dlls()
        except Exception as err:  # reported by cuda_ep_runs through the probe session, which is the real test
            print(f"preload_dlls: {type(err).__name__}: {err}")
    return out.getvalue().strip()


@functools.cache
def cuda_ep_runs() -> tuple[bool, str]:
    """Whether ONNX Runtime's CUDA EP runs here (listed, and a probe session is really on it), and why not."""
    import onnxruntime as ort
    version = ort.__version__
    if CUDA_EP not in ort.get_available_providers():
        return False, f"onnxruntime {version} has no CUDAExecutionProvider (a CPU build)"
    said = preload()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(probe_model(), opts, providers=[CUDA_EP, CPU_EP])
    except Exception as err:
        return False, f"onnxruntime {version}: a CUDA EP session failed ({type(err).__name__}: {err})"
    if sess.get_providers()[0] != CUDA_EP:
        return False, (f"onnxruntime {version} lists the CUDA EP but a session fell back to the CPU: its CUDA / cuDNN "
                       "libraries did not load (`pip install onnxruntime-gpu[cuda,cudnn]` brings them)"
                       + (f"; preload_dlls said: {said[:300]}" if said else ""))
    return True, f"onnxruntime {version} CUDA EP"


@contextlib.contextmanager
def on_cpu() -> Iterator[None]:
    """Within: judging and calibration on the CPU (the reference the GPU's verdicts are held against)."""
    before = _CPU_ONLY["on"]
    _CPU_ONLY["on"] = True
    try:
        yield
    finally:
        _CPU_ONLY["on"] = before


def judge_on_gpu() -> bool:
    """Whether judging and calibration go to the CUDA EP now."""
    return not _CPU_ONLY["on"] and cuda_ep_runs()[0]


def providers_for_judging() -> list:
    """ONNX Runtime providers for the accuracy verdicts: the CUDA EP in full FP32 (TF32 off: the EP's default TF32
    convolutions and matmuls are off by 2.6e-4 on mobilevit_s, past notebook 01's tolerance), then the CPU for what it
    lacks, where the CUDA EP runs; else the CPU."""
    return [(CUDA_EP, {"use_tf32": "0"}), CPU_EP] if judge_on_gpu() else [CPU_EP]


def calibration_eps() -> list[str]:
    """ModelOpt's `calibration_eps`: the CUDA EP where it runs (the CPU for what it lacks), else the CPU."""
    return ["cuda:0", "cpu"] if judge_on_gpu() else ["cpu"]
