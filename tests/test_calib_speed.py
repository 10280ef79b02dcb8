"""mvlib.calib_speed: entropy calibration's histograms on a thread pool give ONNX Runtime's and ModelOpt's very
histograms, thresholds and model files; the library's own path where the patch cannot apply; nothing left patched."""
import contextlib
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


def _collect(batches, threads: int | None, method: str = "entropy") -> tuple[list, dict, int]:
    """A real HistogramCollector fed `batches`, the parallel way (threads) or the library's own (None): the
    histograms in order, the thresholds, and the batches the parallel path collected."""
    col = HistogramCollector(method=method, symmetric=True, num_bins=128, num_quantized_bins=128, percentile=99.99,
                             scenario="same")
    with (calib_speed.parallel_histograms(threads) if threads else contextlib.nullcontext()) as state:
        for batch in batches:
            col.collect(batch)
        result = col.compute_collection_result()
        hists = list(col.get_histogram_dict().items())
    return hists, result, state.batches if state else 0


def _same(a, b) -> bool:
    """Equal to the last bit and the same types, through tuples and dicts of numpy arrays and scalars."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    a_np, b_np = np.asarray(a), np.asarray(b)
    return type(a) is type(b) and a_np.dtype == b_np.dtype and a_np.tobytes() == b_np.tobytes()


@pytest.mark.parametrize("collect_value", ["onnxruntime", "modelopt"])
def test_parallel_histograms_equal_the_librarys_to_the_bit(monkeypatch, collect_value):
    """Every histogram (counts, edges, min, max, threshold, in the collector's order) and every entropy threshold
    is the sequential path's, under ONNX Runtime's collect_value and under the copy ModelOpt installs."""
    if collect_value == "modelopt":
        from modelopt.onnx.quantization import ort_patching
        monkeypatch.setattr(HistogramCollector, "collect_value", ort_patching._collect_value)
    batches = _batches()
    slow, slow_result, none = _collect(batches, None)
    fast, fast_result, collected = _collect(batches, 3)
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


CALIB_N = 12  # enough batches for the histograms to widen, few enough for a quick test


def test_entropy_models_are_byte_identical_both_ways(xxs, tmp_path, monkeypatch):
    """Issue 29: the INT8 and FP8 entropy models of mobilevit_xxs made with the parallel histograms are the files
    of the library's own path (forced here through the fallback), byte for byte, and quant.reusable still
    recognises them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback banner
        calib = data.load(xxs[1], 256, calib_images=CALIB_N, eval_images=1, seed=0, imagenette=False).calib
    states = []
    real = calib_speed.parallel_histograms

    @contextlib.contextmanager
    def spy(threads=None):
        with real(threads) as state:
            states.append(state)
            yield state
    monkeypatch.setattr(calib_speed, "parallel_histograms", spy)
    monkeypatch.setattr(calib_speed, "default_threads", lambda: 3)
    files = {}
    for way in ("slow", "fast"):
        with monkeypatch.context() as m:
            if way == "slow":
                m.setattr(calib_speed, "unsupported", lambda: "forced by the test")
            for prec in quant.PRECISIONS:
                out = tmp_path / f"{way}.{prec}.onnx"
                quant.quantize(xxs[0].onnx, out, calib, "entropy", precision=prec)
                files[way, prec] = out.read_bytes()
                assert quant.reusable(xxs[0].onnx, out, calib, "entropy", prec)
    assert states[:2] == [None, None] and [s.batches for s in states[2:]] == [CALIB_N, CALIB_N]
    assert [p for p in quant.PRECISIONS if files["slow", p] != files["fast", p]] == []


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
