"""mvlib.tiers: the order of the tiers, the tier a machine reaches and why it misses a higher one, on faked machines
(the real one's GPU, nvcc and TensorRT decision replaced). How a run's TensorRT flavour sets the tier is in
tests/tensorrt/test_flavours.py and tests/test_run.py."""
import pytest

from mvlib import env, tiers
from mvlib.tensorrt import flavours

NO_GPU = "PyTorch sees no CUDA device"
NO_RUNTIME = "TensorRT-RTX has no runtime for compute capability 9.0"


@pytest.fixture
def machine(monkeypatch):
    """A machine to fake: machine(gpu, nvcc, runs) sets whether it has a GPU, nvcc and a TensorRT runtime."""
    def fake(gpu: bool, nvcc: bool, runs: bool) -> None:
        monkeypatch.setattr(env, "cuda_status", lambda: (True, "NVIDIA H200") if gpu else (False, NO_GPU))
        monkeypatch.setattr(env, "nvcc_path", lambda: "/usr/local/cuda/bin/nvcc" if nvcc else None)
        monkeypatch.setattr(flavours, "decide", lambda trt_flavour="auto", trt_target="auto": {
            "trt_flavour": "tensorrt_rtx", "trt_target": "sm86", "label": "TensorRT-RTX 1.7.1.116",
            "runs_here": runs, "why": "" if runs else NO_RUNTIME})
        _clear()
    yield fake
    _clear()  # the real machine's answers again


def _clear() -> None:
    """Empty the tier caches, which hold the machine they last saw."""
    for cached in (tiers.detect, tiers.runtime_status):
        cached.cache_clear()


def test_tiers_rank_cpu_below_gpu_below_trt_and_an_unknown_one_names_them():
    assert [tiers.rank(t) for t in ("cpu", "gpu", "trt")] == [0, 1, 2]
    with pytest.raises(ValueError, match="choose one of cpu, gpu, trt"):
        tiers.rank("tpu")


@pytest.mark.parametrize(("gpu", "nvcc", "runs", "tier"), [
    (False, False, False, "cpu"), (False, True, True, "cpu"), (True, False, True, "cpu"),
    (True, True, False, "gpu"), (True, True, True, "trt")])
def test_the_tier_needs_a_gpu_and_nvcc_and_trt_a_runtime_too(machine, gpu, nvcc, runs, tier):
    machine(gpu, nvcc, runs)
    assert tiers.detect() == tier
    assert [tiers.missing_for(t) == "" for t in tiers.TIERS] == [tiers.rank(t) <= tiers.rank(tier)
                                                                 for t in tiers.TIERS]


def test_missing_for_names_every_reason_the_machine_misses_a_tier(machine):
    machine(gpu=False, nvcc=True, runs=False)
    assert tiers.missing_for("gpu") == NO_GPU
    assert tiers.missing_for("trt") == f"no TensorRT runtime for this machine: {NO_RUNTIME}; {NO_GPU}"
    machine(gpu=True, nvcc=False, runs=True)
    assert tiers.missing_for("gpu") == tiers.missing_for("trt") == "nvcc not found"
    machine(gpu=True, nvcc=True, runs=False)
    assert tiers.missing_for("trt") == f"no TensorRT runtime for this machine: {NO_RUNTIME}"
