"""Compiling ahead: the torch.compile configurations that notebooks 05 and 06 time, compiled in a child process
while the notebooks before them run (02-04 export, check accuracy and calibrate: nothing there is timed), so the
timed rows find Inductor's on-disk caches warm and compile nothing they have not compiled already.

Why: on an H100 the full profile's cold compiles took about 265 s of notebook 06 (three configurations x four
batches, about 21 s each) and 04 about 325 s of CPU work in which the GPU sits idle. The child compiles exactly
what the rows compile (the same factory, model, kwargs, batch), so the rows' kernels and numbers are the same;
only where the compile time is spent moves. The child runs at a lower priority (`nice`), and the driver waits
for it before the first notebook that times anything, so no timed window shares the machine with it. A
configuration the child cannot compile (no FP8 GPU, a cache that will not hit) costs only the child's time: the
row compiles as before. `MVLIB_COMPILE_AHEAD=0` turns it off.

Serves: the driver (kernels.execute).
"""
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mvlib import paths, tiers

# The notebooks that time rows: the child must be done before either starts.
TIMED = ("05_silu_plugin", "06_benchmark")
# The first notebook: it resolves the weights and exports; the child starts once it is done.
FIRST = "01_export"
NICE = 10
WAIT_LIMIT_S = 1200  # a child still compiling after this long is stopped; its rows compile as before
FP16_CL = {"precision": "fp16", "channels_last": True}

# Each compiled row of notebooks 05 and 06: (notebook, row, factory "module:function", kwargs, batches parameter).
# tests/driver/test_ahead.py holds these against the notebooks' own calls.
ROWS = [
    ("05_silu_plugin", "swap_throughput (original, compile)", "mvlib.bench:pytorch_cuda",
     {"compile_mode": "default"}, "swap_batches"),
    ("06_benchmark", "torch_compile_fp16", "mvlib.bench:pytorch_cuda",
     {**FP16_CL, "compile_mode": "default"}, "gpu_batches"),
    ("06_benchmark", "torch_compile_cudagraphs_fp16", "mvlib.bench:pytorch_cuda",
     {**FP16_CL, "compile_mode": "reduce-overhead"}, "gpu_batches"),
    ("06_benchmark", "torch_compile_cudagraphs_fp8", "mvlib.fp8_torch:pytorch_cuda_fp8", {}, "gpu_batches"),
]


def wanted(have: str, environ=os.environ) -> bool:
    """Whether to compile ahead: a machine with a CUDA GPU (tier gpu or higher), unless MVLIB_COMPILE_AHEAD=0."""
    return tiers.rank(have) >= tiers.rank("gpu") and environ.get("MVLIB_COMPILE_AHEAD", "1") != "0"


def jobs(selected: list[str], values: dict) -> list[dict]:
    """The compile jobs of the selected notebooks (stems), with their batches and kwargs made concrete from
    `values`: every parameter, the run's over the notebooks' own defaults (as papermill leaves them; see plan)."""
    from mvlib import precisions
    out = []
    for notebook, row, factory, kwargs, batches in ROWS:
        if notebook not in selected or not values.get(batches):
            continue
        if batches == "swap_batches":  # 05 compiles its original model once per dtype it swaps
            for dtype in values.get("swap_dtypes") or ():
                out.append({"row": f"{notebook}/{row} {dtype}", "factory": factory, "batches": values[batches],
                            "kwargs": {**kwargs, "precision": precisions.of_torch_dtype(dtype).name}})
            continue
        out.append({"row": f"{notebook}/{row}", "factory": factory, "kwargs": kwargs, "batches": values[batches]})
    return out


@dataclass
class Ahead:
    """The compile-ahead child of one run: started after FIRST, waited for before a TIMED notebook, stopped on exit."""
    jobs: list[dict]
    params: dict
    log: Path
    state: dict = field(default_factory=dict)  # what the manifest records (the run's timing)
    proc: subprocess.Popen | None = None
    started: float = 0.0
    tuned: set = field(default_factory=set)  # the autotuning picks in the cache before the child started

    def before(self, stem: str) -> None:
        """Called before each notebook: start the child (after FIRST), or wait for it (before a TIMED one)."""
        if stem in TIMED:
            self.wait()
        elif stem != FIRST and self.proc is None and self.jobs and not self.state:
            self.start()

    def start(self) -> None:
        """The child, in a session of its own (its compile workers go with it), logging to `log`."""
        payload = {"params": self.params, "jobs": self.jobs, "driver": os.getpid()}
        # MVLIB_BUILD made absolute: the kernels run in notebooks/, so a relative one would name another cache
        env = dict(os.environ, MVLIB_AHEAD=json.dumps(payload, default=str), MVLIB_BUILD=str(paths.BUILD),
                   PYTHONPATH=os.pathsep.join([str(paths.ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.tuned = autotuned()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "mvlib.driver.ahead"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=paths.ROOT)
        self.started = time.perf_counter()
        print(f"    compiling {len(self.jobs)} torch.compile configurations ahead in the background (log: {self.log})")

    def wait(self) -> None:
        """Wait for the child (at most WAIT_LIMIT_S), so that nothing timed shares the machine with it."""
        if self.proc is None or self.state:
            return
        waited = time.perf_counter()
        try:
            code = self.proc.wait(timeout=max(1.0, WAIT_LIMIT_S - (waited - self.started)))
        except subprocess.TimeoutExpired:
            self.stop()
            code = f"stopped after {WAIT_LIMIT_S} s"
        self.forget_tuning()
        now = time.perf_counter()
        self.state.update(seconds=round(now - self.started, 1), waited_s=round(now - waited, 1), exit=code,
                          rows=[j["row"] for j in self.jobs])
        print(f"    compiled ahead in {now - self.started:.0f} s (waited {now - waited:.0f} s for it; exit {code}; "
              f"log: {self.log})")

    def forget_tuning(self) -> None:
        """Remove the autotuning picks the child wrote (Inductor's *.best_config): it benchmarked its kernels while
        04 shared the GPU, so the timed rows pick again on an idle GPU, as a cold compile does. Only files that
        were not there before the child started go."""
        for path in autotuned() - self.tuned:
            path.unlink(missing_ok=True)

    def stop(self) -> None:
        """End the child and its compile workers (an interrupted or finished run leaves none behind)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def __enter__(self) -> "Ahead":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def autotuned() -> set[Path]:
    """Inductor's saved autotuning picks (*.best_config) in the study's cache folder (bench.compile_caches)."""
    from mvlib import bench
    folder = Path(bench.compile_caches()["TORCHINDUCTOR_CACHE_DIR"])  # the folder the child and the kernels use
    return set(folder.rglob("*.best_config")) if folder.is_dir() else set()


def plan(selected: list[Path], params: dict, run: Path, enabled: bool) -> Ahead:
    """The run's compile-ahead (no jobs where not `enabled` or no compiled row is selected)."""
    log = run / "logs" / "compile_ahead.log"
    if not enabled:
        return Ahead([], params, log)
    from mvlib.driver.params import defaults
    values = defaults() | params  # the parameters the notebooks will see, for the jobs and the child alike
    return Ahead(jobs([nb.stem for nb in selected], values), values, log)


def resolve(spec: str):
    """'module:function' -> the function."""
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def orphaned(driver: int) -> None:
    """Exit the child if the driver that started it is gone (killed without unwinding: nobody waits for it)."""
    if driver and os.getppid() != driver:
        print("the driver is gone: stopping", flush=True)
        os._exit(3)


def compile_all(params: dict, todo: list[dict], driver: int = 0) -> int:
    """In the child: run each job's first launch at each batch (that compiles it into the caches); 0 if all did.
    `driver`: the driver's PID (the child stops once it is gone)."""
    import torch

    from mvlib import bench, model
    settings = bench.profile_settings(params)
    net, _ = model.load_model(params["variant"], str(params["weights"]), params["seed"])
    failed = 0
    for job in todo:
        t0 = time.perf_counter()
        try:
            backend = resolve(job["factory"])(settings, net, **job["kwargs"])
            for batch in job["batches"]:
                orphaned(driver)
                tb, caches = time.perf_counter(), bench.cache_counts()
                backend.prepare(int(batch))()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                print(f"{job['row']} batch {batch}: {time.perf_counter() - tb:.1f} s; "
                      f"{bench.describe_caches(caches, bench.cache_counts())}", flush=True)
                torch._dynamo.reset()  # frees this batch's compiled code and CUDA-graph pool before the next
                torch.cuda.empty_cache()  # notebook 04 shares the GPU (ONNX Runtime's CUDA EP)
        except Exception as err:  # noqa: BLE001 (the row compiles in its notebook as before)
            failed += 1
            print(f"{job['row']}: not compiled ahead ({type(err).__name__}: {str(err).partition(chr(10))[0]})",
                  flush=True)
        finally:
            backend = None
            torch.cuda.empty_cache()
        print(f"{job['row']}: {time.perf_counter() - t0:.1f} s", flush=True)
    return 1 if failed else 0


def main() -> int:
    """The child's entry: its jobs come in MVLIB_AHEAD (JSON: {'params', 'jobs'})."""
    os.nice(NICE)
    payload = json.loads(os.environ["MVLIB_AHEAD"])
    orphaned(payload["driver"])
    return compile_all(payload["params"], payload["jobs"], payload["driver"])


if __name__ == "__main__":
    sys.exit(main())
