"""Accuracy through polygraphy's Comparator: runners on the same feeds, judged by the one criterion.

Serves notebooks 01 (export check), 02 (SiLU rewrite check), 03 (FP32 / FP16), 04 (INT8 / FP8) and 05 (plugin
engines). `judge` applies `mvlib.precisions`' criterion of a precision to logits against a reference; the runners
of built engines come from the engines table (mvlib.tensorrt.table.runners).
"""
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvlib import metrics, ort_providers, precisions

INPUT = "input"    # the exported model's input name
OUTPUT = "logits"  # and its output name


def feeds(batches: Iterable[int], img_size: int, seed: int | None = None) -> list[dict]:
    """Fresh random feed dicts, one per batch size (polygraphy data-loader format)."""
    rng = np.random.default_rng(seed)
    return [{INPUT: rng.uniform(0.0, 1.0, size=(b, 3, img_size, img_size)).astype(np.float32)} for b in batches]


def onnxrt_runner(onnx_path: Path | str, name: str, threads: int | None = None, providers: list | None = None):
    """Polygraphy ONNX Runtime runner: on the CUDA EP where it runs, else the CPU (mvlib.ort_providers); with
    `threads`, its session uses that many intra-op threads (ONNX Runtime's outputs do not depend on it)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    providers = providers or ort_providers.providers_for_judging()
    if threads is None:
        return OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=providers), name=name)
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return OnnxrtRunner(lambda: ort.InferenceSession(str(onnx_path), opts, providers=providers), name=name)


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


def share(n_runners: int) -> int:
    """Threads of each of `n_runners` runners side by side: an even share of the cores this process may use."""
    return max(1, len(os.sched_getaffinity(0)) // n_runners)


# A spawned runner's start (its imports, a few seconds on a busy core) outweighs a small job: the smoke profile's 16
# images of mobilevit_xxs took 1.3 s in one process and 7.6 s apart on 2 cores; 32 images of mobilevit_s gained.
APART_MIN_IMAGES = 32


def run_apart(makers: Sequence[Callable[[], Any]], data: list[dict],
              threads: Sequence[int] | None = None) -> dict[str, list[dict]]:
    """Each runner (`maker()`, picklable) in its own process, PyTorch there on its `threads` (default: an even
    share of the cores), all on the same feeds at once; each runner's outputs in feed order, by runner name, as
    `run` gives them.

    One core, one runner or fewer than APART_MIN_IMAGES images in the feeds: in this process, one after the other.
    PyTorch's CPU results depend on its thread count in the last bits (1e-7 on mobilevit_s), ONNX Runtime's do
    not; so a runner gives here what `run` gives it in a process with PyTorch on its `threads`.
    """
    threads = list(threads or [share(len(makers))] * len(makers))
    images = sum(len(next(iter(feed.values()))) for feed in data)
    if len(makers) < 2 or len(os.sched_getaffinity(0)) < 2 or images < APART_MIN_IMAGES:
        return _outputs(run([m() for m in makers], data))
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked OpenMP or ONNX Runtime threads
    with ProcessPoolExecutor(len(makers), mp_context=ctx) as pool:
        done = [f.result() for f in [pool.submit(_run_alone, m, data, t) for m, t in zip(makers, threads, strict=True)]]
    return {name: iters for d in done for name, iters in d.items()}


def _run_alone(maker: Callable[[], Any], data: list[dict], threads: int) -> dict[str, list[dict]]:
    """One runner on the feeds, in a process of its own, PyTorch (where the runner brought it) on `threads`."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # unpickling a PyTorch runner's model imported it; an ONNX Runtime runner needs none
        sys.modules["torch"].set_num_threads(threads)
    return _outputs(run([maker()], data))


def _outputs(results) -> dict[str, list[dict]]:
    """Polygraphy's run results as plain data: runner name -> its outputs per feed."""
    return {name: [{OUTPUT: np.asarray(it[OUTPUT])} for it in iters] for name, iters in results.items()}


def check(results, atol: float, rtol: float) -> bool:
    """Polygraphy's element-wise check of every runner against the first, with these tolerances."""
    from polygraphy.comparator import Comparator, CompareFunc
    # polygraphy's default compares neighbours (0-1, 1-2, ...); every runner must face the reference.
    pairs = [(0, i) for i in range(1, len(results))]
    return bool(Comparator.compare_accuracy(results, comparisons=pairs,
                                            compare_func=CompareFunc.simple(atol=atol, rtol=rtol)))


def polygraphy_check(ref: np.ndarray, out: np.ndarray, atol: float, rtol: float) -> list[bool]:
    """Polygraphy's element-wise check (CompareFunc.simple) of each sample of `out` against `ref`."""
    from polygraphy.comparator import Comparator, CompareFunc, RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.logger import G_LOGGER
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs output {out.shape}")
    results = RunResults()
    for name, arr in (("reference", ref), ("output", out)):
        results.append((name, [IterationResult({OUTPUT: arr[i:i + 1]}, runner_name=name) for i in range(len(arr))]))
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # one line per sample otherwise
        acc = Comparator.compare_accuracy(results, comparisons=[(0, 1)],
                                          compare_func=CompareFunc.simple(atol=atol, rtol=rtol))
    return [all(bool(v) for v in match.values()) for match in acc[0][("reference", "output")]]


def judge(ref: np.ndarray, out: np.ndarray, m: dict, precision: str) -> tuple[list[str], list[bool] | None]:
    """The one accuracy criterion of `precision` on logits `out` against `ref`, whose metrics `m` holds
    (metrics.compare, plus top1_drop_points where labels are known): why it fails (empty: it passes) and,
    where the precision's tolerance bounds each logit, each image's polygraphy verdict (else None)."""
    tol = precisions.get(precision).tolerance
    within = polygraphy_check(ref, out, tol.atol, tol.rtol) if tol.atol is not None else None
    return metrics.failures(m, tol, None if within is None else int(sum(within))), within


def table(results, reference: str, atol: float | None = None, rtol: float | None = None,
          judged: dict[str, str] | None = None) -> pd.DataFrame:
    """Metrics of every runner against runner `reference`, one row per runner and batch size.

    With atol/rtol an `allclose` column; with `judged` ({runner: precision}) those runners' rows also get the
    one criterion's verdict: `precision`, `samples_within_tol` (where the tolerance bounds logits), `fails`,
    `passed`."""
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
            if judged and row["runner"] in judged:
                fails, within = judge(ref, out, row, judged[row["runner"]])
                row.update(precision=judged[row["runner"]], fails="; ".join(fails), passed=not fails,
                           **({} if within is None else {"samples_within_tol": int(sum(within))}))
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
