"""Compiling ahead: the torch.compile configurations that notebooks 05 and 06 time, compiled in child processes
(up to PROCESSES, each with its share of the configuration-batch pairs) while the notebooks before them run
(02-04 export, check accuracy and calibrate: nothing there is timed), so the timed rows find Inductor's on-disk
caches warm and compile nothing they have not compiled already.

Why: on an H100 the full profile's cold compiles took about 265 s of notebook 06 (three configurations x four
batches, about 21 s each) and 04 about 325 s of CPU work in which the GPU sits idle. The child compiles exactly
what the rows compile (the same factory, model, kwargs, batch), so the rows' kernels and numbers are the same;
only where the compile time is spent moves. The child runs at a lower priority (`nice`), and the driver waits
for it before the first notebook that times anything, so no timed window shares the machine with it. A
configuration the child cannot compile (no FP8 GPU, a cache that will not hit) costs only the child's time: the
row compiles as before. 05's swapped model calls the study's kernel: the child builds its own copy of the library
(`own_kernel`). `Child` is the process handling this shares with the calibrating child (mvlib.driver.calibrate).
`MVLIB_COMPILE_AHEAD=0` turns it off.

Serves: the driver (kernels.execute).
"""
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mvlib import paths, tiers

# The notebooks that time rows: the child must be done before either starts.
TIMED = ("05_silu_plugin", "06_benchmark")
# The first notebook: it resolves the weights and exports; the child starts once it is done.
FIRST = "01_export"
NICE = 10
# Compiling processes side by side: Dynamo's tracing and Inductor's lowering keep about one core busy each (their
# Triton compiles go to worker pools), so one process took 338 s for the full profile's 14 compiles on an H100's
# 16 cores, longer than notebooks 01-04 once they were made faster; three share those cores' idle time.
PROCESSES = 3
CORES_PER_PROCESS = 4  # fewer cores than this per process: fewer processes
WAIT_LIMIT_S = 1200  # a child still compiling after this long is stopped; its rows compile as before
FP16_CL = {"precision": "fp16", "channels_last": True}

# Each compiled row of notebooks 05 and 06: (notebook, row, factory "module:function", kwargs, batches parameter).
# tests/driver/test_ahead.py holds these against the notebooks' own calls.
ROWS = [
    ("05_silu_plugin", "swap_throughput (original, compile)", "mvlib.bench:pytorch_cuda",
     {"compile_mode": "default"}, "swap_batches"),
    ("05_silu_plugin", "swap_throughput (ours, compile)", "mvlib.driver.ahead:swapped_pytorch_cuda",
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


class Child:
    """A background child of one run: `module` run once per payload (JSON in the environment variable `variable`),
    started once after FIRST, waited for before the notebooks in `until`, stopped on exit; `state` is what the
    manifest records (its seconds, how long the run waited for it, its exit). A subclass names these four."""
    module: str  # the child's entry (python -m)
    variable: str  # the environment variable its payload comes in
    until: tuple[str, ...]  # the notebooks it is waited for before
    did: str  # the line printed once it is done

    def __init__(self, log: Path):
        self.log = log
        self.state: dict = {}
        self.procs: list[subprocess.Popen] = []
        self.started = 0.0

    def payloads(self) -> list[dict]:
        """What each process of the child is given ([]: nothing to do)."""
        raise NotImplementedError

    def announce(self) -> str:
        """The line printed when the child starts."""
        raise NotImplementedError

    def finished(self) -> dict:
        """Called once the child has ended: what else the manifest records of it."""
        return {}

    def environment(self, processes: int) -> dict:
        """Variables the child's `processes` processes get besides the driver's own."""
        return {}

    def before(self, stem: str) -> None:
        """Called before each notebook: start the child (after FIRST), or wait for it (before one in `until`)."""
        if stem in self.until:
            self.wait()
        elif stem != FIRST and not self.procs and not self.state and self.payloads():
            self.start()

    def start(self) -> None:
        """The child's processes, each in a session of its own (its workers go with it), logging to `log`."""
        payloads = self.payloads()
        env = paths.child_environment() | self.environment(len(payloads))
        self.log.parent.mkdir(parents=True, exist_ok=True)
        for payload in payloads:
            env[self.variable] = json.dumps({**payload, "driver": os.getpid()}, default=str)
            with open(self.log, "ab") as out:  # appended to by each process, a whole line at a time
                self.procs.append(subprocess.Popen([sys.executable, "-m", self.module], env=env, stdout=out,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                   start_new_session=True, cwd=paths.ROOT))
        self.started = time.perf_counter()
        print(f"    {self.announce()} in the background (log: {self.log})")

    def wait(self) -> None:
        """Wait for the child's processes (at most WAIT_LIMIT_S from their start); its exit: the first non-zero."""
        if not self.procs or self.state:
            return
        waited = time.perf_counter()
        try:
            codes = [p.wait(timeout=max(1.0, WAIT_LIMIT_S - (time.perf_counter() - self.started)))
                     for p in self.procs]
            code = next((c for c in codes if c), 0)
        except subprocess.TimeoutExpired:
            self.stop()
            code = f"stopped after {WAIT_LIMIT_S} s"
        more = self.finished()
        now = time.perf_counter()
        self.state.update(seconds=round(now - self.started, 1), waited_s=round(now - waited, 1), exit=code, **more)
        print(f"    {self.did} in {now - self.started:.0f} s (waited {now - waited:.0f} s for it; exit {code}; "
              f"log: {self.log})")

    def stop(self) -> None:
        """End the child's processes and their workers (an interrupted or finished run leaves none behind, nor the
        shared blocks of a calibration killed mid-image)."""
        for proc in self.procs:
            if proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        from mvlib import calib_speed
        calib_speed.sweep()  # only blocks of processes that no longer run: nothing when none was killed mid-image

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Ahead(Child):
    """The compile-ahead child of one run: `workers` processes started after FIRST, each compiling its share of the
    jobs' (configuration, batch) pairs, waited for before a TIMED notebook, stopped on exit."""
    module = "mvlib.driver.ahead"
    variable = "MVLIB_AHEAD"
    until = TIMED
    did = "compiled ahead"

    def __init__(self, jobs: list[dict], params: dict, log: Path, workers: int = 1):
        super().__init__(log)
        self.jobs, self.params, self.workers = jobs, params, workers
        self.tuned: set = set()  # the autotuning picks in the cache before the child started

    def payloads(self) -> list[dict]:
        """The parameters and each process's share of the compile jobs ([] when there are none)."""
        return [{"params": self.params, "jobs": part} for part in split(self.jobs, self.workers)]

    def announce(self) -> str:
        """The start line."""
        compiles = sum(len(j["batches"]) for j in self.jobs)
        return f"compiling {compiles} torch.compile configurations and batches ahead in {len(self.procs)} processes"

    def start(self) -> None:
        """The processes, once the autotuning picks already in the cache are known."""
        self.tuned = autotuned()
        super().start()

    def environment(self, processes: int) -> dict:
        """Each process's share of the cores for Inductor's compile workers (a setting Inductor leaves out of its
        cache key, so the rows still hit), unless the user set it."""
        threads = max(1, len(os.sched_getaffinity(0)) // max(1, processes))
        return {"TORCHINDUCTOR_COMPILE_THREADS": os.environ.get("TORCHINDUCTOR_COMPILE_THREADS") or str(threads)}

    def finished(self) -> dict:
        """Its autotuning picks forgotten; the rows it compiled."""
        self.forget_tuning()
        return {"rows": [j["row"] for j in self.jobs], "processes": len(self.procs)}

    def forget_tuning(self) -> None:
        """Remove the autotuning picks the child wrote (Inductor's *.best_config): it benchmarked its kernels while
        04 shared the GPU, so the timed rows pick again on an idle GPU, as a cold compile does. Only files that
        were not there before the child started go."""
        for path in autotuned() - self.tuned:
            path.unlink(missing_ok=True)


def split(jobs: list[dict], n: int) -> list[list[dict]]:
    """The jobs' (configuration, batch) pairs dealt round-robin into at most `n` shares, one job per pair."""
    pairs = [{**job, "batches": [batch]} for job in jobs for batch in job["batches"]]
    shares: list[list[dict]] = [[] for _ in range(max(1, min(n, len(pairs))))]
    for k, pair in enumerate(pairs):
        shares[k % len(shares)].append(pair)
    return [s for s in shares if s]


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
    workers = max(1, min(PROCESSES, len(os.sched_getaffinity(0)) // CORES_PER_PROCESS))
    return Ahead(jobs([nb.stem for nb in selected], values), values, log, workers)


def swapped_pytorch_cuda(settings, net, **kwargs):
    """Notebook 05's compiled "ours" rows: bench.pytorch_cuda on a copy of `net` whose SiLUs call the study's
    kernel (torch_op.swap_silu, as gpu_checks.swap_throughput does), the kernel being the child's own build
    (`own_kernel`). What Inductor caches is the graph calling torch.ops.mvlib.silu, the same with 05's build."""
    import copy

    import torch

    from mvlib import bench
    from mvlib.silu import torch_op
    if torch.cuda.is_available():  # without a GPU bench.pytorch_cuda says why, as for the other rows: no build first
        own_kernel()
    swapped = copy.deepcopy(net)
    torch_op.swap_silu(swapped, "direct")
    return bench.pytorch_cuda(settings, swapped, **kwargs)


KERNEL_BUILD = paths.BUILD / "cache" / "compile_ahead"  # the child's own build of the kernel library


def own_kernel() -> None:
    """In the child, once: build the kernel library into KERNEL_BUILD (silu_plugin/build.sh) and have the op load it
    from there, so the library notebook 05 builds with `%%bash` stays the notebook's own."""
    from mvlib.silu import build, torch_op
    if getattr(build.library_path, "compile_ahead", False):
        return
    build.build(build_root=KERNEL_BUILD)
    notebooks = build.library_path

    def library_path(name: str = build.KERNEL_LIB, build_root: Path | str | None = None) -> Path:
        """build.library_path, in the child's own build unless told otherwise."""
        return notebooks(name, build_root or KERNEL_BUILD)
    library_path.compile_ahead = True
    build.library_path = library_path
    torch_op.kernel_library.cache_clear()


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
