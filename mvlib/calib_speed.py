"""Histogram (entropy) calibration spread over threads, exactly: the same histograms, thresholds and model bytes.

Serves notebook 04 through `mvlib.quant.quantize`. ModelOpt's ONNX `entropy` calibration runs ONNX Runtime's
HistogramCalibrater: for every calibration batch (one image: the export's batch is dynamic, so ModelOpt feeds
them one by one) it runs the augmented model, then, tensor after tensor, takes the min and max of the tensor's
activations and adds them to its histogram (`HistogramCollector.collect_value`, replaced by ModelOpt's own copy);
the threshold search follows once at the end. Profiled on mobilevit_s at 256 px (64 images, 2 busy cores: 96 s)
the histograms took 56 % of a calibration (np.histogram alone 49 %), the model runs 21 %, the threshold search
5 %, the Q/DQ placement 6 %, the rest (imports, shape inference, files) the remaining 12 %. ModelOpt's FP8
`entropy` is its INT8 entropy calibration converted to FP8, so the same collector serves both precisions.

Each tensor's histogram depends only on that tensor's arrays, and numpy releases the GIL in its loops, so
`parallel_histograms` hands the tensors of a batch to a thread pool, in groups; each group goes through the
installed `collect_value` itself (ModelOpt's or ONNX Runtime's, unchanged) on a stand-in collector holding only
the group's histograms, and the results are put back in the collector in the original tensor order. The
arithmetic per tensor is the library's own, so every histogram, threshold and byte of the model is the same. A
batch's histograms are still being made while ONNX Runtime runs the next image (collect returns at once; the next
collect and the threshold search wait for them first), so the model runs and the histograms overlap too. On 2
cores already busy with other work the 64-image calibration above took 84 s instead of 97 s for the same CPU
seconds; the gain grows with the cores (quant.calibrate_all gives the entropy calibrations all of them).

It patches ONNX Runtime's `HistogramCollector` (collect, compute_collection_result, get_histogram_dict) only
inside the context manager, restores them after, and only where the class has the members this relies on
(`unsupported` says which is missing); otherwise the library's own sequential path runs.
"""
import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

HISTOGRAM_METHODS = ("entropy", "distribution")  # the methods whose collect goes through collect_value
_NEEDED = ("collect", "collect_value", "compute_collection_result", "get_histogram_dict", "merge_histogram")
_GROUPS_PER_THREAD = 2  # more groups than threads, so one big tensor does not hold the batch up alone


def default_threads() -> int:
    """Histogram threads of a calibration: every core this process may use."""
    return len(os.sched_getaffinity(0))


def unsupported() -> str:
    """Why this ONNX Runtime's HistogramCollector cannot take the parallel path ('' when it can)."""
    try:
        from onnxruntime.quantization.calibrate import HistogramCollector
    except ImportError as err:
        return f"onnxruntime.quantization.calibrate.HistogramCollector is not importable ({err})"
    missing = [name for name in _NEEDED if not callable(getattr(HistogramCollector, name, None))]
    return f"HistogramCollector has no {', '.join(missing)}" if missing else ""


class _Group:
    """The collector as one group's `collect_value` sees it: the group's own histograms, the rest the real one's."""

    def __init__(self, real, names):
        self._real = real
        self.histogram_dict = {n: real.histogram_dict[n] for n in names if n in real.histogram_dict}

    def __getattr__(self, name):
        return getattr(self._real, name)


def _groups(name_to_arr: dict, n: int) -> list[list[str]]:
    """The tensors split into at most `n` groups of about equal size (largest first, each to the lightest group)."""
    sizes = {k: sum(getattr(a, "size", 0) for a in (v if isinstance(v, list) else [v])) for k, v in name_to_arr.items()}
    groups: list[list[str]] = [[] for _ in range(min(n, len(sizes)))]
    load = [0] * len(groups)
    for name in sorted(sizes, key=lambda k: -sizes[k]):
        i = load.index(min(load))
        groups[i].append(name)
        load[i] += sizes[name]
    return [g for g in groups if g]


class _Parallel:
    """The patched methods' state: the pool, the batch still being collected, and a count of batches."""

    def __init__(self, pool: ThreadPoolExecutor, threads: int):
        self.pool, self.threads = pool, threads
        self.pending: dict[int, tuple[list[str], list[tuple[_Group, Future]]]] = {}  # id(collector) -> its batch
        self.batches = 0

    def finish(self, collector) -> None:
        """Wait for the collector's batch in flight and put its histograms back in the original tensor order."""
        order, parts = self.pending.pop(id(collector), ([], []))
        made = {}
        for group, future in parts:
            future.result()  # raises the group's error here, in the caller
            made.update(group.histogram_dict)
        for name in order:
            collector.histogram_dict[name] = made[name]

    def collect(self, collector, name_to_arr: dict) -> None:
        """Start one batch's histograms on the pool (after the previous batch's are in)."""
        self.finish(collector)
        collect_value = type(collector).collect_value  # what ModelOpt installed at this call
        parts = []
        for names in _groups(name_to_arr, self.threads * _GROUPS_PER_THREAD):
            group = _Group(collector, names)
            parts.append((group, self.pool.submit(collect_value, group, {n: name_to_arr[n] for n in names})))
        self.pending[id(collector)] = (list(name_to_arr), parts)
        self.batches += 1


@contextlib.contextmanager
def parallel_histograms(threads: int | None = None) -> Iterator[_Parallel | None]:
    """Within: histogram calibrations collect each batch's tensors on `threads` threads (default: every core), the
    next model run overlapping; yields the state (its `batches` counts the batches so collected), or None where the
    library's own sequential path runs (one thread, or `unsupported()`)."""
    threads = threads or default_threads()
    if threads <= 1 or unsupported():
        yield None
        return
    from onnxruntime.quantization.calibrate import HistogramCollector as HC
    saved = {name: HC.__dict__[name] for name in ("collect", "compute_collection_result", "get_histogram_dict")}
    with ThreadPoolExecutor(threads, thread_name_prefix="mvlib-histogram") as pool:
        state = _Parallel(pool, threads)

        def collect(self, name_to_arr):
            """ONNX Runtime's collect, the histogram methods' tensors in parallel (mvlib.calib_speed)."""
            if self.method not in HISTOGRAM_METHODS:
                return saved["collect"](self, name_to_arr)
            return state.collect(self, name_to_arr)

        def compute_collection_result(self):
            """ONNX Runtime's, once the batch in flight is in (mvlib.calib_speed)."""
            state.finish(self)
            return saved["compute_collection_result"](self)

        def get_histogram_dict(self):
            """ONNX Runtime's, once the batch in flight is in (mvlib.calib_speed)."""
            state.finish(self)
            return saved["get_histogram_dict"](self)

        HC.collect, HC.compute_collection_result, HC.get_histogram_dict = \
            collect, compute_collection_result, get_histogram_dict
        try:
            yield state
        finally:
            for name, fn in saved.items():
                setattr(HC, name, fn)
