"""mvlib.calib_speed: entropy calibration's histograms on a thread pool give ONNX Runtime's and ModelOpt's very
histograms, thresholds and model files, on threads and on processes; the library's own path where the patch
cannot apply; nothing left patched or left in shared memory."""
import contextlib
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from onnxruntime.quantization.calibrate import HistogramCollector

from mvlib import calib_speed, data, quant

PATCHED = ("collect", "compute_collection_result", "get_histogram_dict")


def _batches(seed: int = 0, n: int = 6) -> list[dict]:
    """Activation batches as the calibrator hands them over (name -> [array]), of varied sizes, growing in range
    from batch to batch (so the histograms widen, merge_histogram's hardest case), one tensor all zeros."""
    rng = np.random.default_rng(seed)
    shapes = {f"t{i}": (1, 8 * (1 + i % 5), 16 + 7 * i, 16) for i in range(12)}
    return [{name: [(rng.standard_normal(shape) * (1 + b) ** 0.5 * (name != "t3")).astype(np.float32)]
             for name, shape in shapes.items()} for b in range(n)]


def _collect(batches, threads: int | None, method: str = "entropy", processes: bool = False,
             why: bool = False) -> tuple:
    """A real HistogramCollector fed `batches`, the parallel way (threads workers, processes or threads) or the
    library's own (None): the histograms in order, the thresholds, the batches the parallel path collected (and
    with `why`, why batches went to threads instead of processes)."""
    col = HistogramCollector(method=method, symmetric=True, num_bins=128, num_quantized_bins=128, percentile=99.99,
                             scenario="same")
    with (calib_speed.parallel_histograms(threads, processes) if threads else contextlib.nullcontext()) as state:
        for batch in batches:
            col.collect(batch)
        result = col.compute_collection_result()
        hists = list(col.get_histogram_dict().items())
    out = hists, result, state.batches if state else 0
    return (*out, state.fallback) if why else out


def _same(a, b) -> bool:
    """Equal to the last bit and the same types, through tuples and dicts of numpy arrays and scalars."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    a_np, b_np = np.asarray(a), np.asarray(b)
    return type(a) is type(b) and a_np.dtype == b_np.dtype and a_np.tobytes() == b_np.tobytes()


@pytest.fixture
def light_workers(monkeypatch):
    """Histogram processes that import only what their work unpickles (not ModelOpt, unless the test installs
    its collect_value): a test's pool starts in about a second."""
    monkeypatch.setattr(calib_speed, "_WARM", ())


def _segments() -> set[str]:
    """The shared-memory blocks this machine holds now."""
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


# ModelOpt's collect_value on processes: test_entropy_models_are_byte_identical_every_way, through quant.quantize
@pytest.mark.parametrize(("collect_value", "processes"), [("onnxruntime", False), ("modelopt", False),
                                                          ("onnxruntime", True)])
def test_parallel_histograms_equal_the_librarys_to_the_bit(monkeypatch, light_workers, collect_value, processes):
    """Every histogram (counts, edges, min, max, threshold, in the collector's order) and every entropy threshold
    is the sequential path's, under ONNX Runtime's collect_value and under the copy ModelOpt installs, on threads
    and on processes (which leave no shared block behind)."""
    if collect_value == "modelopt":
        from modelopt.onnx.quantization import ort_patching
        monkeypatch.setattr(HistogramCollector, "collect_value", ort_patching._collect_value)
    batches = _batches()
    slow, slow_result, none = _collect(batches, None)
    before = _segments()
    fast, fast_result, collected = _collect(batches, 3, processes=processes)
    assert _segments() <= before
    assert none == 0 and collected == len(batches)
    assert max(len(h[0]) for _, h in slow) > 128  # the histograms did widen
    assert _same(slow, fast) and _same(slow_result, fast_result)


def test_other_methods_keep_the_librarys_collect():
    """Percentile (collect_absolute_value) is not taken over: the same histograms, no batch collected in parallel."""
    batches = _batches(n=3)
    slow, _, _ = _collect(batches, None, "percentile")
    fast, _, collected = _collect(batches, 3, "percentile")
    assert collected == 0 and _same(slow, fast)


def test_the_class_is_restored_after_the_block_even_on_an_error():
    """Nothing stays patched: HistogramCollector's methods are the library's again after the block, error or not."""
    before = {name: HistogramCollector.__dict__[name] for name in PATCHED}
    with pytest.raises(ValueError, match="boom"), calib_speed.parallel_histograms(2):
        assert all(HistogramCollector.__dict__[n] is not before[n] for n in PATCHED)
        raise ValueError("boom")
    assert {name: HistogramCollector.__dict__[name] for name in PATCHED} == before


def test_an_error_in_a_histogram_thread_reaches_the_caller(monkeypatch):
    """A tensor whose histogram fails raises in the calibration, as it would on the sequential path."""
    def broken(self, name_to_arr):
        raise FloatingPointError("no histogram")
    monkeypatch.setattr(HistogramCollector, "collect_value", broken)
    with pytest.raises(FloatingPointError, match="no histogram"):
        _collect(_batches(n=2), 2)


def test_an_error_in_a_histogram_process_reaches_the_caller_and_frees_the_block(light_workers):
    """In a process too: the installed collect_value (ONNX Runtime's or ModelOpt's) meets a tensor of text in the
    worker; the caller gets that error and no shared block stays behind."""
    batches = _batches(n=2)
    batches[1]["t5"] = [np.array(["no", "numbers", "here"])]
    before = _segments()
    with pytest.raises(TypeError):
        _collect(batches, 2, processes=True)
    assert _segments() <= before


def test_a_local_collect_value_goes_to_threads_instead_of_processes(monkeypatch, light_workers):
    """A collect_value no process can import (a local function) still runs in parallel, on threads, said once."""
    calls = []
    original = HistogramCollector.collect_value

    def local(self, name_to_arr):
        calls.append(len(name_to_arr))
        return original(self, name_to_arr)
    monkeypatch.setattr(HistogramCollector, "collect_value", local)
    slow, _, _ = _collect(_batches(n=2), None)
    fast, _, collected, why = _collect(_batches(n=2), 2, processes=True, why=True)
    assert collected == 2 and sum(calls) == 4 * 12 and _same(slow, fast) and "cannot be sent to a process" in why


def test_a_batch_larger_than_the_shared_memory_goes_to_threads(monkeypatch, light_workers):
    """Where /dev/shm cannot hold two batches (a container's 64 MiB) nothing is written there (SIGBUS): the
    groups go to threads, the histograms are the same, and the line says why."""
    monkeypatch.setattr(calib_speed, "_free_shared", lambda: 2**20)
    batches = _batches(n=3)
    slow, _, _ = _collect(batches, None)
    before = _segments()
    fast, _, collected, why = _collect(batches, 2, processes=True, why=True)
    assert collected == 3 and _same(slow, fast) and _segments() <= before
    assert why.startswith("/dev/shm has 1 MiB free and a batch needs")


def test_processes_from_four_workers(light_workers):
    """Below PROCESSES_FROM workers the pool is threads (a process's start is not repaid), from it processes,
    unless MVLIB_HISTOGRAM_PROCESSES=0."""
    for threads, processes in ((2, False), (calib_speed.PROCESSES_FROM, True)):
        with calib_speed.parallel_histograms(threads) as state:
            assert state.processes is processes
    assert not calib_speed.use_processes(16, {"MVLIB_HISTOGRAM_PROCESSES": "0"})
    assert calib_speed.use_processes(16, {"MVLIB_HISTOGRAM_PROCESSES": "1"}) and calib_speed.use_processes(16, {})


def test_a_collector_without_a_needed_member_takes_the_librarys_path(monkeypatch):
    """The feature check names what is missing, and the block then patches nothing (the slow path runs)."""
    assert calib_speed.unsupported() == ""
    monkeypatch.delattr(HistogramCollector, "get_histogram_dict")
    assert "get_histogram_dict" in calib_speed.unsupported()
    with calib_speed.parallel_histograms(4) as state:
        assert state is None and "get_histogram_dict" not in HistogramCollector.__dict__


def test_one_thread_is_the_librarys_path():
    """One thread (a one-core process) patches nothing."""
    before = HistogramCollector.__dict__["collect"]
    with calib_speed.parallel_histograms(1) as state:
        assert state is None and HistogramCollector.__dict__["collect"] is before


CALIB_N = 6  # enough batches for the histograms to widen (the unit tests check widening), few for a quick test


def test_entropy_models_are_byte_identical_every_way(xxs, tmp_path, monkeypatch):
    """Issue 29: the INT8 and FP8 entropy models of mobilevit_xxs made with the histograms on threads, and the
    INT8 one on processes, are the files of the library's own path (forced here through the fallback), byte for
    byte, and quant.reusable still recognises them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback banner
        calib = data.load(xxs[1], 256, calib_images=CALIB_N, eval_images=1, seed=0, imagenette=False).calib
    states = []
    real = calib_speed.parallel_histograms

    @contextlib.contextmanager
    def spy(threads=None, processes=None):
        with real(threads, processes) as state:
            states.append(state)
            yield state
    monkeypatch.setattr(calib_speed, "parallel_histograms", spy)
    files = {}
    # (workers, PROCESSES_FROM, precisions): FP8's entropy is INT8's calibration converted, one collector, so the
    # processes (whose pool start costs seconds here) are shown on INT8
    ways = {"slow": (3, 99, quant.PRECISIONS), "threads": (3, 99, quant.PRECISIONS), "processes": (2, 2, ("int8",))}
    for way, (workers, processes_from, precisions_) in ways.items():
        with monkeypatch.context() as m:
            m.setattr(calib_speed, "default_threads", lambda w=workers: w)
            m.setattr(calib_speed, "PROCESSES_FROM", processes_from)
            if way == "slow":
                m.setattr(calib_speed, "unsupported", lambda: "forced by the test")
            for prec in precisions_:
                out = tmp_path / f"{way}.{prec}.onnx"
                quant.quantize(xxs[0].onnx, out, calib, "entropy", precision=prec)
                files[way, prec] = out.read_bytes()
                assert quant.reusable(xxs[0].onnx, out, calib, "entropy", prec)
    assert states[:2] == [None, None] and [s.batches for s in states[2:]] == [CALIB_N] * 3
    assert [s.processes for s in states[2:]] == [False, False, True] and not states[-1].fallback
    assert [key for key in files if files[key] != files["slow", key[1]]] == []


def test_calibrate_all_gives_the_entropy_calibrations_the_cores_for_histograms(xxs, tmp_path, monkeypatch):
    """On 16 cores the two entropy calibrations (INT8, FP8) make their histograms on 8 threads each, while ONNX
    Runtime's threads stay split over the four processes; the max ones make no histograms."""
    from mvlib.export import Exported
    (tmp_path / "model.onnx").write_bytes(xxs[0].onnx.read_bytes())
    exp = Exported(tmp_path, tmp_path / "model.onnx", {"tag": "t"}, {})
    calls = []
    monkeypatch.setattr(quant.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(quant, "_calibrate", lambda *args: calls.append(args) or 0.0)
    made = quant.calibrate_all(exp, np.zeros((2, 3, 256, 256), np.float32), workers=1)  # in this process: seen
    assert set(made.status) == {"made"}
    assert {(c[3], c[-1]) for c in calls} == {("entropy", 8), ("max", 1)}  # 16 cores // 2 entropy calibrations


def test_sweep_removes_only_the_blocks_of_processes_that_no_longer_run(tmp_path):
    """A killed calibration's blocks (its pid gone, or a zombie not yet reaped) go; a running process's, and
    anything not named by this module, stay."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not waited for: a zombie
    for _ in range(100):
        if calib_speed._alive(zombie.pid) is False:
            break
        time.sleep(0.05)
    names = {f"{calib_speed.BLOCK_PREFIX}{done.pid}-0": False, f"{calib_speed.BLOCK_PREFIX}{zombie.pid}-3": False,
             f"{calib_speed.BLOCK_PREFIX}{os.getpid()}-1": True, "psm_other": True, "mvlib-histograms-x-1": True}
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    gone = calib_speed.sweep(str(tmp_path))
    zombie.wait()
    assert sorted(gone) == sorted(n for n, stays in names.items() if not stays)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, stays in names.items() if stays)


def test_an_interrupted_calibrations_blocks_are_swept_by_the_driver(tmp_path, monkeypatch):
    """The driver's stop of a child it had to kill sweeps /dev/shm: a block named after the killed child goes."""
    from mvlib.driver import ahead
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    (tmp_path / f"{calib_speed.BLOCK_PREFIX}{proc.pid}-0").write_bytes(b"x")
    monkeypatch.setattr(calib_speed, "SHARED", str(tmp_path))
    child = ahead.Child.__new__(ahead.Child)
    child.procs = [proc]
    child.stop()
    assert proc.returncode is not None and list(tmp_path.iterdir()) == []
