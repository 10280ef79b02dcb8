"""Energy per window: RAPL counters read from a powercap tree laid out as Linux does (wraparound included), NVML's
real answer on this machine, the reasons where no counter exists, and the benchmark rows' energy columns."""
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mvlib import bench, energy

# A two-socket Xeon as Linux shows it: package domains with core/dram sub-domains, a psys domain and the MMIO
# duplicate of package 0. Counter values and the wrap range are those such a machine reports.
MAX_RANGE = 262143328850
TREE = {
    "intel-rapl:0": ("package-0", 123456789012),
    "intel-rapl:0:0": ("core", 98765432109),
    "intel-rapl:0:1": ("dram", 5432109876),
    "intel-rapl:1": ("package-1", 262143000000),
    "intel-rapl:1:0": ("core", 11111111111),
    "intel-rapl:2": ("psys", 77777777777),
    "intel-rapl-mmio:0": ("package-0", 123456000000),
}


def powercap(root: Path, tree: dict = TREE) -> Path:
    """Lay out a powercap tree: each domain's name, energy_uj and max_energy_range_uj."""
    for folder, (name, value) in tree.items():
        d = root / folder
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{value}\n")
        (d / "max_energy_range_uj").write_text(f"{MAX_RANGE}\n")
    return root


def add_uj(root: Path, folder: str, uj: int) -> None:
    """Advance one counter by `uj`, wrapping past max_energy_range_uj as the kernel does."""
    f = root / folder / "energy_uj"
    # A sysfs read never sees a half-written value; write_text truncates first, so a reader in another thread could
    # read '' (it did, on CI). Replace the file whole instead, the way the kernel presents it.
    tmp = f.with_name(f.name + ".new")
    tmp.write_text(f"{(int(f.read_text()) + uj) % (MAX_RANGE + 1)}\n")
    os.replace(tmp, f)


def test_rapl_sums_package_domains_only(tmp_path):
    root = powercap(tmp_path)
    meter = energy.cpu_meter(root)
    assert isinstance(meter, energy.RaplMeter)
    assert [d.name for d in meter.domains] == ["package-0", "package-1"]  # no core/dram/psys/mmio: no double count
    assert meter.read() == (123456789012, 262143000000)
    assert "package-0, package-1" in meter.source and "other processes" in meter.source


def test_rapl_unwraps_a_counter_that_passed_its_range(tmp_path):
    root = powercap(tmp_path)
    meter = energy.cpu_meter(root)
    before = meter.read()
    add_uj(root, "intel-rapl:0", 2_000_000)      # 2 J on socket 0
    add_uj(root, "intel-rapl:1", 500_000_000)    # 500 J on socket 1: 262143000000 + 5e8 wraps past the range
    after = meter.read()
    assert after[1] < before[1]  # the raw counter went down
    assert meter.joules(before, after) == pytest.approx(502.0, abs=1e-5)
    assert energy.wrapped_delta(10, 5, 20) == 16  # 10 -> 20, then 0 -> 5
    assert energy.wrapped_delta(5, 10, 20) == 5


def test_no_rapl_says_why(tmp_path):
    m = energy.cpu_meter(tmp_path / "powercap")  # no such tree: a VM or a container
    assert isinstance(m, energy.NoMeter) and "no package counters" in m.reason and "intel-rapl" in m.reason
    reason = energy.rapl_read_reason(PermissionError(13, "Permission denied", "/sys/class/powercap/intel-rapl:0/"
                                                     "energy_uj"))
    assert "root" in reason and "intel-rapl:0/energy_uj" in reason  # what Linux >= 5.10 does for non-root users


def test_windows_measure_what_happens_inside_them(tmp_path):
    root = powercap(tmp_path)
    windows = energy.Windows(energy.cpu_meter(root))
    for _ in range(3):
        with windows.window():
            time.sleep(0.02)
            add_uj(root, "intel-rapl:0", 1_500_000)  # 1.5 J per window
        add_uj(root, "intel-rapl:0", 9_000_000)      # between windows: not counted
    assert windows.joules == pytest.approx(4.5)
    assert 0.06 <= windows.seconds < 1.0
    cols = windows.columns(images=90)
    assert cols["energy_j_per_image"] == pytest.approx(0.05)
    assert cols["power_w"] == pytest.approx(4.5 / windows.seconds)


def test_missing_or_silent_counters_give_reasons_never_zero(tmp_path):
    cols = energy.Windows(energy.NoMeter("RAPL: nothing here")).columns(10)
    assert cols == dict.fromkeys(energy.COLUMNS, "not measured: RAPL: nothing here")
    silent = energy.Windows(energy.cpu_meter(powercap(tmp_path)))
    with silent.window():
        pass  # the counter did not move: its update interval is longer than the window
    for value in silent.columns(10).values():
        assert isinstance(value, str) and value.startswith("not measured:") and "did not advance" in value


def test_a_counter_that_vanishes_mid_run_is_reported(tmp_path):
    root = powercap(tmp_path)
    windows = energy.Windows(energy.cpu_meter(root))
    with windows.window():
        (root / "intel-rapl:1" / "energy_uj").unlink()
    assert windows.columns(4)["power_w"].startswith("not measured: RAPL:")


def test_idle_draw_of_a_counter_advancing_in_the_background(tmp_path):
    root = powercap(tmp_path)
    stop = threading.Event()

    def kernel_updates(watts=15.0, every=0.01):  # the kernel advances the counter ~every 1 ms; coarser here
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(every)
            now = time.perf_counter()
            add_uj(root, "intel-rapl:0", int(watts * (now - last) * 1e6))
            last = now

    t = threading.Thread(target=kernel_updates)
    t.start()
    try:
        idle = energy.idle_draw(0.5, meters={"cpu": energy.cpu_meter(root),
                                             "cuda": energy.NoMeter("NVML: no NVIDIA driver here")})
    finally:
        stop.set()
        t.join()
    assert idle["cpu"]["idle_w"] == pytest.approx(15.0, rel=0.15)
    assert idle["cuda"] == {"source": "none", "idle_w": "not measured: NVML: no NVIDIA driver here"}


def test_nvml_on_this_machine():
    """No NVIDIA driver here: NVML's real error becomes the reason; on a GPU machine, a meter that counts."""
    m = energy.gpu_meter()
    if isinstance(m, energy.NvmlMeter):  # a GPU machine: the counter reads and moves forward
        a = m.read()
        time.sleep(0.3)
        assert m.read() >= a
        return
    import pynvml
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        assert m.reason == energy.nvml_reason(err)
    assert m.reason.startswith("NVML: ")


def test_nvml_reasons_name_the_cause():
    import pynvml
    old = energy.nvml_reason(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED))
    assert "NOT_SUPPORTED" in old and "before Volta" in old
    assert "libnvidia-ml" in energy.nvml_reason(pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert energy.nvml_reason(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)).startswith("NVML: ")


def test_the_board_pytorch_uses_is_found_by_uuid():
    # PyTorch prints a device UUID bare; NVML prefixes it with GPU- (MIG-) and may differ in case.
    nvml = [b"GPU-0a1b2c3d-0000-1111-2222-333344445555", "GPU-5D1C0C1E-9F8E-7D6C-5B4A-392817060504"]
    assert energy.match_uuid("5d1c0c1e-9f8e-7d6c-5b4a-392817060504", nvml) == 1
    assert energy.match_uuid("0a1b2c3d-0000-1111-2222-333344445555", nvml) == 0
    assert energy.match_uuid("ffffffff-0000-1111-2222-333344445555", nvml) is None


def test_benchmark_rows_carry_the_energy_of_their_timed_launches_only(tmp_path):
    root = powercap(tmp_path)
    meter = energy.cpu_meter(root)

    def prepare(batch):
        def launch():
            time.sleep(0.001)
            add_uj(root, "intel-rapl:1", 400_000)  # each launch costs 0.4 J on socket 1
        return launch

    backend = bench.Backend("fake", "cpu", "fp32", "fake", prepare, "perf_counter around each call")
    s = bench.Settings(seconds=0.03, repeats=2, warmup_s=0.02)
    row = bench.measure(backend, 4, s, meter=meter)
    assert row["energy_j_per_image"] == pytest.approx(0.1)  # 0.4 J / 4 images: warm-up launches are not counted
    assert row["power_w"] == pytest.approx(0.4 * row["iterations"] / row["wall_s"], rel=0.2)
    assert row["prime_s"] >= 0.001


def test_benchmark_rows_without_a_counter_say_why(xxs):
    exported, _ = xxs
    s = bench.Settings(seconds=0.02, repeats=2, warmup_s=0.0)
    df = bench.measure_all(bench.onnxruntime_cpu, [1], s, exported.onnx, "fp32")
    meter = energy.meter("cpu")
    value = df.power_w.iloc[0]
    if isinstance(meter, energy.NoMeter):
        assert value == df.energy_j_per_image.iloc[0] == "not measured: " + meter.reason
    else:  # a host that exposes RAPL to this user
        assert np.isfinite(value) and value > 0
