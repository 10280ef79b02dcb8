"""Synthetic benchmark tables shaped like bench.COLUMNS, for the tests of bench, plots and decision."""
import numpy as np
import pandas as pd

from mvlib import bench


def synthetic_table() -> pd.DataFrame:
    """A results table with CPU and GPU rows, shaped like the harness writes it."""
    rows = []
    spec = [("pytorch", "cpu", "fp32", "PyTorch CPU FP32", {1: 20, 8: 30}),
            ("onnxruntime", "cpu", "fp32", "ONNX Runtime CPU FP32", {1: 40, 8: 31}),
            ("pytorch-eager", "cuda", "fp32", "PyTorch eager FP32", {1: 180, 8: 1400, 32: 3200}),
            ("torch.compile+cudagraphs", "cuda", "fp16", "torch.compile FP16 + CUDA graphs",
             {1: 1800, 8: 9000, 32: 11800}),
            ("tensorrt", "cuda", "fp16", "TensorRT FP16", {1: 2500, 8: 14000, 32: 16000})]
    for backend, device, precision, label, thr in spec:
        for batch, ips in thr.items():
            ms = 1000 * batch / ips
            rows.append({"backend": backend, "device": device, "precision": precision, "batch": batch, "repeats": 3,
                         "iterations": 300, "mean_ms": ms, "median_ms": ms * 0.99, "p90_ms": ms * 1.05,
                         "p95_ms": ms * 1.08, "p99_ms": ms * 1.2, "throughput_ips": float(ips), "spread_pct": 2.0,
                         "peak_mem_mib": 100.0 * batch if device == "cuda" else float("nan"), "notes": "synthetic",
                         "label": label, "throughput_min_ips": ips * 0.99, "throughput_max_ips": ips * 1.01,
                         "wall_s": 9.0, "timing": "synthetic",
                         "transfers": bench.GPU_TRANSFERS if device == "cuda" else bench.CPU_TRANSFERS,
                         "variant": "mobilevit_s", "img_size": 256,
                         "power_w": 300.0 if device == "cuda" else "not measured: RAPL: none",
                         "energy_j_per_image": 300.0 / ips if device == "cuda" else "not measured: RAPL: none",
                         "setup_s": 1.0, "prime_s": 30.0 if "compile" in backend else 0.1,
                         "artifact": "synthetic", "artifact_bytes": 2e7})
    return pd.DataFrame(rows, columns=bench.COLUMNS)


def ladder_table(devices=("cpu",)) -> pd.DataFrame:
    """A results table whose rows grow with the batch: three CPU backends (INT8 the slowest), one GPU one."""
    rows = []
    for device, backend, precision, label, base in (("cpu", "pytorch", "fp32", "PyTorch CPU FP32", 40.0),
                                                    ("cpu", "onnxruntime", "fp32", "ONNX Runtime CPU FP32", 100.0),
                                                    ("cpu", "onnxruntime", "int8", "ONNX Runtime CPU INT8", 30.0),
                                                    ("cuda", "pytorch-eager", "fp32", "PyTorch eager FP32", 3000.0)):
        if device not in devices:
            continue
        for batch in (1, 8, 32):
            ips = base * (1 + np.log2(batch) / 10)
            rows.append({c: np.nan for c in bench.COLUMNS} | {
                "backend": backend, "device": device, "precision": precision, "label": label, "batch": batch,
                "throughput_ips": ips, "throughput_min_ips": ips * 0.98, "throughput_max_ips": ips * 1.02,
                "spread_pct": 4.0, "median_ms": 1e3 * batch / ips, "p90_ms": 1.1e3 * batch / ips,
                "p95_ms": 1.2e3 * batch / ips, "p99_ms": 1.3e3 * batch / ips, "variant": "mobilevit_xxs",
                "img_size": 256})
    return pd.DataFrame(rows, columns=bench.COLUMNS)
