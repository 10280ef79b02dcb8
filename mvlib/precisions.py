"""The study's precisions in one table (notebooks 01, 03, 04, 05, 06): model file, making notebook, bytes per
weight, accuracy tolerance, minimum compute capability (the build gate, `runs_on`), label and figure marker, torch
and numpy types, the table that judges its ONNX file on the CPU, and its optional SiLU-plugin model with the
tolerance of that rewrite's CPU check.

Every reader of a precision fact asks `get(name)`; a precision is passed down by name, never guessed from a
graph. An unknown name is an error naming the known ones, never a silent default. export.ARTIFACTS takes the
model files' names from here. A new float precision is a row here, its conversion (mvlib.autocast where AutoCast
makes it) and its notebook cells.

Serves: notebooks 01 and 03 to 06 (every reader of a precision fact).
"""
from dataclasses import KW_ONLY, dataclass

import numpy as np

from mvlib import metrics
from mvlib.metrics import Tolerance


@dataclass(frozen=True)
class Precision:
    """One precision of the study: its model files, who makes them, how it is judged and where it runs."""
    name: str              # fp32, fp16, int8, fp8: the key everyone passes down (and its role in export.ARTIFACTS)
    artifact: str          # its ONNX file's name in the model folder
    notebook: str          # the stem of the notebook that makes that file (mvlib.stages)
    bytes_per_weight: int  # storage of one weight in the engine (roofline's weight traffic)
    criterion: str         # the one accuracy criterion (metrics.CRITERION), judged by metrics.failures
    tolerance: Tolerance   # its bounds for this precision
    min_capability: str    # the lowest compute capability whose TensorRT runs it ("7.5": TensorRT 10; FP8 "8.9")
    label: str             # in tables and figures
    plugin_artifact: str | None  # the SiLU-plugin rewrite of its ONNX file (notebook 05; FP32's also notebook 02)
    _: KW_ONLY             # the rest by keyword, every one said in each row (no silent default but `quantized`)
    # (atol, rtol) of the plugin rewrite's CPU check against its source: max abs error <= atol + rtol * max |logit|
    rewrite_tolerance: tuple[float, float] | None  # None exactly where plugin_artifact is None
    torch_dtype: str | None  # the torch type PyTorch runs it in (bench, model swap); None: PyTorch does not run it
    numpy_dtype: str       # the element type a backend of it is fed and returns (roofline's I/O bytes)
    cpu_judge: str         # the results table that judges its ONNX file in ONNX Runtime on the CPU (decision)
    marker: str            # its matplotlib marker in the decision figure
    needs: str             # what a GPU below min_capability lacks, in words (runs_on)
    gpus: str              # GPUs from min_capability on, in words (runs_on)
    quantized: bool = False  # made by ModelOpt's Q/DQ quantization (notebook 04: policies, sensitivity, choice)

    def __post_init__(self):
        """A plugin model and its rewrite tolerance come together."""
        if (self.plugin_artifact is None) != (self.rewrite_tolerance is None):
            raise ValueError(f"precision {self.name}: give both plugin_artifact and rewrite_tolerance, or neither")

    @property
    def capability(self) -> tuple[int, int]:
        """min_capability as (major, minor)."""
        return capability(self.min_capability)

    @property
    def io_bytes(self) -> int:
        """Bytes of one input or output element (numpy_dtype)."""
        return np.dtype(self.numpy_dtype).itemsize


QUANTIZED_TOLERANCE = Tolerance(min_cosine_mean=0.999, min_top1_agreement=0.99, max_top1_drop_points=0.5)
# The plugin rewrite's CPU check (rewrite_tolerance). FP32: the stand-in and ONNX Runtime's Sigmoid and Mul differ
# by an ulp here and there, so the logits differ by a few float32 ulps; relative to the logits, since at |logit| ~ 14
# (trained weights) one ulp is already 1e-6 (measured, random weights: 1.5e-7 at |logit| 0.35; classifier scaled up
# to |logit| 14: 7e-6). FP16: the stand-in rounds SiLU to float16 once where Sigmoid then Mul round twice.
# INT8 and FP8: an ulp of difference can move a downstream QuantizeLinear by one step (measured on INT8: about 1%
# of the largest logit), which the stand-in cannot avoid (it does not reproduce ONNX Runtime's Sigmoid bit for bit).
QUANTIZED_REWRITE = (1e-2, 5e-2)
FLOAT_JUDGE, QUANTIZED_JUDGE = "03_accuracy.csv", "04_int8_accuracy.csv"  # runner onnxrt-<name>; the chosen file
TURING = {"needs": "TensorRT 10 / 11 support", "gpus": "Turing (T4, RTX 20xx) and newer"}  # min_capability 7.5
TABLE: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "model.onnx", "01_export", 4, metrics.CRITERION,
              Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999), "7.5", "FP32", "model.silu.onnx",
              rewrite_tolerance=(1e-6, 2e-6), torch_dtype="float32", numpy_dtype="float32", cpu_judge=FLOAT_JUDGE,
              marker="o", **TURING),
    Precision("fp16", "model.fp16.onnx", "03_fp32_fp16", 2, metrics.CRITERION,
              Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999), "7.5", "FP16", "model.fp16.silu.onnx",
              rewrite_tolerance=(1e-3, 1e-3), torch_dtype="float16", numpy_dtype="float16", cpu_judge=FLOAT_JUDGE,
              marker="s", **TURING),
    Precision("int8", "model.int8.onnx", "04_int8", 1, metrics.CRITERION, QUANTIZED_TOLERANCE, "7.5", "INT8",
              "model.int8.silu.onnx", rewrite_tolerance=QUANTIZED_REWRITE, torch_dtype=None, numpy_dtype="float32",
              cpu_judge=QUANTIZED_JUDGE, marker="^", **TURING, quantized=True),
    Precision("fp8", "model.fp8.onnx", "04_int8", 1, metrics.CRITERION, QUANTIZED_TOLERANCE, "8.9", "FP8",
              "model.fp8.silu.onnx", rewrite_tolerance=QUANTIZED_REWRITE, torch_dtype=None, numpy_dtype="float32",
              cpu_judge=QUANTIZED_JUDGE, marker="D", needs="FP8 tensor cores",
              gpus="L4 / RTX 40xx (8.9), H100 / H200 (9.0), B200 (10.0), RTX 50xx (12.0)", quantized=True),
)}
EVERY_GPU = tuple(n for n, p in TABLE.items() if p.min_capability == "7.5")  # fp32, fp16, int8: every GPU of 7.5+
QUANTIZED = tuple(n for n, p in TABLE.items() if p.quantized)  # int8, fp8: notebook 04's


def get(name: str) -> Precision:
    """The precision called `name`; ValueError naming the known ones for any other."""
    if name not in TABLE:
        raise ValueError(f"unknown precision {name!r}: choose one of {', '.join(TABLE)} (mvlib/precisions.py)")
    return TABLE[name]


def of_torch_dtype(dtype: str) -> Precision:
    """The precision PyTorch runs in torch type `dtype` ('float16'); ValueError naming those it runs for any other."""
    found = [p for p in TABLE.values() if p.torch_dtype == dtype]
    if not found:
        known = ", ".join(f"{p.torch_dtype} ({p.name})" for p in TABLE.values() if p.torch_dtype)
        raise ValueError(f"no precision runs in torch type {dtype!r}: choose one of {known} (mvlib/precisions.py)")
    return found[0]


def torch_dtype(name: str):
    """The torch type PyTorch runs precision `name` in; ValueError for a precision PyTorch does not run."""
    import torch
    p = get(name)
    if p.torch_dtype is None:
        runs = ", ".join(q.name for q in TABLE.values() if q.torch_dtype)
        raise ValueError(f"PyTorch does not run {p.label} here: it runs {runs} (torch_dtype in mvlib/precisions.py)")
    return getattr(torch, p.torch_dtype)


def capability(cap: str | tuple[int, int]) -> tuple[int, int]:
    """(major, minor) from '8.9', 'sm89', 'sm120' or a tuple."""
    if isinstance(cap, tuple):
        return int(cap[0]), int(cap[1])
    if cap.startswith("sm"):
        digits = cap[2:]
        return int(digits[:-1]), int(digits[-1])
    major, minor = cap.split(".")
    return int(major), int(minor)


def runs_on(name: str, cap: str | tuple[int, int] | None) -> tuple[bool, str]:
    """The build gate: whether a GPU of compute capability `cap` ('8.9', 'sm89', (8, 9); None or '': no GPU)
    builds and runs precision `name`, and why not."""
    p = get(name)
    if cap is None or cap == "":
        return False, f"no NVIDIA GPU here; {p.label} needs compute capability {p.min_capability} or newer ({p.gpus})"
    cc = capability(cap)
    if cc < p.capability:
        return False, (f"compute capability {cc[0]}.{cc[1]} has no {p.needs}; {p.label} needs {p.min_capability} or "
                       f"newer ({p.gpus})")
    return True, ""


def quantized(name: str) -> Precision:
    """The quantized precision called `name` (int8, fp8); ValueError naming them for any other."""
    if name not in QUANTIZED:
        raise ValueError(f"{name!r} is not a quantized precision: choose one of {', '.join(QUANTIZED)}")
    return TABLE[name]


def label(name: str) -> str:
    """The table and figure label of a precision ('FP16')."""
    return get(name).label

