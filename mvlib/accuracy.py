"""Accuracy through polygraphy's Comparator: runners on the same feeds, checked against a reference."""
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mvlib import metrics

INPUT = "input"    # the exported model's input name
OUTPUT = "logits"  # and its output name


def feeds(batches: Iterable[int], img_size: int, seed: int | None = None, repeats: int = 1) -> list[dict]:
    """Fresh random feed dicts, `repeats` per batch size (polygraphy data-loader format)."""
    rng = np.random.default_rng(seed)
    return [{INPUT: rng.uniform(0.0, 1.0, size=(b, 3, img_size, img_size)).astype(np.float32)}
            for b in batches for _ in range(repeats)]


def onnxrt_runner(onnx_path: Path | str, name: str, session_options=None):
    """Polygraphy ONNX Runtime runner on the CPU."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    loader = SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"])
    if session_options is not None:  # e.g. with onnxruntime-extensions' custom ops registered
        import onnxruntime as ort

        def loader():  # noqa: F811
            return ort.InferenceSession(str(onnx_path), session_options, providers=["CPUExecutionProvider"])
    return OnnxrtRunner(loader, name=name)


def torch_runner(model, img_size: int, name: str = "pytorch-fp32"):
    """Polygraphy runner for a PyTorch model with one image input and one logits output.

    polygraphy's own PytRunner moves inputs to CUDA unconditionally, so it cannot
    serve as the CPU reference; this one runs on whatever device the model is on.
    """
    import torch
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class TorchRunner(BaseRunner):
        def __init__(self):
            super().__init__(name=name, prefix="pytorch-runner")

        def activate_impl(self):
            self.device = next(model.parameters()).device

        def get_input_metadata_impl(self):
            return TensorMetadata().add(INPUT, np.float32, (-1, 3, img_size, img_size))

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            with torch.no_grad():
                out = model(torch.from_numpy(feed_dict[INPUT]).to(self.device))
            result = {OUTPUT: out.float().cpu().numpy()}
            self.inference_time = time.perf_counter() - start
            return result

        def deactivate_impl(self):
            pass

    return TorchRunner()


def run(runners: Sequence, data: list[dict]):
    """Run every runner on the same feeds (polygraphy Comparator.run)."""
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER
    G_LOGGER.module_severity = G_LOGGER.WARNING  # per-inference INFO lines drown a notebook
    return Comparator.run(list(runners), data_loader=data)


def check(results, atol: float, rtol: float) -> bool:
    """Polygraphy's element-wise check of every runner against the first, with these tolerances."""
    from polygraphy.comparator import Comparator, CompareFunc
    # polygraphy's default compares neighbours (0-1, 1-2, ...); every runner must face the reference.
    pairs = [(0, i) for i in range(1, len(results))]
    return bool(Comparator.compare_accuracy(results, comparisons=pairs,
                                            compare_func=CompareFunc.simple(atol=atol, rtol=rtol)))


def table(results, reference: str, atol: float | None = None, rtol: float | None = None) -> pd.DataFrame:
    """Metrics of every runner against runner `reference`, one row per runner and batch size."""
    ref_iters = results[_runner_name(results, reference)]
    rows = []
    for name, iters in results.items():
        if name.startswith(reference):
            continue
        by_batch: dict[int, list] = {}
        for ref_it, it in zip(ref_iters, iters, strict=True):
            by_batch.setdefault(ref_it[OUTPUT].shape[0], []).append((ref_it[OUTPUT], it[OUTPUT]))
        for batch, pairs in sorted(by_batch.items()):
            ref = np.concatenate([p[0] for p in pairs])
            out = np.concatenate([p[1] for p in pairs])
            row = {"runner": _short(name), "reference": reference, "batch": batch, **metrics.compare(ref, out)}
            if atol is not None and rtol is not None:
                row["allclose"] = bool(np.allclose(out, ref, atol=atol, rtol=rtol))
            rows.append(row)
    return pd.DataFrame(rows)


def _runner_name(results, prefix: str) -> str:
    """The full runner name (polygraphy appends a counter and timestamp) that starts with `prefix`."""
    for name in results.keys():
        if name.startswith(prefix):
            return name
    raise KeyError(f"no runner named {prefix!r} in {list(results.keys())}")


def _short(name: str) -> str:
    """A runner's name without polygraphy's suffix ('-N-[timestamp]' or similar)."""
    return name.split("-N")[0].split("-[")[0]
