"""The study's precisions in one table (notebooks 01, 03, 04, 05, 06): artifact file, making notebook, bytes per
weight, accuracy tolerance, minimum compute capability and label.

Every reader of a precision fact asks `get(name)`; a precision is passed down by name, never guessed from a
graph. An unknown name is an error naming the known ones, never a silent default."""
from dataclasses import dataclass

from mvlib import metrics
from mvlib.metrics import Tolerance


@dataclass(frozen=True)
class Precision:
    """One precision of the study: where its model lives, who makes it, how it is judged and where it runs."""
    name: str              # fp32, fp16, int8, fp8: the key everyone passes down
    artifact: str          # its ONNX file's role in export.ARTIFACTS (the same string as its name)
    notebook: str          # the notebook that makes that file
    bytes_per_weight: int  # storage of one weight in the engine (roofline's weight traffic)
    criterion: str         # the one accuracy criterion (metrics.CRITERION), judged by metrics.failures
    tolerance: Tolerance   # its bounds for this precision
    min_capability: str    # the lowest compute capability whose TensorRT runs it ("7.5": TensorRT 10; FP8 "8.9")
    label: str             # in tables and figures

    @property
    def plugin_artifact(self) -> str:
        """The role of its SiLU-plugin rewrite in export.ARTIFACTS."""
        return f"plugin_{self.name}"


TABLE: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "fp32", "01_export", 4, metrics.CRITERION,
              Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999), "7.5", "FP32"),
    Precision("fp16", "fp16", "03_fp32_fp16", 2, metrics.CRITERION,
              Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999), "7.5", "FP16"),
    Precision("int8", "int8", "04_int8", 1, metrics.CRITERION,
              Tolerance(min_cosine_mean=0.999, min_top1_agreement=0.99, max_top1_drop_points=0.5), "7.5", "INT8"),
    Precision("fp8", "fp8", "04_int8", 1, metrics.CRITERION,
              Tolerance(min_cosine_mean=0.999, min_top1_agreement=0.99, max_top1_drop_points=0.5), "8.9", "FP8"),
)}
EVERY_GPU = ("fp32", "fp16", "int8")  # what every GPU of the study runs (7.5+); FP8 needs 8.9 and has its own stages


def get(name: str) -> Precision:
    """The precision called `name`; ValueError naming the known ones for any other."""
    if name not in TABLE:
        raise ValueError(f"unknown precision {name!r}: choose one of {', '.join(TABLE)} (mvlib/precisions.py)")
    return TABLE[name]


def label(name: str) -> str:
    """The table and figure label of a precision ('FP16')."""
    return get(name).label
