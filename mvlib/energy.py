"""Energy of measurement windows: the GPU board's counter (NVML), the CPU packages' counters (RAPL), or why not.

- GPU: `nvmlDeviceGetTotalEnergyConsumption` (package nvidia-ml-py, module pynvml), the board's energy in mJ
  since the driver loaded; boards before Volta answer NVML_ERROR_NOT_SUPPORTED. The board is the one PyTorch
  uses, matched by UUID (CUDA_VISIBLE_DEVICES renumbers devices; NVML does not).
- CPU: `/sys/class/powercap/intel-rapl:<n>/energy_uj` of every package domain (Intel, and AMD since Zen through
  the same driver), in µJ, wrapping to 0 past `max_energy_range_uj`; the package is the whole socket, so other
  processes' work counts too.

A window reads the counter before and after a measurement; power is joules over the windows' seconds, energy
per image joules over the images the windows processed. Both include the idle draw, which `idle_draw` measures
once. Where no counter can be read the value is a text, "not measured: <why>", never 0 or blank.

Serves: notebook 06 (the energy columns of every benchmark row, the idle draw in the manifest).
"""
import contextlib
import functools
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")
NOT_MEASURED = "not measured: "
COLUMNS = ("power_w", "energy_j_per_image")
IDLE_S = 3.0  # long enough for several updates of either counter


class MeterError(Exception):
    """A counter could not be read; the message says why."""


@dataclass
class NoMeter:
    """No counter on this device, and why."""
    reason: str
    source: str = "none"

    def read(self):
        """Never called: there is nothing to read."""
        raise MeterError(self.reason)


@dataclass
class NvmlMeter:
    """The board energy counter of one NVIDIA GPU (mJ, 64 bits: no wraparound within a lifetime)."""
    handle: object
    source: str

    def read(self) -> int:
        """The counter now, in mJ."""
        import pynvml
        try:
            return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except pynvml.NVMLError as err:
            raise MeterError(nvml_reason(err)) from err

    @staticmethod
    def joules(before: int, after: int) -> float:
        """Energy between two readings."""
        return (after - before) / 1e3


@dataclass
class RaplDomain:
    """One RAPL package domain: its counter file and the value past which the counter wraps to 0."""
    energy_file: Path
    name: str
    max_range_uj: int


@dataclass
class RaplMeter:
    """The package energy counters of every CPU socket (µJ, each wrapping at its max_energy_range_uj)."""
    domains: list[RaplDomain]
    source: str = ""

    def __post_init__(self):
        if not self.source:
            names = ", ".join(d.name for d in self.domains)
            self.source = f"RAPL package energy ({names}; whole sockets, other processes included)"

    def read(self) -> tuple[int, ...]:
        """Each package's counter now, in µJ."""
        try:
            return tuple(int(d.energy_file.read_text()) for d in self.domains)
        except OSError as err:
            raise MeterError(rapl_read_reason(err)) from err

    def joules(self, before: Sequence[int], after: Sequence[int]) -> float:
        """Energy between two readings, summed over packages; a counter that wrapped once is unwrapped."""
        return sum(wrapped_delta(a, b, d.max_range_uj) for a, b, d in zip(before, after, self.domains, strict=True)) \
            / 1e6


def wrapped_delta(before: int, after: int, max_range: int) -> int:
    """after - before for a counter that runs 0..max_range and then starts again at 0 (at most one wrap)."""
    return (after - before) % (max_range + 1)


# --- finding the counters ---------------------------------------------------------------------------------
def nvml_reason(err: Exception) -> str:
    """Why NVML gave no energy, from its error: no library, no driver, an old board, or what NVML said."""
    import pynvml
    code = getattr(err, "value", None)
    known = {
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "no NVIDIA driver here (libnvidia-ml.so.1 not found: no GPU, or a "
                                             "container started without the NVIDIA runtime)",
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA driver is not loaded",
        pynvml.NVML_ERROR_NOT_SUPPORTED: "this board has no total-energy counter (NVML_ERROR_NOT_SUPPORTED: boards "
                                         "before Volta, some virtual GPUs)",
        pynvml.NVML_ERROR_NO_PERMISSION: "NVML refused to read the energy counter (NVML_ERROR_NO_PERMISSION)",
    }
    return f"NVML: {known.get(code, str(err))}"


def normal_uuid(uuid: object) -> str:
    """A GPU UUID as NVML and PyTorch both can be compared by: lower case, no 'GPU-' prefix."""
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    return re.sub(r"^(gpu|mig)-", "", text.strip().lower())


def match_uuid(torch_uuid: object, nvml_uuids: Sequence[object]) -> int | None:
    """Index of the NVML device whose UUID is PyTorch's device's; None when none matches."""
    want = normal_uuid(torch_uuid)
    hits = [i for i, u in enumerate(nvml_uuids) if normal_uuid(u) == want]
    return hits[0] if hits else None


def _torch_uuid() -> str | None:
    """UUID of PyTorch's current CUDA device, where PyTorch has one and reports it."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    except (ImportError, AttributeError, RuntimeError):
        return None


def gpu_meter() -> NvmlMeter | NoMeter:
    """The energy counter of the GPU PyTorch uses, or NoMeter with the reason."""
    try:
        import pynvml
    except ImportError:
        return NoMeter("nvidia-ml-py (module pynvml) is not installed: pip install nvidia-ml-py")
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not handles:
            return NoMeter("NVML sees no GPU")
        uuids = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
        wanted = _torch_uuid()
        index = match_uuid(wanted, uuids) if wanted else None
        if index is None:
            if len(handles) > 1:
                return NoMeter(f"NVML sees {len(handles)} GPUs and none has the UUID PyTorch reports ({wanted})")
            index = 0
        handle = handles[index]
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # boards without the counter refuse here
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
    except pynvml.NVMLError as err:
        return NoMeter(nvml_reason(err))
    return NvmlMeter(handle, f"NVML board energy counter, {name} ({normal_uuid(uuids[index])[:8]})")


def rapl_read_reason(err: OSError) -> str:
    """Why a RAPL counter could not be read."""
    if isinstance(err, PermissionError):
        return (f"RAPL: {err.filename} is readable by root only (Linux restricts it since CVE-2020-8694): run as "
                "root, or make energy_uj readable")
    return f"RAPL: {err.filename or 'a counter'} unreadable ({err.strerror or err})"


def rapl_domains(root: Path = POWERCAP) -> list[RaplDomain]:
    """The package domains under a powercap tree (intel-rapl:<n>; sub-domains and psys left out: no double count)."""
    out = []
    for d in sorted(root.glob("intel-rapl:*")):
        if not re.fullmatch(r"intel-rapl:\d+", d.name) or not (d / "energy_uj").exists():
            continue
        name = (d / "name").read_text().strip() if (d / "name").exists() else d.name
        if name.startswith("package"):
            out.append(RaplDomain(d / "energy_uj", name, int((d / "max_energy_range_uj").read_text())))
    return out


def cpu_meter(root: Path = POWERCAP) -> RaplMeter | NoMeter:
    """The CPU packages' RAPL counters, or NoMeter with the reason."""
    try:
        domains = rapl_domains(root)
    except OSError as err:
        return NoMeter(rapl_read_reason(err))
    if not domains:
        return NoMeter(f"RAPL: no package counters under {root}/intel-rapl:* (a virtual machine, a container "
                       "without the host's powercap, or a CPU without RAPL)")
    meter = RaplMeter(domains)
    try:
        meter.read()
    except MeterError as err:
        return NoMeter(str(err))
    return meter


@functools.cache
def meter(device: str):
    """The counter of a device ('cuda' or 'cpu'), found once per process."""
    if device == "cuda":
        return gpu_meter()
    if device == "cpu":
        return cpu_meter()
    raise ValueError(f"device {device!r}: energy is read for 'cuda' or 'cpu'")


# --- windows ----------------------------------------------------------------------------------------------
@dataclass
class Windows:
    """Energy and time summed over measurement windows read with one meter."""
    meter: object
    joules: float = 0.0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def window(self) -> Iterator[None]:
        """Read the counter around the block (the block's own timing is untouched: reads happen outside it)."""
        if isinstance(self.meter, NoMeter) or self.problems:
            yield
            return
        try:
            before = self.meter.read()
        except MeterError as err:
            self.problems.append(str(err))
            yield
            return
        t0 = time.perf_counter()
        yield
        t1 = time.perf_counter()
        try:
            after = self.meter.read()
        except MeterError as err:
            self.problems.append(str(err))
            return
        self.joules += self.meter.joules(before, after)
        self.seconds += t1 - t0

    def columns(self, images: int) -> dict[str, float | str]:
        """power_w and energy_j_per_image over the windows, or the reason in both."""
        if isinstance(self.meter, NoMeter):
            return dict.fromkeys(COLUMNS, NOT_MEASURED + self.meter.reason)
        if self.problems:
            return dict.fromkeys(COLUMNS, NOT_MEASURED + self.problems[0])
        if self.joules <= 0 or self.seconds <= 0:
            return dict.fromkeys(COLUMNS, NOT_MEASURED + f"the counter did not advance over {self.seconds:.3f} s of "
                                 "windows (it updates less often: lengthen bench_seconds)")
        return {"power_w": self.joules / self.seconds, "energy_j_per_image": self.joules / images}


def idle_draw(seconds: float = IDLE_S, devices: Sequence[str] = ("cuda", "cpu"), meters: dict | None = None) -> dict:
    """Each device's draw while nothing runs (W over `seconds`), its counter and why where none; once per run."""
    meters = meters or {d: meter(d) for d in devices}
    live = {d: m for d, m in meters.items() if not isinstance(m, NoMeter)}
    out = {d: {"source": m.source, "idle_w": NOT_MEASURED + m.reason} for d, m in meters.items() if d not in live}
    if "cuda" in live:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # nothing of ours is running
    windows = {d: Windows(m) for d, m in live.items()}
    with contextlib.ExitStack() as stack:
        for w in windows.values():
            stack.enter_context(w.window())
        if live:
            time.sleep(seconds)
    for d, w in windows.items():
        value = w.columns(1)["power_w"]
        out[d] = {"source": w.meter.source, "idle_w": value, "seconds": round(w.seconds, 3)}
    return {d: out[d] for d in meters}
