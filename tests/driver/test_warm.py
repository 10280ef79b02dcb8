"""Kernels warmed ahead (mvlib.driver.warm): real ipykernel kernels, run by papermill as the driver runs them."""
import json
import os

import nbformat
import pytest
from tiny_notebooks import notebook

from mvlib import paths
from mvlib.driver import kernels, warm

PROBE = "probe_module_warmed"  # a module only the notebook's import statement names


def test_the_warm_up_is_the_notebooks_top_level_imports_and_binds_no_name(tmp_path):
    nb = notebook(tmp_path / "n.ipynb", 'run_dir = ""', "%%bash\necho import nothing",
                  "import os\nfrom json import dumps as d\nx = 1", "def f():\n    import sys\n    return sys",
                  "%matplotlib inline\nimport math", "from __future__ import annotations")
    assert warm.imports(nb) == ["import os", "from json import dumps as d"]  # magics' cells and nested ones left
    namespace: dict = {}
    exec(warm.warm_code(warm.imports(nb)), namespace)
    assert set(namespace) == {"__builtins__"}  # no os, no d: a cell that uses a name before importing it still fails
    exec(warm.warm_code([]), namespace)  # a notebook without imports: the primers alone


def test_kernels_warm_during_untimed_notebooks_only():
    assert warm.warms_during("04_int8") and not warm.warms_during("05_silu_plugin")
    assert not warm.warms_during("06_benchmark")
    assert warm.wanted({}) and not warm.wanted({warm.ENV: "0"})  # this environment's nbclient is new enough


def test_an_nbclient_that_cannot_take_a_started_kernel_warms_none():
    """nbclient before 0.6.6 makes no client for a kernel it did not start: warming would fail every notebook."""
    versions = {"nbclient": "0.6.5", "jupyter_client": "8.10.0"}
    assert warm.too_old(versions.get) == "nbclient 0.6.5"
    versions |= {"nbclient": "0.6.6", "jupyter_client": "8.0.0rc1"}
    assert warm.too_old(versions.get) == ""
    assert warm.too_old({"nbclient": "0.10.2", "jupyter_client": "7.4.9"}.get) == "jupyter_client 7.4.9"
    assert warm.release("8.0.0rc1") == (8, 0, 0) and warm.release("0.10") == (0, 10)


def test_a_notebook_that_cannot_be_read_starts_no_kernel_and_the_run_goes_on(tmp_path, capsys):
    before = list(kernels._KERNELS)
    with pytest.raises(FileNotFoundError):
        warm.Warm(tmp_path / "missing.ipynb", kernels.kernel_manager(tmp_path / "k.log"), tmp_path / "k.log")
    assert kernels._KERNELS == before  # no kernel was launched
    assert kernels._warm(tmp_path / "missing.ipynb", tmp_path) is None  # the driver: papermill starts it instead
    assert "missing's kernel was not warmed ahead (FileNotFoundError" in capsys.readouterr().err


@pytest.mark.slow  # two real kernels
def test_papermill_runs_the_notebook_in_the_warmed_kernel_numbered_from_one(tmp_path, monkeypatch):
    """The notebook runs in the kernel started ahead (its pid), which has imported the notebook's module (and
    PyTorch, for Run's first question) before any cell ran, binds no name early, numbers its cells from 1,
    and is shut down when the notebook ends."""
    (tmp_path / f"{PROBE}.py").write_text("import time\nLOADED_AT = time.time()\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    seen = tmp_path / "seen.json"
    nb = notebook(tmp_path / "n.ipynb", 'run_dir = ""',
                  "import sys, time\nwas_there = 'probe_module_warmed' in sys.modules\n"
                  "torch_there = 'torch' in sys.modules\n"
                  "try:\n    probe_module_warmed\n    bound = True\nexcept NameError:\n    bound = False",
                  f"import {PROBE}\nimport json, os\n"
                  f"json.dump({{'pid': os.getpid(), 'was_there': was_there, 'bound': bound, 'torch': torch_there}},\n"
                  f"          open({str(seen)!r}, 'w'))")
    log = tmp_path / "kernel.log"
    started = warm.Warm(nb, kernels.kernel_manager(log), log)
    pid = started.km.provisioner.process.pid
    manager = started.adopting(120)
    assert manager is not None
    kernels.papermill_into(nb, tmp_path / "out.ipynb", cwd=str(paths.NOTEBOOKS), kernel_name="python3",
                           progress_bar=False, kernel_manager_class=manager)
    got = json.loads(seen.read_text())
    # torch: the primer (env.cuda_status, which every notebook's Run asks first) imported it; no cell did
    assert got == {"pid": pid, "was_there": True, "bound": False, "torch": True}
    executed = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    assert [c.execution_count for c in executed.cells] == [1, 2, 3]  # the warm-up took no number
    assert started.km.provisioner is None or started.km.provisioner.process is None or \
        started.km.provisioner.process.poll() is not None  # nbclient shut it down, as its own
    assert "kernel warmed ahead in" in log.read_text() and ": ok" in log.read_text()
    started.close()  # taken by papermill: nothing to do


@pytest.mark.slow  # a real kernel
def test_a_failed_warm_up_is_shut_down_and_left_to_the_notebook(tmp_path):
    """An import that fails ahead: the kernel is shut down and papermill is left to start its own (None), whose
    import cell then says what failed; the kernel log says it too."""
    nb = notebook(tmp_path / "n.ipynb", 'run_dir = ""', "import no_such_module_anywhere")
    log = tmp_path / "kernel.log"
    started = warm.Warm(nb, kernels.kernel_manager(log), log)
    proc = started.km.provisioner.process
    assert started.adopting(120) is None
    assert proc.poll() is not None
    text = log.read_text()
    assert "kernel warmed ahead in" in text and ": error" in text


@pytest.mark.slow  # a real kernel
def test_a_taken_kernel_that_papermill_never_ran_is_shut_down(tmp_path):
    """Papermill failed before it ran a cell of the notebook it was given the kernel for (it shuts down only the
    kernels it ran): close() ends it, and a second close() does nothing."""
    nb = notebook(tmp_path / "n.ipynb", 'run_dir = ""', "import os")
    started = warm.Warm(nb, kernels.kernel_manager(tmp_path / "kernel.log"), tmp_path / "kernel.log")
    proc = started.km.provisioner.process
    assert started.adopting(120) is not None and proc.poll() is None
    started.close()
    assert proc.poll() is not None
    started.close()


@pytest.mark.slow  # a real kernel
def test_closing_a_warm_kernel_nobody_took_ends_its_process(tmp_path):
    """A run that stops before the next notebook (a failure, Ctrl-C): its warm kernel does not outlive it."""
    nb = notebook(tmp_path / "n.ipynb", 'run_dir = ""', "import os")
    started = warm.Warm(nb, kernels.kernel_manager(tmp_path / "kernel.log"), tmp_path / "kernel.log")
    proc = started.km.provisioner.process
    assert started.alive()
    started.close()
    assert proc.poll() is not None  # ended, not left to the interpreter's exit


def test_the_smoke_run_warmed_each_kernel_after_an_untimed_notebook(smoke_run):
    """02 to 05 ran in kernels warmed during the notebook before them; 01 (the first) and 06 (after 05, which times
    rows) in kernels papermill started."""
    for stem, warmed in (("01_export", False), ("02_graph", True), ("03_fp32_fp16", True), ("04_int8", True),
                         ("05_silu_plugin", True), ("06_benchmark", False)):
        text = (smoke_run / "logs" / f"{stem}.log").read_text()
        assert ("[mvlib] kernel warmed ahead in" in text) == warmed, stem
        assert ": ok" in text or not warmed, text[-2000:]
