"""What the measurements are held against: the model's cost, the machine's measured ceilings, a published anchor.

Serves notebook 06. The roofline (its last figure) places each benchmark row by its compulsory arithmetic
intensity and achieved FLOP/s under the copy and matmul ceilings measured here, not taken from datasheets. The
anchor check holds this run's torch.compile row against the README's H200 figure, where comparable.
"""
import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mvlib import metrics, precisions

MIB = 2 ** 20


def model_cost(model, img_size: int) -> pd.DataFrame:
    """FLOPs per image counted by torch.utils.flop_counter (convolutions, matmuls, attention), parameters, I/O sizes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    net = copy.deepcopy(model).float().eval().cpu()
    x = torch.from_numpy(metrics.random_images(1, img_size, seed=0))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        out = net(x)
    return pd.DataFrame([{
        "flops_per_image": float(counter.get_total_flops()), "params": int(sum(p.numel() for p in net.parameters())),
        "input_elems": int(x[0].numel()), "output_elems": int(out[0].numel()), "img_size": img_size,
        "method": f"torch.utils.flop_counter.FlopCounterMode, torch {torch.__version__}: conv/matmul/attention, "
                  "2 FLOPs per multiply-add; element-wise ops not counted"}])


def _best_seconds(fn: Callable[[], Any], reps: int) -> float:
    """Shortest wall time of `reps` calls of `fn` after two warm-up calls: a ceiling is the best rate seen."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(min(times))


def cpu_ceilings(copy_mib: int = 64, matmul_n: int = 1024, reps: int = 5) -> pd.DataFrame:
    """The host's measured memory-copy bandwidth (GB/s, read + write) and FP32 matmul rate (TFLOP/s), on random data."""
    import torch
    src = np.random.default_rng(0).random(copy_mib * MIB // 4, dtype=np.float32)
    dst = np.empty_like(src)
    copy_s = _best_seconds(lambda: np.copyto(dst, src), reps)
    a, b = torch.rand(matmul_n, matmul_n), torch.rand(matmul_n, matmul_n)
    mm_s = _best_seconds(lambda: torch.mm(a, b), reps)
    return pd.DataFrame([
        {"device": "cpu", "ceiling": "copy", "value": 2 * src.nbytes / copy_s / 1e9, "unit": "GB/s",
         "size": f"{copy_mib} MiB fp32", "method": f"numpy copyto, best of {reps}"},
        {"device": "cpu", "ceiling": "matmul_fp32", "value": 2 * matmul_n ** 3 / mm_s / 1e12, "unit": "TFLOP/s",
         "size": f"{matmul_n}^3", "method": f"torch.mm, {torch.get_num_threads()} threads, best of {reps}"}])


def gpu_ceilings(copy_elems: int = 2 ** 28, matmul_n: int = 8192, reps: int = 20) -> pd.DataFrame:
    """The GPU's measured device-to-device copy bandwidth (GB/s, read + write) and fp16/bf16/fp32 matmul rates."""
    import torch

    def event_ms(fn: Callable[..., Any], n: int, *args: Any) -> float:
        """Best of n timings of fn(*args), in ms; the tensors are passed in, not closed over (they are deleted)."""
        for _ in range(3):
            fn(*args)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(n):
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return float(min(times))

    src = torch.rand(copy_elems, device="cuda", dtype=torch.float16)
    dst = torch.empty_like(src)
    rows = [{"device": "cuda", "ceiling": "copy", "unit": "GB/s", "size": f"{copy_elems * 2 / MIB:.0f} MiB fp16",
             "value": 2 * src.numel() * src.element_size() / (event_ms(torch.Tensor.copy_, reps, dst, src) / 1e3) / 1e9,
             "method": f"Tensor.copy_, CUDA events, best of {reps}"}]
    del src, dst
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the FP32 ceiling is true FP32, not TF32
    try:
        for name, dtype in (("matmul_fp16", torch.float16), ("matmul_bf16", torch.bfloat16),
                            ("matmul_fp32", torch.float32)):
            a = torch.randn(matmul_n, matmul_n, device="cuda", dtype=dtype)
            b = torch.randn(matmul_n, matmul_n, device="cuda", dtype=dtype)
            n = reps if dtype != torch.float32 else max(3, reps // 4)
            ms = event_ms(torch.mm, n, a, b)
            rows.append({"device": "cuda", "ceiling": name, "unit": "TFLOP/s", "size": f"{matmul_n}^3",
                         "value": 2 * matmul_n ** 3 / (ms / 1e3) / 1e12,
                         "method": f"torch.mm (cuBLAS) on random data, CUDA events, best of {n}"})
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    name = torch.cuda.get_device_name(0)
    for r in rows:
        r["method"] += f", {name}"
    return pd.DataFrame(rows)


def roofline_points(df: pd.DataFrame, cost: pd.DataFrame) -> pd.DataFrame:
    """Each row's achieved FLOP/s and its compulsory arithmetic intensity (FLOPs per byte that must move:
    weights once per launch, at the bytes per weight of the row's precision (mvlib.precisions), plus each image's
    input and output, at its io_bytes), the x axis of a roofline."""
    c = cost.iloc[0]
    out = df[["label", "device", "precision", "batch", "throughput_ips"]].copy()
    wbytes = out.precision.map(lambda p: precisions.get(p).bytes_per_weight)  # an unknown precision is an error
    iobytes = out.precision.map(lambda p: precisions.get(p).io_bytes)
    bytes_per_launch = c.params * wbytes + out.batch * (c.input_elems + c.output_elems) * iobytes
    out["flops_per_s"] = out.throughput_ips * c.flops_per_image
    out["intensity"] = out.batch * c.flops_per_image / bytes_per_launch
    return out


@dataclasses.dataclass(frozen=True)
class Anchor:
    """A published throughput and the conditions it was measured under; a row is comparable only under the same."""
    ips: float
    backend: str
    precision: str
    batch: int
    variant: str
    img_size: int
    gpu: str          # a part of the GPU's name (torch.cuda.get_device_name)
    tolerance: float  # relative: the row lands within it or outside
    source: str


# README, "Anchors": PyTorch 2.11, timm mobilevit_s with random weights, one NVIDIA H200.
H200_COMPILE = Anchor(11790.0, "torch.compile+cudagraphs", "fp16", 32, "mobilevit_s", 256, "H200", 0.15,
                      "README Anchors: torch.compile FP16 + CUDA graphs, mobilevit_s, batch 32, one NVIDIA H200")


def _anchor_row(df: pd.DataFrame, a: Anchor) -> pd.Series | None:
    """This run's row of the anchor's backend, precision and batch, if it measured one."""
    rows = df[(df.backend == a.backend) & (df.precision == a.precision) & (df.batch == a.batch)]
    return None if rows.empty else rows.iloc[0]


def _not_comparable(row: pd.Series | None, gpu: str | None, a: Anchor) -> list[str]:
    """Why this run's row cannot be held against the anchor: another GPU, another model, or no such row."""
    why = [] if gpu and a.gpu in gpu else [f"GPU {gpu or 'none'}, the anchor's is an NVIDIA {a.gpu}"]
    if row is None:
        why.append(f"no {a.backend} {a.precision} row at batch {a.batch} in this run")
    elif (row.variant, int(row.img_size)) != (a.variant, a.img_size):
        why.append(f"model {row.variant} at {int(row.img_size)} px, the anchor's is {a.variant} at {a.img_size} px")
    return why


def anchor_check(df: pd.DataFrame, gpu: str | None, anchor: Anchor = H200_COMPILE) -> dict:
    """This run's row against a published anchor: verdict within, outside or not comparable, and why (never raises)."""
    row = _anchor_row(df, anchor)
    ips = None if row is None else float(row.throughput_ips)
    ratio = None if ips is None else ips / anchor.ips
    why = _not_comparable(row, gpu, anchor)
    if why:
        verdict, reason = "not comparable", "; ".join(why)
    else:
        verdict = "within" if abs(ratio - 1) <= anchor.tolerance else "outside"
        reason = f"{100 * (ratio - 1):+.1f}% of the anchor, tolerance ±{100 * anchor.tolerance:.0f}%"
    return {"verdict": verdict, "reason": reason, "throughput_ips": ips, "anchor_ips": anchor.ips, "ratio": ratio,
            "tolerance": anchor.tolerance, "label": None if row is None else row.label, "backend": anchor.backend,
            "precision": anchor.precision, "batch": anchor.batch, "variant": None if row is None else row.variant,
            "img_size": None if row is None else int(row.img_size), "gpu": gpu, "anchor": anchor.source}
