"""Compiling ahead (mvlib.driver.ahead): the child compiles what the timed rows compile, a later process then
finds Inductor's cache warm, the run waits for the child before timing anything and leaves no process behind."""
import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mvlib import paths
from mvlib.driver import ahead, params
from mvlib.silu import gpu_checks

HELPERS = Path(__file__).resolve().parent.parent / "helpers"
STEMS = ["01_export", "02_graph", "03_fp32_fp16", "04_int8", "05_silu_plugin", "06_benchmark"]


@pytest.fixture
def child_env(tmp_path, monkeypatch):
    """The child and later processes import the helper factories and share one fresh pair of compile caches."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    return tmp_path


def _ahead(tmp_path, *todo) -> ahead.Ahead:
    """An Ahead over the smoke profile's parameters with these (factory, batches) jobs."""
    jobs = [{"row": f"job{i}", "factory": f"ahead_factories:{f}", "kwargs": {}, "batches": b}
            for i, (f, b) in enumerate(todo)]
    return ahead.Ahead(jobs, params.defaults() | params.load_profile("smoke"), tmp_path / "logs" / "ahead.log")


def test_wanted_only_on_a_gpu_machine_and_not_when_turned_off():
    assert not ahead.wanted("cpu", {})
    assert ahead.wanted("gpu", {}) and ahead.wanted("trt", {})
    assert not ahead.wanted("gpu", {"MVLIB_COMPILE_AHEAD": "0"})


def test_jobs_of_the_full_profile():
    full = params.defaults() | params.load_profile("full")
    got = {j["row"]: (j["kwargs"], j["batches"]) for j in ahead.jobs(STEMS, full)}
    fp16 = {"precision": "fp16", "channels_last": True}
    assert got == {
        "05_silu_plugin/swap_throughput (original, compile) float16": ({"compile_mode": "default",
                                                                         "precision": "fp16"}, [1, 32]),
        "05_silu_plugin/swap_throughput (ours, compile) float16": ({"compile_mode": "default",
                                                                     "precision": "fp16"}, [1, 32]),
        "06_benchmark/torch_compile_fp16": (fp16 | {"compile_mode": "default"}, [1, 16, 32, 256]),
        "06_benchmark/torch_compile_cudagraphs_fp16": (fp16 | {"compile_mode": "reduce-overhead"}, [1, 16, 32, 256]),
        "06_benchmark/torch_compile_cudagraphs_fp8": ({}, [1, 16, 32, 256])}
    assert ahead.jobs(STEMS[:4], full) == []  # nothing timed selected: nothing to compile ahead
    books = [paths.NOTEBOOKS / f"{s}.ipynb" for s in STEMS]
    assert not ahead.plan(books, full, Path("r"), enabled=False).jobs
    planned = ahead.plan(books, params.load_profile("full"), Path("r"), enabled=True)  # the notebooks' defaults added
    assert planned.jobs == ahead.jobs(STEMS, full) and planned.params == full
    assert 1 <= planned.workers <= ahead.PROCESSES


def test_the_compiles_are_dealt_into_shares_of_one_batch_each():
    jobs = [{"row": "a", "batches": [1, 16, 32, 256]}, {"row": "b", "batches": [1, 32]}]
    shares = ahead.split(jobs, 3)
    assert [[(j["row"], j["batches"]) for j in s] for s in shares] == [
        [("a", [1]), ("a", [256])], [("a", [16]), ("b", [1])], [("a", [32]), ("b", [32])]]
    assert ahead.split(jobs, 1) == [[{"row": r, "batches": [b]} for r, bs in (("a", [1, 16, 32, 256]), ("b", [1, 32]))
                                     for b in bs]]
    assert len(ahead.split(jobs, 10)) == 6 and ahead.split([], 3) == []
    warm = ahead.Ahead(jobs, {}, Path("r"), workers=3)
    assert [p["jobs"] for p in warm.payloads()] == shares and warm.environment(3)["TORCHINDUCTOR_COMPILE_THREADS"]


def _stage_calls(notebook: Path) -> dict[str, tuple[str, dict]]:
    """run.stage calls of a notebook's code cells: row name -> (factory as module:function, literal kwargs)."""
    modules = {"bench": "mvlib.bench", "fp8_torch": "mvlib.fp8_torch"}
    found = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "stage" and len(node.args) > 3:
                factory = node.args[3]
                if isinstance(factory, ast.Attribute) and factory.value.id in modules:
                    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg != "accuracy"}
                    found[node.args[0].value] = (f"{modules[factory.value.id]}:{factory.attr}", kwargs, node)
    return found


def test_the_rows_are_notebook_06s_own_calls():
    calls = _stage_calls(paths.NOTEBOOKS / "06_benchmark.ipynb")
    for notebook, row, factory, kwargs, batches in ahead.ROWS:
        if notebook != "06_benchmark":
            continue
        got_factory, got_kwargs, node = calls[row]
        assert (got_factory, got_kwargs) == (factory, kwargs), row
        assert [a.id for a in node.args[4:5]] == [batches], row  # the batches it times are the ones compiled


def test_the_swap_rows_are_notebook_05s_compiles():
    """swap_throughput's compiled backends: the unswapped model, then the swapped one, with the jobs' kwargs; the
    swapped job's factory swaps a copy of the model the same way and leaves the model alone."""
    import torch

    from mvlib.silu import torch_op
    seen = []

    def factory(settings, net, **kwargs):
        seen.append(([type(m).__name__ for m in net.modules() if "SiLU" in type(m).__name__], kwargs))
        if len(seen) == 2:
            raise StopIteration
        return None
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.SiLU())
    def measure_all(factory, batches, settings, net, **kwargs):
        factory(settings, net, **kwargs)
        return pd.DataFrame([{"batch": 1, "throughput_ips": 1.0}])
    with pytest.raises(StopIteration), pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpu_checks.bench, "measure_all", measure_all)
        gpu_checks.swap_throughput(net, [1], None, ("float16",), modes=("compile",), factory=factory)
    jobs = ahead.jobs(["05_silu_plugin"], params.defaults() | params.load_profile("full"))
    assert seen == [(["SiLU"], jobs[0]["kwargs"]), (["MvSiLU"], jobs[1]["kwargs"])]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ahead, "own_kernel", lambda: None)
        mp.setattr(gpu_checks.bench, "pytorch_cuda", lambda s, n, **kw: (n, kw))
        swapped, kwargs = ahead.resolve(jobs[1]["factory"])(None, net, **jobs[1]["kwargs"])
    assert [type(m).__name__ for m in swapped.modules()][-1] == "MvSiLU" and kwargs == jobs[1]["kwargs"]
    assert type(net[1]) is torch.nn.SiLU and torch_op.MvSiLU  # the model itself keeps nn.SiLU


def test_the_child_loads_its_own_kernel_build(tmp_path, monkeypatch):
    """own_kernel builds into KERNEL_BUILD (here a fake build) and points the op's library there, once."""
    from mvlib.silu import build
    monkeypatch.setattr(build, "library_path", build.library_path)  # restored after the test
    monkeypatch.setattr(ahead, "KERNEL_BUILD", tmp_path / "own")
    built = []

    def fake_build(build_root=None, **kw):
        built.append(build_root)
        lib = build.build_dir(build_root) / build.KERNEL_LIB
        lib.parent.mkdir(parents=True)
        lib.write_bytes(b"")
    monkeypatch.setattr(build, "build", fake_build)
    ahead.own_kernel()
    ahead.own_kernel()
    assert built == [tmp_path / "own"]
    assert build.library_path() == tmp_path / "own" / "silu_plugin" / build.KERNEL_LIB
    with pytest.raises(FileNotFoundError, match="other"):  # a build root given is still the one looked in
        build.library_path(build.KERNEL_LIB, tmp_path / "other")


def test_before_starts_after_the_first_notebook_and_waits_before_the_timed_ones(tmp_path, monkeypatch):
    calls = []
    warm = _ahead(tmp_path, ("sleepy", [1]))
    monkeypatch.setattr(warm, "start", lambda: calls.append("start") or warm.procs.append(object()))
    monkeypatch.setattr(warm, "wait", lambda: calls.append("wait"))
    for stem in STEMS:
        calls.append(stem)
        warm.before(stem)
    assert calls == ["01_export", "02_graph", "start", "03_fp32_fp16", "04_int8", "05_silu_plugin", "wait",
                     "06_benchmark", "wait"]


@pytest.mark.slow
def test_a_later_process_finds_the_childs_compile_in_the_cache(child_env, monkeypatch):
    """The premise, on real Inductor (CPU) and the study's own cache folders (issue 29: under build/cache/torch, not
    a temporary folder): what the child compiled is an FX-graph cache hit in a fresh process, a shape it did not
    compile is a miss."""
    build = child_env / "build"
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # unset: bench.compile_caches chooses, as in a run
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(paths, "BUILD", build)  # the child's MVLIB_BUILD
    monkeypatch.setattr(paths, "CACHE", build / "cache")  # this process's (ahead.autotuned reads the folder)
    monkeypatch.setenv("MVLIB_BUILD", str(build))  # the later processes'
    warm = _ahead(child_env, ("cpu_compiled", [2]))
    warm.before("02_graph")
    warm.before("06_benchmark")
    log = warm.log.read_text()
    assert warm.state["exit"] == 0, log
    assert "job0 batch 2:" in log and warm.state["rows"] == ["job0"]

    def counts(batch):
        out = subprocess.run([sys.executable, str(HELPERS / "ahead_factories.py"), str(batch)], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    warm_, cold = counts(2), counts(3)
    assert (warm_["fxgraph_hit"], warm_["fxgraph_miss"], warm_["aot_hit"], warm_["aot_miss"]) == (1, 0, 1, 0)
    assert (cold["fxgraph_hit"], cold["fxgraph_miss"], cold["aot_hit"], cold["aot_miss"]) == (0, 1, 0, 1)
    assert "job0 batch 2:" in log and "FX-graph cache 0 hit, 1 miss" in log  # the child's own compile was cold
    assert any((build / "cache" / "torch" / "inductor").rglob("*")), "the compiled graph was not written under build/"


@pytest.mark.slow
def test_a_job_that_cannot_compile_is_logged_and_the_next_still_runs(child_env):
    warm = _ahead(child_env, ("failing", [1]), ("silent", [1]), ("cpu_compiled", [1]))
    warm.before("02_graph")
    warm.before("05_silu_plugin")
    log = warm.log.read_text()
    assert "job0: not compiled ahead (RuntimeError: no FP8 on this GPU)" in log
    assert "job1: not compiled ahead (AssertionError: )" in log
    assert "job2 batch 1:" in log and warm.state["exit"] == 1


def test_the_childs_autotuning_picks_go_and_older_ones_stay(child_env):
    """The child benchmarked its kernels beside notebook 04: its *.best_config files go once it is done."""
    folder = child_env / "inductor" / "ab"
    folder.mkdir(parents=True)
    (folder / "old.best_config").write_text("{}")
    warm = _ahead(child_env, ("cpu_compiled", [1]))
    warm.tuned = ahead.autotuned()
    (folder / "new.best_config").write_text("{}")
    (folder / "new.py").write_text("")
    warm.forget_tuning()
    assert sorted(p.name for p in folder.iterdir()) == ["new.py", "old.best_config"]


def test_a_child_whose_driver_is_gone_stops_at_once(tmp_path):
    payload = {"params": {}, "jobs": [{"row": "x"}], "driver": 1}  # PID 1 is nobody's driver here
    got = subprocess.run([sys.executable, "-m", "mvlib.driver.ahead"], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, MVLIB_AHEAD=json.dumps(payload)), cwd=paths.ROOT)
    assert (got.returncode, got.stdout.strip()) == (3, "the driver is gone: stopping")


def test_an_interrupted_run_leaves_no_child(child_env):
    with pytest.raises(KeyboardInterrupt):
        with _ahead(child_env, ("sleepy", [1])) as warm:
            warm.before("02_graph")
            time.sleep(0.5)
            raise KeyboardInterrupt
    assert warm.procs and all(p.poll() is not None for p in warm.procs)
    for proc in warm.procs:  # its whole session is gone (compile workers included), once init has reaped them
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.killpg(proc.pid, 0)
                time.sleep(0.1)
