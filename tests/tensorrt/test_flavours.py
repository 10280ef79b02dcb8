"""Which flavour, which target, does it run here (mvlib.tensorrt.flavours, cudainfo) and the tier built on it.

The installed TensorRT-RTX is real; a second installed flavour and another GPU are given through our own seams
(`flavours.installed`, `flavours.capability_here`, `cudainfo.driver_version`), never a fake TensorRT module.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from mvlib import env, tiers
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cudainfo, flavours

ROOT = Path(__file__).resolve().parents[2]
HAS_BUILDER, BUILDER = flavours.builder_status()
RTX = flavours.Flavour("tensorrt_rtx", "1.7.1.116")
FULL = flavours.Flavour("tensorrt", "10.16.0")


def test_unknown_flavour_names_the_choices():
    with pytest.raises(ValueError, match="tensorrt_rtx"):
        flavours.select("tensorrtx")
    with pytest.raises(ValueError, match="auto, tensorrt or tensorrt_rtx"):
        flavours.decide("tensorrtx")
    with pytest.raises(ValueError, match="sm86"):
        flavours.decide("auto", "ampere")


def test_a_flavour_that_is_not_installed_is_a_skip_with_the_fix():
    for name in flavours.FLAVOUR_NAMES:
        found, why = flavours.installed(name)
        if found is None:
            with pytest.raises(flavours.NoBuilder, match="not installed") as err:
                flavours.select(name)
            assert err.value.no_builder and isinstance(err.value, StageSkipped)


def test_rtx_runs_on_its_support_matrix_not_on_a100_or_hopper():
    """RTX's matrices (1.0-1.5) list 7.5, 8.6, 8.9, 12.0 (1.5: 12.1); not 8.0 and not 9.0."""
    for cap in ("7.5", "8.6", "8.9", "12.0", "12.1"):
        assert RTX.runs_on(cap)[0], cap
    for cap in ("8.0", "9.0", "10.0", "7.0"):
        ok, why = RTX.runs_on(cap)
        assert not ok and cap in why and "8.6" in why
    assert flavours.rtx_matrix("1.0.0") == ("7.5", "8.6", "8.9", "12.0")
    assert not flavours.Flavour("tensorrt_rtx", "1.4.0").runs_on("12.1")[0]
    assert FULL.runs_on("9.0")[0] and FULL.runs_on("7.5")[0] and not FULL.runs_on("7.0")[0]
    assert not RTX.runs_on(None)[0] and "only on an NVIDIA GPU" in RTX.runs_on(None)[1]


def test_flavour_facts_are_decided_in_one_place():
    assert RTX.abi_major == 11 and FULL.abi_major == 10 and flavours.Flavour("tensorrt", "11.1.0").abi_major == 11
    assert not RTX.timing_cache and FULL.timing_cache


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
def test_a_cuda13_wheel_on_a_cuda12_driver_does_not_claim_to_run():
    """The installed wheel's CUDA major against the driver's, with the fix named."""
    fl = flavours.select()
    dist, major = fl.wheel()
    assert dist.endswith(f"-cu{major}")
    ok, why = fl.runs_on("8.6", driver=(major - 1) * 1000 + 20)  # R535: CUDA 12.2 under a cu13 wheel
    assert not ok and dist in why and "make env" in why and f"rtx-cu{major - 1}" in why
    assert fl.runs_on("8.6", driver=major * 1000)[0] and fl.runs_on("8.6", driver=None)[0]


def test_the_wheel_follows_the_driver():
    """CuDriverGetVersion's number (or nvidia-smi's banner) chooses the extra."""
    assert cudainfo.extra_for(12020) == "rtx-cu12" and cudainfo.extra_for(12080) == "rtx-cu12"
    assert cudainfo.extra_for(13000) == "rtx-cu13" and cudainfo.extra_for(None) == "rtx-cu13"
    assert cudainfo.extra_for(14010) == "rtx-cu13" and cudainfo.extra_for(11080) == "rtx-cu12"
    assert cudainfo.extra_for(12020, "trt") == "trt-cu12" and cudainfo.extra_for(13000, "trt") == "trt-cu13"
    with pytest.raises(ValueError, match="'rtx'.*'trt'"):
        cudainfo.extra_for(13000, "tensorrt")
    banner = "| NVIDIA-SMI 535.183.01   Driver Version: 535.183.01   CUDA Version: 12.2     |"
    assert cudainfo.parse_nvidia_smi(banner) == 12020 and cudainfo.parse_nvidia_smi("no banner") is None
    version, how = cudainfo.driver_version()  # this machine: none, and every way it tried
    if version is None:
        assert "libcuda.so.1" in how and "nvidia-smi" in how


def test_the_makefile_installs_the_extra_the_driver_asks_for():
    """`make env` runs the stdlib-only script with the bare interpreter, and the extra exists."""
    out = subprocess.run([sys.executable, "-I", str(ROOT / "mvlib/tensorrt/cudainfo.py"), "extra"],
                         capture_output=True, text=True, check=True).stdout.strip()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert out in ("rtx-cu12", "rtx-cu13") and out in extras
    assert any(r.startswith("cuda-python") for r in extras[out])
    for cu in (12, 13):
        assert f"tensorrt-rtx-cu{cu}==" in " ".join(extras[f"rtx-cu{cu}"])
    make = (ROOT / "Makefile").read_text()
    assert "mvlib/tensorrt/cudainfo.py extra" in make and '".[rtx]"' not in make
    full = subprocess.run([sys.executable, "-I", str(ROOT / "mvlib/tensorrt/cudainfo.py"), "extra", "trt"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert full in ("trt-cu12", "trt-cu13") and full in extras
    assert "mvlib/tensorrt/cudainfo.py extra trt" in make and '".[trt]"' not in make
    bad = subprocess.run([sys.executable, "-I", str(ROOT / "mvlib/tensorrt/cudainfo.py"), "extra", "cu13"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr and not bad.stdout


def test_full_tensorrt_is_pinned_to_the_majors_it_was_checked_against():
    """`tensorrt>=10` would install any future major, and the bare `tensorrt` package the CUDA 13 build whatever
    the driver: one extra per CUDA major, each its major's wheel and cuda-python."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "trt" not in extras
    for cu in (12, 13):
        spec = next(r for r in extras[f"trt-cu{cu}"] if re.match(r"tensorrt\b", r))
        assert spec.startswith(f"tensorrt-cu{cu}>=10.13") and re.search(r"<\s*12\b", spec), spec
        cuda = next(r for r in extras[f"trt-cu{cu}"] if r.startswith("cuda-python"))
        assert f"<{cu + 1}" in cuda, cuda


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
def test_decide_gives_the_concrete_flavour_and_target():
    d = flavours.decide()
    assert set(d) == {"trt_flavour", "trt_target", "label", "runs_here", "why"}
    assert d["trt_flavour"] in flavours.FLAVOUR_NAMES and d["label"] == flavours.select(d["trt_flavour"]).label
    if not env.cuda_status()[0]:
        assert d["trt_target"] == flavours.DEFAULT_TARGET and not d["runs_here"] and "NVIDIA GPU" in d["why"]
    assert flavours.decide(d["trt_flavour"], d["trt_target"])["trt_target"] == d["trt_target"]
    with pytest.raises(ValueError, match="sm86"):
        flavours.decide("tensorrt_rtx", "sm90")  # RTX has no Hopper target


@pytest.fixture
def h200_with_both(monkeypatch):
    """An H200 (9.0, CUDA 13 driver) that has full TensorRT 10.16 besides the installed TensorRT-RTX."""
    if flavours.installed("tensorrt_rtx")[0] is None:
        pytest.skip("needs the installed TensorRT-RTX")
    real = flavours.installed.__wrapped__
    monkeypatch.setattr(flavours, "installed", lambda name: (FULL, "") if name == "tensorrt" else real(name))
    monkeypatch.setattr(flavours, "capability_here", lambda: "9.0")
    monkeypatch.setattr(cudainfo, "driver_version", lambda: (13000, "test"))
    monkeypatch.setattr(env, "cuda_status", lambda: (True, "NVIDIA H200"))
    monkeypatch.setattr(env, "nvcc_path", lambda: "/usr/local/cuda/bin/nvcc")
    for fn in (tiers.runtime_status, tiers.detect):
        fn.cache_clear()
    yield
    for fn in (tiers.runtime_status, tiers.detect):
        fn.cache_clear()


def test_the_tier_follows_the_runs_flavour_not_any_installed_one(h200_with_both):
    """Trt_flavour=tensorrt_rtx on an H200 with full TensorRT too is tier gpu (RTX refuses 9.0)."""
    rtx = flavours.decide("tensorrt_rtx")
    assert rtx["trt_flavour"] == "tensorrt_rtx" and not rtx["runs_here"] and "9.0" in rtx["why"]
    assert tiers.runtime_status("tensorrt_rtx") == (False, "no TensorRT runtime for this machine: " + rtx["why"])
    assert tiers.detect("tensorrt_rtx") == "gpu" and "9.0" in tiers.missing_for("trt", "tensorrt_rtx")
    auto = flavours.decide()
    assert auto["trt_flavour"] == "tensorrt" and auto["runs_here"] and auto["trt_target"] == "sm90"
    assert tiers.detect("auto") == "trt" and tiers.detect("tensorrt") == "trt"


def test_auto_prefers_a_flavour_that_runs_here(monkeypatch):
    """An RTX GPU (8.9) with only TensorRT-RTX: auto builds for this GPU, and a plan for sm86 would not run."""
    if flavours.installed("tensorrt_rtx")[0] is None:
        pytest.skip("needs the installed TensorRT-RTX")
    monkeypatch.setattr(flavours, "capability_here", lambda: "8.9")
    monkeypatch.setattr(cudainfo, "driver_version", lambda: (13000, "test"))
    d = flavours.decide("tensorrt_rtx")
    assert d["trt_target"] == "sm89" and d["runs_here"] and d["why"] == ""
    other = flavours.decide("tensorrt_rtx", "sm86")
    assert not other["runs_here"] and "sm86" in other["why"] and "sm89" in other["why"]


def test_full_tensorrt_on_an_old_driver_names_its_own_cuda12_wheel(monkeypatch):
    """The bare `tensorrt` package installs the CUDA 13 variant (TensorRT 11.4 pip install guide); on an R535-R570
    driver the fix is TensorRT's CUDA 12 wheel, not a TensorRT-RTX extra."""
    monkeypatch.setattr(flavours.Flavour, "wheel", lambda self: ("tensorrt-cu13", 13))
    ok, why = FULL.runs_on("8.6", driver=12020)
    assert not ok and "tensorrt-cu12" in why and "rtx" not in why and "R580" in why
    ok, why = RTX.runs_on("8.6", driver=12020)
    assert not ok and "[rtx-cu12]" in why


def test_a_cuda12_wheel_needs_r535_not_r525(monkeypatch):
    """TensorRT's prerequisites: CUDA 12 wheels need R535 (CUDA 12.2); an R525 driver (CUDA 12.0) is refused with
    the driver to install, and R535 runs."""
    monkeypatch.setattr(flavours.Flavour, "wheel", lambda self: ("tensorrt-rtx-cu12", 12))
    ok, why = RTX.runs_on("8.6", driver=12000)
    assert not ok and "R535" in why and "CUDA 12.0" in why and "R525" not in why
    assert RTX.runs_on("8.6", driver=12020) == (True, "")
    assert flavours.MIN_DRIVER[12] == (12020, 535) and flavours.MIN_DRIVER[13] == (13000, 580)
