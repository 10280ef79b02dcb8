"""The driver in the test's own process, with papermill's execution replaced (a seam of ours, not TensorRT's).

Each fake notebook opens its Run as the real ones do, records the weights it would load, and may copy tables
into its run or fail; the driver around it (validation, folders, decisions, manifest, comparison, publish) is real.
"""
import os
import subprocess
import time
from pathlib import Path

import papermill

from mvlib import io, model, study
from mvlib.run import Run


def fake_notebooks(monkeypatch, fail: str = "", tables: dict | None = None, interrupt: str = "", hang: str = "",
                   ready: Path | None = None, fill: str = "", work: dict | None = None) -> dict:
    """Replace notebook execution; the parameters each notebook got, by notebook stem.

    `fail`: the stem of a notebook that fails in a cell; `interrupt`: one where the user presses Ctrl-C;
    `tables`: {stem: [csv paths]} a notebook writes into its run's results (copies, e.g. of the committed tables);
    `hang`: one that starts a child in a process group of its own (as a kernel and its engine build are), writes
    the child's PID into `ready` and waits; `fill`: one that fills the disk holding its run to the last byte;
    `work`: {stem: seconds} a stage of the notebook sleeps.
    """
    got = {}

    def execute(nb, out, parameters, **kw):
        stem = Path(nb).stem
        got[stem] = dict(parameters) | {"MVLIB_PROGRESS": os.environ.get("MVLIB_PROGRESS")}
        run = Run(parameters["run_dir"], stem, params=dict(parameters))
        run.set("weights", model.random_info(parameters["seed"]) if parameters["weights"] == "random" else
                {"source": parameters["weights"]})
        for src in (tables or {}).get(stem, []):
            io.write_bytes(run.table(Path(src).name), Path(src).read_bytes())
        if stem in (work or {}):
            run.stage("work", "cpu", time.sleep, work[stem])
        if stem == fill:
            fill_disk(run.dir / "ballast")
        if stem == hang:
            hold_like_a_kernel(ready)
        if stem == interrupt:
            raise KeyboardInterrupt
        if stem == fail:
            raise papermill.PapermillExecutionError(3, 3, "x = 1 / 0", "ZeroDivisionError", "division by zero", [])
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(study, "expose_tensorrt_libraries", lambda decision: None)  # keep this process's environment
    monkeypatch.setenv("MVLIB_PROGRESS", "")
    monkeypatch.delenv("MVLIB_PROGRESS")
    # no notebook runs, so no child compiles or calibrates ahead of one (a faked GPU would start them for real), and
    # no kernel warms up for one
    monkeypatch.setenv("MVLIB_COMPILE_AHEAD", "0")
    monkeypatch.setenv("MVLIB_CALIBRATE_AHEAD", "0")
    monkeypatch.setenv("MVLIB_WARM_KERNELS", "0")
    return got


RTX_REFUSES = "TensorRT-RTX 1.7.1.116 runs on compute capability 7.5, 8.6, 8.9, 12.0, 12.1; this GPU has 9.0"


def fake_h100_with_both_flavours(monkeypatch) -> None:
    """An H100 with PyTorch CUDA and nvcc where full TensorRT runs engines and TensorRT-RTX only builds them (what
    flavours.decide answers there); the tier caches are emptied before and after (call tiers' cache_clear)."""
    from mvlib import env, tiers
    from mvlib.tensorrt import flavours

    def decide(trt_flavour="auto", trt_target="auto"):
        if trt_flavour == "tensorrt_rtx":
            return {"trt_flavour": "tensorrt_rtx", "trt_target": "sm86", "label": "TensorRT-RTX 1.7.1.116",
                    "runs_here": False, "why": RTX_REFUSES}
        return {"trt_flavour": "tensorrt", "trt_target": "sm90", "label": "TensorRT 10.13", "runs_here": True,
                "why": ""}
    monkeypatch.setattr(flavours, "decide", decide)
    monkeypatch.setattr(env, "cuda_status", lambda: (True, "NVIDIA H100 80GB HBM3"))
    monkeypatch.setattr(env, "nvcc_path", lambda: "/usr/local/cuda/bin/nvcc")
    monkeypatch.setattr(env, "gpu_info", lambda: {"gpu": "NVIDIA H100 80GB HBM3", "driver": "580.95",
                                                  "cuda": "13.0", "capability": "9.0"})
    for cached in (tiers.detect, tiers.runtime_status):
        cached.cache_clear()


def fill_disk(path: Path) -> None:
    """Write `path` until the disk that holds it refuses another byte."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                continue


def hold_like_a_kernel(ready: Path) -> None:
    """Start a child leading its own process group, registered as a kernel of the run (what mvlib.driver.kernels
    ends on an interruption), say its PID in `ready`, and wait."""
    from types import SimpleNamespace

    from mvlib.driver import kernels
    child = subprocess.Popen(["sleep", "600"], start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # as a kernel: its output goes to its log, not the driver's
    kernels._KERNELS.append(SimpleNamespace(provisioner=SimpleNamespace(process=child)))
    Path(ready).write_text(str(child.pid))
    time.sleep(600)
