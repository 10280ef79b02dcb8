"""Histogram (entropy) calibration spread over threads or processes, exactly: the same histograms, thresholds and
model bytes.

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

Threads help little beyond two: `collect_value`'s Python between numpy calls holds the GIL (on 16 cores the
full model's entropy calibration took as long on 8 threads as on 2, 165 s). From PROCESSES_FROM workers on, the
groups go to processes instead: the batch's arrays are written once into a shared-memory block, each process maps
its group's arrays and runs the same `collect_value` (and `merge_histogram`) on a copy of the collector holding
the group's histograms, and sends those back; the parent still holds every histogram between batches, so which
process takes which group does not matter, and the arithmetic is again the library's own. A batch goes to
threads instead (the state's `fallback` says why; quant.quantize prints it) where the processes cannot take it:
a collect_value that cannot be sent to a process, or a /dev/shm too small for two batches (a container's default
64 MiB; writing past it would kill the calibration with SIGBUS). The blocks are named after the process that made
them, and `sweep` (at each pool's start, and when the driver kills an interrupted run's processes) removes those of
processes that no longer run. `MVLIB_HISTOGRAM_PROCESSES=0` keeps threads;
`tools/histogram_speed.py` times one calibration both ways on a machine.

It patches ONNX Runtime's `HistogramCollector` (collect, compute_collection_result, get_histogram_dict) only
inside the context manager, restores them after, and only where the class has the members this relies on
(`unsupported` says which is missing); otherwise the library's own sequential path runs.
"""
import contextlib
import copy
import importlib
import io
import itertools
import multiprocessing
import os
import pickle
import shutil
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import shared_memory

import numpy as np

HISTOGRAM_METHODS = ("entropy", "distribution")  # the methods whose collect goes through collect_value
_NEEDED = ("collect", "collect_value", "compute_collection_result", "get_histogram_dict", "merge_histogram")
_GROUPS_PER_THREAD = 2  # more groups than threads, so one big tensor does not hold the batch up alone
PROCESSES_FROM = 4  # from this many workers on, processes: below it a worker's start (imports ~5 s) is not repaid
_SHIPPED = ("collect_value", "merge_histogram")  # the collector's methods a process must run as the parent does
SHARED = "/dev/shm"  # where Python's SharedMemory blocks live on Linux
BLOCK_PREFIX = "mvlib-histograms-"  # + the creating process's pid + a count: `sweep` knows its own
_BLOCKS = itertools.count()
_WARM = ("onnxruntime.quantization.calibrate", "modelopt.onnx.quantization.ort_patching")  # a worker's imports


def default_threads() -> int:
    """Histogram threads of a calibration: every core this process may use."""
    return len(os.sched_getaffinity(0))


def use_processes(workers: int, environ=os.environ) -> bool:
    """Whether `workers` histogram workers are processes: from PROCESSES_FROM on, unless MVLIB_HISTOGRAM_PROCESSES=0
    (threads, as before processes came)."""
    return workers >= PROCESSES_FROM and environ.get("MVLIB_HISTOGRAM_PROCESSES", "1") != "0"


def unsupported() -> str:
    """Why this ONNX Runtime's HistogramCollector cannot take the parallel path ('' when it can)."""
    try:
        from onnxruntime.quantization.calibrate import HistogramCollector
    except ImportError as err:
        return f"onnxruntime.quantization.calibrate.HistogramCollector is not importable ({err})"
    missing = [name for name in _NEEDED if not callable(getattr(HistogramCollector, name, None))]
    return f"HistogramCollector has no {', '.join(missing)}" if missing else ""


def _stand_in(collector, names):
    """A shallow copy of the collector holding only the group's histograms (what `collect_value` updates)."""
    part = copy.copy(collector)
    part.histogram_dict = {n: collector.histogram_dict[n] for n in names if n in collector.histogram_dict}
    return part


def _local(collect_value, part, name_to_arr: dict) -> dict:
    """One group's histograms on a thread: the installed collect_value on its stand-in; the group's histograms."""
    collect_value(part, name_to_arr)
    return part.histogram_dict


def _warm(modules: tuple[str, ...]) -> None:
    """A histogram process's first act: the imports its groups will need (ModelOpt's, where installed)."""
    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _remote(methods: dict, part, block: str, layout: dict) -> dict:
    """One group's histograms in a process: its arrays mapped from the batch's shared block, the parent's
    collect_value and merge_histogram on its stand-in; the group's histograms."""
    for name, fn in methods.items():
        setattr(type(part), name, fn)  # this process's class does what the parent's does
    shm = shared_memory.SharedMemory(name=block)
    try:
        arrays = {n: [np.ndarray(shape, dtype, buffer=shm.buf, offset=off) for off, shape, dtype in parts]
                  for n, parts in layout.items()}
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            methods["collect_value"](part, arrays)  # ModelOpt's shows a progress bar per batch: not wanted here
        del arrays  # no view may outlive the block
        return part.histogram_dict
    finally:
        shm.close()


def _arrays(name_to_arr: dict) -> dict[str, list[np.ndarray]]:
    """Each tensor's arrays as a list (the calibrator hands over a list per tensor, or one array)."""
    return {n: [np.asarray(a) for a in (v if isinstance(v, list) else [v])] for n, v in name_to_arr.items()}


def _aligned(nbytes: int) -> int:
    """An array's room in a shared block: its bytes rounded up to 64 (each array starts on a cache line)."""
    return -(-nbytes // 64) * 64


def _nbytes(items: dict[str, list[np.ndarray]]) -> int:
    """The shared block a batch needs (its arrays as `_arrays` lists them)."""
    return sum(_aligned(a.nbytes) for arrs in items.values() for a in arrs)


def _free_shared() -> int:
    """Bytes free where shared-memory blocks live (a container's /dev/shm is often 64 MiB: writing past it kills
    the process with SIGBUS, so the batch must fit before it is written)."""
    try:
        return shutil.disk_usage(SHARED).free
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    """Whether process `pid` runs: it exists and is no zombie (a killed process stays one until it is reaped, and
    the driver sweeps right after its SIGKILL). Another user's process counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sweep(folder: str | None = None) -> list[str]:
    """Remove the shared blocks a killed calibration left (named BLOCK_PREFIX + its pid, which no longer runs):
    SIGKILL, as the driver sends an interrupted run's children, runs no cleanup. Only this module's names, only
    of dead processes; the names removed."""
    folder = folder or SHARED
    gone = []
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            pid = entry[len(BLOCK_PREFIX):].split("-")[0] if entry.startswith(BLOCK_PREFIX) else ""
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, entry))
                    gone.append(entry)
    return gone


def _share(items: dict[str, list[np.ndarray]]) -> tuple[shared_memory.SharedMemory, dict]:
    """The batch's arrays (as `_arrays` lists them) copied into one new shared-memory block; the block and each
    tensor's (offset, shape, dtype) parts in it."""
    name = f"{BLOCK_PREFIX}{os.getpid()}-{next(_BLOCKS)}"
    shm = shared_memory.SharedMemory(name=name, create=True, size=max(1, _nbytes(items)))
    layout, off = {}, 0
    for n, arrs in items.items():
        layout[n] = []
        for a in arrs:
            np.ndarray(a.shape, a.dtype, buffer=shm.buf, offset=off)[...] = a
            layout[n].append((off, a.shape, a.dtype.str))
            off += _aligned(a.nbytes)
    return shm, layout


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
    """The patched methods' state: the pool (threads or processes), each collector's batch still being collected
    (with its shared block, for processes), and a count of batches."""

    def __init__(self, pool: Executor, threads: int, processes: bool):
        self.pool, self.threads, self.processes = pool, threads, processes
        self.pending: dict[int, tuple[list[str], list[Future], object]] = {}  # id(collector) -> its batch
        self.batches = 0
        self.fallback = ""  # why a batch went to threads instead of the processes (the first reason)
        self.threads_pool: ThreadPoolExecutor | None = None

    def finish(self, collector) -> None:
        """Wait for the collector's batch in flight and put its histograms back in the original tensor order."""
        order, futures, block = self.pending.pop(id(collector), ([], [], None))
        try:
            made = {}
            for future in futures:
                made.update(future.result())  # raises the group's error here, in the caller
        finally:
            _release(block, futures)
        for name in order:
            collector.histogram_dict[name] = made[name]

    def release(self) -> None:
        """Every batch still in flight dropped and its shared block freed (at the with-block's end, error or not)."""
        for _, futures, block in self.pending.values():
            _release(block, futures)
        self.pending.clear()
        if self.threads_pool is not None:
            self.threads_pool.shutdown()

    def collect(self, collector, name_to_arr: dict) -> None:
        """Start one batch's histograms on the pool (after the previous batch's are in)."""
        self.finish(collector)
        methods = {name: getattr(type(collector), name) for name in _SHIPPED}  # what ModelOpt installed now
        groups = _groups(name_to_arr, self.threads * _GROUPS_PER_THREAD)
        block = None
        if self.processes and self._shipping(methods, items := _arrays(name_to_arr)):  # listed once per batch
            block, layout = _share(items)
            futures = [self.pool.submit(_remote, methods, _stand_in(collector, names), block.name,
                                        {n: layout[n] for n in names}) for names in groups]
        else:
            futures = [self._thread_pool().submit(_local, methods["collect_value"], _stand_in(collector, names),
                                                  {n: name_to_arr[n] for n in names}) for names in groups]
        self.pending[id(collector)] = (list(name_to_arr), futures, block)
        self.batches += 1

    def _shipping(self, methods: dict, items: dict[str, list[np.ndarray]]) -> bool:
        """Whether this batch can go to the processes; if not, its groups go to threads and `fallback` says why."""
        why = ""
        if not _shippable(methods):
            why = f"{methods['collect_value'].__qualname__} cannot be sent to a process"
        else:
            need, free = 2 * _nbytes(items), _free_shared()  # this block, and another calibration's
            if need > free:
                why = f"{SHARED} has {free / 2**20:.0f} MiB free and a batch needs {need / 2**20:.0f} MiB"
        self.fallback = self.fallback or why
        return not why

    def _thread_pool(self) -> Executor:
        """The pool for groups on threads: the pool itself, or (for processes that cannot take a batch) a
        thread pool made the first time."""
        if not self.processes:
            return self.pool
        if self.threads_pool is None:
            self.threads_pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mvlib-histogram")
        return self.threads_pool


def _shippable(methods: dict) -> bool:
    """Whether a process can receive these functions (module-level ones pickle by name; local ones do not)."""
    try:
        pickle.dumps(methods)
        return True
    except (pickle.PicklingError, AttributeError, TypeError):
        return False


def _release(block, futures) -> None:
    """A batch's shared block freed once no process still reads it."""
    if block is None:
        return
    for future in futures:
        if not future.cancel():
            with contextlib.suppress(Exception):
                future.exception()  # wait: a running group still maps the block
    block.close()
    block.unlink()


def _pool(threads: int, processes: bool) -> Executor:
    """The histogram pool: `threads` threads, or as many spawned processes, each warmed with the imports."""
    if not processes:
        return ThreadPoolExecutor(threads, thread_name_prefix="mvlib-histogram")
    sweep()  # a killed calibration's blocks would hold the memory this one needs
    # spawn: a fresh interpreter (no forked ONNX Runtime threads), which imports ONNX Runtime's and ModelOpt's
    # calibration modules while ModelOpt is still preparing the model
    pool = ProcessPoolExecutor(threads, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_warm, initargs=(_WARM,))
    for _ in range(threads):
        pool.submit(int)  # start the processes now, not at the first batch
    return pool


@contextlib.contextmanager
def parallel_histograms(threads: int | None = None, processes: bool | None = None) -> Iterator[_Parallel | None]:
    """Within: histogram calibrations collect each batch's tensors on `threads` workers (default: every core),
    processes from PROCESSES_FROM on (or as `processes` says), the next model run overlapping; yields the state (its
    `batches` counts the batches so collected), or None where the library's own sequential path runs (one worker,
    or `unsupported()`)."""
    threads = threads or default_threads()
    if threads <= 1 or unsupported():
        yield None
        return
    processes = use_processes(threads) if processes is None else processes
    from onnxruntime.quantization.calibrate import HistogramCollector as HC
    saved = {name: HC.__dict__[name] for name in ("collect", "compute_collection_result", "get_histogram_dict")}
    with _pool(threads, processes) as pool:
        state = _Parallel(pool, threads, processes)

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
            state.release()
            for name, fn in saved.items():
                setattr(HC, name, fn)
