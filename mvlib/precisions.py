"""The study's precisions in one table (notebooks 01, 03, 04, 05, 06): model file, making notebook, bytes per
weight, accuracy tolerance, minimum compute capability and label.

Every reader of a precision fact asks `get(name)`; a precision is passed down by name, never guessed from a
graph. An unknown name is an error naming the known ones, never a silent default. export.ARTIFACTS takes the
model files' names from here.

Serves: notebooks 01 and 03 to 06 (every reader of a precision fact).
"""
from dataclasses import dataclass

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
    plugin_artifact: str   # the SiLU-plugin rewrite of its ONNX file (notebook 05; FP32's also notebook 02)
    quantized: bool = False  # made by ModelOpt's Q/DQ quantization (notebook 04: policies, sensitivity, choice)

    @property
    def capability(self) -> tuple[int, int]:
        """min_capability as (major, minor)."""
        major, minor = self.min_capability.split(".")
        return int(major), int(minor)


QUANTIZED_TOLERANCE = Tolerance(min_cosine_mean=0.999, min_top1_agreement=0.99, max_top1_drop_points=0.5)
TABLE: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "model.onnx", "01_export", 4, metrics.CRITERION,
              Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999), "7.5", "FP32", "model.silu.onnx"),
    Precision("fp16", "model.fp16.onnx", "03_fp32_fp16", 2, metrics.CRITERION,
              Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999), "7.5", "FP16", "model.fp16.silu.onnx"),
    Precision("int8", "model.int8.onnx", "04_int8", 1, metrics.CRITERION, QUANTIZED_TOLERANCE, "7.5", "INT8",
              "model.int8.silu.onnx", quantized=True),
    Precision("fp8", "model.fp8.onnx", "04_int8", 1, metrics.CRITERION, QUANTIZED_TOLERANCE, "8.9", "FP8",
              "model.fp8.silu.onnx", quantized=True),
)}
EVERY_GPU = tuple(n for n, p in TABLE.items() if p.min_capability == "7.5")  # fp32, fp16, int8: every GPU of 7.5+
QUANTIZED = tuple(n for n, p in TABLE.items() if p.quantized)  # int8, fp8: notebook 04's


def get(name: str) -> Precision:
    """The precision called `name`; ValueError naming the known ones for any other."""
    if name not in TABLE:
        raise ValueError(f"unknown precision {name!r}: choose one of {', '.join(TABLE)} (mvlib/precisions.py)")
    return TABLE[name]


def quantized(name: str) -> Precision:
    """The quantized precision called `name` (int8, fp8); ValueError naming them for any other."""
    if name not in QUANTIZED:
        raise ValueError(f"{name!r} is not a quantized precision: choose one of {', '.join(QUANTIZED)}")
    return TABLE[name]


def label(name: str) -> str:
    """The table and figure label of a precision ('FP16')."""
    return get(name).label

