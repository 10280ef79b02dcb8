"""The driver, the run manifest and notebook hygiene."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import smoke
from driver_fakes import RTX_REFUSES, fake_h100_with_both_flavours, fake_notebooks
from tiny_notebooks import notebook

from mvlib import io, paths, rundir, stages, study, tiers
from mvlib.driver import kernels, params, runfolder, verdicts
from mvlib.tensorrt import cache, flavours
from mvlib.tensorrt import table as engines_table

NOTEBOOKS = stages.all_notebooks()


def installed_kernelspec() -> dict:
    """The kernelspec JupyterLab writes into a notebook it opens with this environment's `python3` kernel (what
    `make env` registers with `ipykernel install --sys-prefix`, .venv/share/jupyter/kernels/python3)."""
    from jupyter_client.kernelspec import KernelSpecManager
    spec = KernelSpecManager().get_kernel_spec("python3")
    return {"display_name": spec.display_name, "language": spec.language, "name": "python3"}


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(nb_path):
    """Stored without outputs, exactly one `parameters` cell, every parameter visible to papermill, and the
    installed kernel's kernelspec (another one makes JupyterLab mark the untouched notebook unsaved)."""
    nb = nbformat.read(nb_path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"] == installed_kernelspec() == {"display_name": "Python 3 (ipykernel)",
                                                                   "language": "python", "name": "python3"}
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear outputs before committing"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{len(tagged)} cells tagged parameters"
    assigned = set(re.findall(r"^(\w+)\s*=", tagged[0].source, flags=re.M))
    assert set(papermill.inspect_notebook(str(nb_path))) == assigned, "papermill cannot parse a parameter line"
    assert "run_dir" in assigned
    assert nb.cells[0].cell_type == "markdown" and "Creates" in nb.cells[0].source
    assert not any("sys.path" in c.source for c in code), "no sys.path hacks: import mvlib"


def test_the_authoring_helper_writes_the_installed_kernelspec(tmp_path):
    """tools/nb.py writes new notebooks with the kernelspec every notebook has."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("nb_tool", paths.ROOT / "tools" / "nb.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.write(str(tmp_path / "07_new.ipynb"), [("md", "# 07 · Creates"), ("code", '# parameters\nrun_dir = ""')])
    assert nbformat.read(tmp_path / "07_new.ipynb", as_version=4).metadata["kernelspec"] == installed_kernelspec()


def test_every_model_file_notebook_06_reads_is_written_by_an_earlier_notebook(smoke_run, xxs):
    """06 times the FP32/FP16/INT8 models and their plugin rewrites: each exists after 01-05, and each was built."""
    from mvlib import export
    manifest = io.read_json(smoke_run / "manifest.json")
    exported, _ = xxs  # the same export as the run's (mobilevit_xxs, seeded random weights, 256 px, opset 17)
    # the names notebook 06 reads, in the folder where the run (in its own build folder) wrote them
    read = [smoke.model_dir() / exported.model(p, plugin=k).name for p in export.PRECISIONS for k in (False, True)]
    missing = [p.name for p in read if not p.is_file()]
    assert not missing, f"notebook 06 reads files nothing wrote: {missing}"
    names = {f"plugin_{p}" if k else p for p in export.PRECISIONS for k in (False, True)}
    assert {f"06_benchmark/tensorrt_{n}" for n in names} <= set(manifest["stages"])
    if flavours.builder_status()[0]:
        table = pd.read_csv(smoke_run / "results" / engines_table.ENGINES_TABLE)
        built = table[table["status"].isin(["built", "reused"])]
        assert names <= set(built["engine"]), f"not built: {names - set(built['engine'])}"
        assert set(table.set_index("engine").loc[sorted(names), "onnx"]) == {p.name for p in read}


@pytest.mark.skipif(not flavours.builder_status()[0], reason="no TensorRT builder here")
def test_smoke_run_built_every_engine_for_real(smoke_run):
    table = pd.read_csv(smoke_run / "results" / engines_table.ENGINES_TABLE)
    assert (table["status"].isin(["built", "reused"])).all(), table[["engine", "status", "messages"]]
    assert {"fp32", "fp16", "int8", "plugin_fp32", "plugin_fp16", "plugin_int8"} <= set(table["engine"])
    assert any(e.startswith("int8.all.") for e in table["engine"])  # the policies of the accuracy table too
    for r in table.itertuples():
        assert Path(r.path).stat().st_size == r.engine_bytes > 1_000_000 and cache.has_plan_header(r.path, r.flavour)
        assert r.build_seconds > 0 and r.network_layers > 100
    plugin_rows = table[table["engine"].str.startswith("plugin_")]
    assert (plugin_rows["plugin_layers"] == plugin_rows["plugin_nodes_in_onnx"]).all()
    assert (plugin_rows["plugin_layers"] > 0).all()
    runs = flavours.select().runs_here()[0]
    assert table["ran"].astype(bool).any() == runs  # a built engine is never reported as run
    if not runs:
        assert table["accuracy"].str.startswith("skipped:").all() and table["timing"].str.startswith("skipped:").all()
    manifest = io.read_json(smoke_run / "manifest.json")
    assert manifest["stages"]["03_fp32_fp16/engines"]["status"] == "ok"


@pytest.mark.skipif(tiers.detect() != "cpu", reason="needs a machine below the gpu tier")
def test_driver_refuses_a_tier_the_machine_cannot_reach(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mvlib.study", "--profile", "smoke", "--tier", "gpu",
                           "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cpu" in proc.stderr and "gpu" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.fixture
def fake_papermill(monkeypatch):
    """The driver in this process with papermill's execution replaced (helpers/driver_fakes.py)."""
    return fake_notebooks(monkeypatch)


def test_driver_decides_the_weights_once_for_every_notebook(tmp_path, fake_papermill, capsys):
    """Full profile (weights auto), hub unreachable (MVLIB_OFFLINE): every notebook gets 'random', recorded once."""
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="WEIGHTS FALLBACK"):
        rc = study.main(["--profile", "full", "--tier", "cpu", "--run-dir", str(run)])
    assert rc == 0, capsys.readouterr().err
    assert sorted(fake_papermill) == [nb.stem for nb in NOTEBOOKS]
    assert {p["weights"] for p in fake_papermill.values()} == {"random"}
    assert {p["MVLIB_PROGRESS"] for p in fake_papermill.values()} == {"lines"}  # plain lines in a batch log
    manifest = io.read_json(run / "manifest.json")
    decision = manifest["run"]["weights"]
    assert decision["requested"] == "auto" and decision["chosen"] == "random" and decision["fallback"]
    assert "offline" in decision["reason"] and manifest["run"]["params"]["weights"] == "random"
    assert manifest["weights"]["fallback_reason"] == decision["reason"]  # footers still say it was a fallback
    assert "fallback" in manifest["weights"]["label"]
    assert capsys.readouterr().out.count("WEIGHTS FALLBACK") == 1


def test_driver_refuses_weights_it_cannot_provide(tmp_path, fake_papermill, capsys):
    run = tmp_path / "run"
    rc = study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run), "-p", "weights",
                     str(tmp_path / "missing.pth")])
    assert rc == 2 and "missing.pth" in capsys.readouterr().err
    assert not run.exists() and fake_papermill == {}


def test_smoke_run_manifest(smoke_run):
    """The smoke run ran every notebook and wrote a complete manifest."""
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert manifest["tier"] == "cpu" and manifest["run"]["expected_tier"] == "cpu"
    assert manifest["run"]["profile"] == "smoke"
    assert {"torch", "onnx", "onnxruntime", "nvidia-modelopt", "polygraphy", "tensorrt", "tensorrt_rtx"} \
        <= set(manifest["versions"])
    for name in flavours.FLAVOUR_NAMES:  # what this machine imports, whatever it is: recorded, never faked
        found, _ = flavours.installed(name)
        assert manifest["versions"][name] == (found.version if found else None)
    assert manifest["weights"]["source"] == "random" and manifest["weights"]["tag"] == "random-seed0"
    assert manifest["run"]["weights"]["requested"] == manifest["run"]["weights"]["chosen"] == "random"
    assert {p["weights"] for p in manifest["params"].values()} == {"random"}  # one choice for every notebook
    assert sorted(manifest["params"]) == sorted(nb.stem for nb in NOTEBOOKS)
    smoke = params.load_profile("smoke")  # what papermill injected is what the manifest records: the profile, with
    decided = manifest["run"]["tensorrt"]  # the flavour and target the driver decided once for every notebook
    assert decided["trt_flavour"] in (None, *flavours.FLAVOUR_NAMES)
    smoke |= {k: decided[k] for k in ("trt_flavour", "trt_target") if decided.get(k)}
    for nb, values in manifest["params"].items():
        declared = set(papermill.inspect_notebook(str(paths.NOTEBOOKS / f"{nb}.ipynb"))) - {"run_dir"}
        assert set(values) == declared
        assert all(values[k] == v for k, v in smoke.items() if k in values), nb
    assert all(st["status"] in ("ok", "skipped") for st in manifest["stages"].values())
    assert all(st["reason"] for st in manifest["stages"].values() if st["status"] == "skipped")
    assert sorted(p.name for p in (smoke_run / "notebooks").iterdir()) == [nb.name for nb in NOTEBOOKS]


def test_notebook_01_smoke_run_exports_and_checks(smoke_run):  # its files: test_notebooks
    table = io.read_json(smoke_run / "manifest.json")["stages"]
    assert table["01_export/export"]["status"] == "ok" and table["01_export/verify_onnxrt"]["status"] == "ok"
    import pandas as pd
    acc = pd.read_csv(smoke_run / "results" / "01_export_accuracy.csv")
    assert list(acc["batch"]) == [1, 4] and (acc["top1_agreement"] == 1.0).all()


# --- bad input: checked before anything is touched, exit code 2 --------------------------------------------------
def test_a_misspelt_parameter_fails_at_once_naming_the_right_one(tmp_path):
    """`-p batchmax 8` stops the driver before any folder exists (a parameter no notebook declares would be ignored)."""
    run = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "mvlib.study", "--profile", "smoke", "-p", "batchmax", "8",
                           "--run-dir", str(run)], cwd=paths.ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == study.BAD_INPUT, proc.stderr[-2000:]
    assert "batchmax" in proc.stderr and "did you mean batch_max?" in proc.stderr
    assert "-->" not in proc.stdout and not run.exists() and not runfolder.incomplete_of(run).exists()


@pytest.mark.parametrize("args, says", [
    (["-p", "img_size", "255"], "multiple of 32"),
    (["-p", "batch_opt", "64"], "1 <= batch_min <= batch_opt <= batch_max"),
    (["-p", "batch_min", "0"], "1 <= batch_min"),
    (["-p", "opset", "21"], "17..20"),
    (["-p", "opset", "16"], "17..20"),
    (["-p", "variant", "mobilevit_q"], "mobilevit_xxs"),
    (["-p", "gpu_batches", "[1, 0]"], "positive batch sizes"),
    (["-p", "bench_repeats", "1"], "at least 2"),
    (["-p", "n_images", "many"], "expected an integer"),
    (["-p", "run_dir", "x"], "--run-dir"),
    (["-p", "trt_target", "a10"], "sm86"),
    (["--only", "07"], "01_export"),
])
def test_bad_values_are_refused_before_anything_runs(tmp_path, fake_papermill, capsys, args, says):
    run = tmp_path / "r"
    rc = study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run), *args])
    err = capsys.readouterr().err
    assert rc == study.BAD_INPUT and says in err and "nothing was run or written" in err, err
    assert fake_papermill == {} and not run.exists() and not runfolder.incomplete_of(run).exists()


def test_every_problem_is_reported_at_once(tmp_path, fake_papermill, capsys):
    rc = study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(tmp_path / "r"), "-p", "batchmax", "8",
                     "-p", "img_size", "255", "-p", "opset", "30"])
    err = capsys.readouterr().err
    assert rc == study.BAD_INPUT
    assert "batch_max?" in err and "multiple of 32" in err and "17..20" in err


@pytest.mark.parametrize("args", [["--tier", "bogus"], ["--profile", "huge"], ["--publish", "maybe"]])
def test_bad_choices_exit_2_with_the_choices_not_a_traceback(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        study.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == study.BAD_INPUT and "invalid choice" in err and "Traceback" not in err


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_:
        study.parse_args(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert re.search(r"^\s+1\s+the run failed", out, re.M) and re.search(r"^\s+2\s+bad input", out, re.M)
    assert re.search(r"^\s+130\s+interrupted", out, re.M)


# --- one TensorRT decision per run ---------------------------------------------------------------------------------
def test_driver_hands_every_notebook_the_tensorrt_decision(tmp_path, fake_papermill):
    from mvlib.tensorrt import flavours
    run = tmp_path / "run"
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run)]) == study.OK
    decision = flavours.decide("auto", "auto")
    manifest = io.read_json(run / "manifest.json")
    assert manifest["run"]["tensorrt"] == decision
    flavour = decision["trt_flavour"] or "auto"  # no builder: the notebooks say why themselves
    target = decision["trt_target"] or "auto"
    got = {stem: (p["trt_flavour"], p["trt_target"]) for stem, p in fake_papermill.items() if "trt_flavour" in p}
    assert got and set(got.values()) == {(flavour, target)}, got
    assert {p["trt_flavour"] for p in manifest["params"].values() if "trt_flavour" in p} == {flavour}


@pytest.fixture
def h100(monkeypatch):
    """A faked H100 where full TensorRT runs engines and TensorRT-RTX only builds them (helpers/driver_fakes.py)."""
    fake_h100_with_both_flavours(monkeypatch)
    yield
    for cached in (tiers.detect, tiers.runtime_status):  # the real machine's answers again
        cached.cache_clear()


def test_the_tier_follows_the_runs_tensorrt_choice(tmp_path, fake_papermill, h100, capsys):
    """-p trt_flavour tensorrt_rtx on a GPU only full TensorRT runs: tier gpu (RTX runs no engine there), not trt."""
    run = tmp_path / "run"
    assert study.main(["--profile", "smoke", "--run-dir", str(run), "-p", "trt_flavour", "tensorrt_rtx"]) == study.OK
    manifest = io.read_json(run / "manifest.json")
    assert manifest["tier"] == manifest["run"]["expected_tier"] == "gpu"
    assert manifest["tier_limits"]["trt"].endswith(RTX_REFUSES)
    assert study.main(["--profile", "smoke", "--run-dir", str(tmp_path / "r2"), "--tier", "trt",
                       "-p", "trt_flavour", "tensorrt_rtx"]) == study.BAD_INPUT
    assert RTX_REFUSES in capsys.readouterr().err
    assert study.main(["--profile", "smoke", "--run-dir", str(tmp_path / "r3")]) == study.OK  # auto: full TensorRT
    assert io.read_json(tmp_path / "r3" / "manifest.json")["tier"] == "trt"


# --- errors a user can read ------------------------------------------------------------------------------------


def test_a_python3_kernelspec_runs_with_the_drivers_interpreter():
    spec = ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert kernels.kernel_command(spec) == [sys.executable, *spec[1:]]
    other = ["/usr/lib/R/bin/R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"]
    assert kernels.kernel_command(other) == other  # not a Python kernel: left as it is


def test_kernels_run_in_the_drivers_environment_whatever_python3_kernelspec_jupyter_finds_first(tmp_path,
                                                                                                 monkeypatch):
    """A `python3` kernelspec of another environment, which Jupyter finds before this one's (JUPYTER_PATH, the
    user's or the system's folders), and a relative MVLIB_BUILD: the notebook still runs with the driver's
    interpreter, imports this checkout's mvlib and builds into the driver's build folder."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    io.write_json(spec / "kernel.json", {"argv": [str(tmp_path / "other-env" / "bin" / "python"), "-m",
                                                  "ipykernel_launcher", "-f", "{connection_file}"],
                                         "display_name": "Python 3 (another environment)", "language": "python"})
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MVLIB_BUILD", "relative/build")
    seen = tmp_path / "seen.json"
    nb = notebook(tmp_path / "probe.ipynb", 'run_dir = ""',
                  "import json, os, sys\nimport mvlib\n"
                  f"json.dump({{'python': sys.executable, 'mvlib': mvlib.__file__, 'build': os.environ['MVLIB_BUILD'],"
                  f" 'path': os.environ['PYTHONPATH']}}, open({str(seen)!r}, 'w'))")
    kernels.papermill_into(nb, tmp_path / "probe.out.ipynb", cwd=str(paths.NOTEBOOKS), kernel_name="python3",
                           progress_bar=False, kernel_manager_class=kernels.kernel_manager(tmp_path / "kernel.log"))
    got = json.loads(seen.read_text())
    assert Path(got["python"]).resolve() == Path(sys.executable).resolve()
    assert Path(got["mvlib"]).resolve() == paths.ROOT / "mvlib" / "__init__.py"
    assert got["build"] == str(paths.BUILD) and got["path"].split(os.pathsep)[0] == str(paths.ROOT)


@pytest.mark.slow  # a real kernel runs build.sh
def test_a_script_error_reaches_the_console_and_the_manifest(tmp_path, capsys):
    """A bad TRT_INCLUDE: build.sh's own words on the console (not the cell as a bytes literal), the failed
    stage in the manifest."""
    from mvlib.silu import build
    nb = notebook(tmp_path / "05_build.ipynb", 'run_dir = ""',
                  f"%%bash\nTRT_INCLUDE={tmp_path / 'nowhere'} MVLIB_BUILD={tmp_path / 'b'} "
                  f"bash {build.BUILD_SCRIPT}")
    run = tmp_path / "run"
    runfolder.start_run(run, "cpu", {"notebooks": [nb.name]})
    args = study.parse_args(["--profile", "smoke"])
    failures = kernels.execute([nb], {}, run, args, {})
    err = capsys.readouterr().err
    assert "has no NvInferRuntime.h" in err and "point it at TensorRT's include/ folder" in err
    assert "b'" not in err and "returned non-zero exit status" not in err  # no bytes literal of the cell
    assert "exited with status 2" in err and str(run / "logs" / "05_build.log") in err
    manifest = io.read_json(run / "manifest.json")
    kernels.record_failures(manifest, failures)
    (stage,) = [st for st in manifest["stages"].values() if st["status"] == "failed"]
    assert "has no NvInferRuntime.h" in stage["reason"] and stage["source"] == "%%bash"
    assert verdicts.stage_problems(manifest, "cpu")


@pytest.mark.slow  # notebook 01, interrupted a few seconds in
def test_ctrl_c_prints_one_line_records_it_and_keeps_the_complete_run(tmp_path):
    import signal
    import time
    run = tmp_path / "run"
    runfolder.start_run(run, "cpu", {"profile": "smoke", "notebooks": ["01_export.ipynb"], "folder": "run"})
    manifest = io.read_json(run / "manifest.json") | {"outcome": {"status": "complete"}, "rerun": {}}
    io.write_json(run / "manifest.json", manifest)
    proc = subprocess.Popen([sys.executable, "-m", "mvlib.study", "--profile", "smoke", "--tier", "cpu", "--only",
                             "01", "--run-dir", str(run)], cwd=paths.ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            # a shell's background job (CI under nohup or `&`) inherits SIGINT ignored: give the
                            # driver the Ctrl-C a user's terminal sends
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if line.startswith("--> 01_export"):
            break
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == study.INTERRUPTED, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted in 01_export" in lines[0] and "Traceback" not in err, err
    assert f"the last complete run is still {run}" in lines[0]
    assert io.read_json(run / "manifest.json") == manifest  # the complete run is untouched
    record = io.read_json(runfolder.incomplete_of(run) / "manifest.json")["outcome"]
    assert record["status"] == "interrupted" and record["notebook"] == "01_export"
    log = runfolder.incomplete_of(run) / "logs" / "01_export.log"
    holders = [p for p in Path("/proc").glob("[0-9]*/fd/*") if _points_to(p, log)]
    assert not holders, f"a kernel still runs: {holders}"


def _points_to(fd: Path, target: Path) -> bool:
    """Whether a /proc/<pid>/fd entry is `target` (False for entries that vanish or are not readable)."""
    try:
        return Path(os.readlink(fd)) == target
    except OSError:
        return False


@pytest.mark.slow  # a new virtual environment and one editable install (PyPI or its mirror)
def test_the_makefile_installs_without_setuptools_banner(tmp_path):
    """`pip install -q -e .` printed setuptools' editable-install banner; the Makefile's environment hides it."""
    makefile = (paths.ROOT / "Makefile").read_text()
    (filter_,) = re.findall(r"^\$\(VENV\)/\.installed: export PYTHONWARNINGS = (.+)$", makefile, re.M)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    up = subprocess.run(pip + ["--upgrade", "pip"], capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        pytest.skip(f"no package index here: {up.stderr[-300:]}")

    def install(extra_env):
        return subprocess.run(pip + ["--no-deps", "-e", str(paths.ROOT)], capture_output=True, text=True,
                              timeout=600, env={**os.environ, **extra_env})
    plain = install({})
    if "Editable installation" not in plain.stdout + plain.stderr:
        pytest.skip("this pip and setuptools print no banner: nothing to hide")
    quiet = install({"PYTHONWARNINGS": filter_})
    assert quiet.returncode == 0 and quiet.stdout + quiet.stderr == "", quiet.stderr


def test_a_rebuilt_corrupt_engine_is_said_on_the_console(tmp_path, monkeypatch, capsys):
    """The engines table records an engine rebuilt because its cached copy was corrupt; the driver says so too."""
    from mvlib.tensorrt import table
    engines = tmp_path / table.ENGINES_TABLE
    row = {"notebook": "03_fp32_fp16", "engine": "fp32", "status": "rebuilt",
           "messages": "rebuilt: engine.plan is corrupt | WARNING: x"}
    io.write_csv(engines, pd.DataFrame([row]).reindex(columns=table.ENGINE_COLUMNS))
    fake_notebooks(monkeypatch, tables={"03_fp32_fp16": [engines]})
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(tmp_path / "run")]) == study.OK
    assert table.rebuilt_line("03_fp32_fp16", "fp32", "engine.plan is corrupt") in capsys.readouterr().out


def test_an_interruption_is_one_line_and_recorded(tmp_path, monkeypatch, capsys):
    import signal
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    run = tmp_path / "run"
    fake_notebooks(monkeypatch)
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run)]) == study.OK
    complete = io.read_json(run / "manifest.json")
    capsys.readouterr()
    fake_notebooks(monkeypatch, interrupt="03_fp32_fp16")
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run)]) == study.INTERRUPTED
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("study: interrupted in 03_fp32_fp16"), lines
    assert io.read_json(run / "manifest.json") == complete
    assert io.read_json(runfolder.incomplete_of(run) / "manifest.json")["outcome"]["notebook"] == "03_fp32_fp16"
    assert signal.getsignal(signal.SIGINT) is before  # the handler the process had is back afterwards


# --- faults a user's machine brings: two drivers at once, SIGTERM, a full disk (issue 26) ------------------------
TESTS = Path(__file__).resolve().parent / "helpers"


def driver_process(run: Path, ready: Path) -> subprocess.Popen:
    """Another process running the driver on `run` with fake notebooks (driver_fakes); its first notebook starts a
    child in a process group of its own, as a kernel does, writes the child's PID into `ready` and waits."""
    import signal
    script = (f"import sys, pytest; sys.path.insert(0, {str(TESTS)!r}); from driver_fakes import fake_notebooks; "
              f"from mvlib import study; fake_notebooks(pytest.MonkeyPatch(), hang='01_export', ready={str(ready)!r}); "
              "sys.exit(study.main(sys.argv[1:]))")

    def as_from_a_terminal():  # a background job (CI under nohup or &) inherits SIGINT and SIGHUP ignored
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
    return subprocess.Popen([sys.executable, "-c", script, "--profile", "smoke", "--tier", "cpu", "--run-dir",
                             str(run)], cwd=paths.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_terminal)


def wait_for_pid(ready: Path, proc: subprocess.Popen) -> int:
    """The PID the driver's hanging notebook wrote into `ready`, once it has (the driver failing first: its error)."""
    while not (ready.is_file() and ready.read_text()):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    return int(ready.read_text())


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie waiting for its parent to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def complete_run_in(run: Path) -> dict:
    """A complete run of every notebook in `run` (as the study leaves one); its manifest."""
    runfolder.start_run(run, "cpu", {"profile": "smoke", "notebooks": [nb.name for nb in NOTEBOOKS],
                                     "folder": run.name})
    manifest = io.read_json(run / "manifest.json") | {"outcome": {"status": "complete"}, "rerun": {}}
    io.write_json(run / "manifest.json", manifest)
    return manifest


def test_a_second_driver_for_the_same_folder_is_refused_at_once_naming_the_first(tmp_path, fake_papermill, capsys):
    """Two studies into one run folder: the second exits 2 at once naming the first (its PID), which goes on
    undisturbed; once the first is killed, its stale lock blocks nobody."""
    import signal
    run = tmp_path / "run"
    first, kid = driver_process(run, tmp_path / "ready"), None
    try:
        kid = wait_for_pid(tmp_path / "ready", first)
        writing = io.read_json(runfolder.incomplete_of(run) / "manifest.json")
        assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run)]) == study.BAD_INPUT
        err = capsys.readouterr().err
        assert f"{run} is being written by another study (pid {first.pid}:" in err and "--run-dir" in err, err
        assert fake_papermill == {} and first.poll() is None
        assert io.read_json(runfolder.incomplete_of(run) / "manifest.json") == writing  # the first's run, untouched
    finally:
        first.kill()  # SIGKILL: no handler runs, the lock is left to the kernel
        if kid is not None:
            os.killpg(kid, signal.SIGKILL)
        first.communicate()
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run)]) == study.OK
    assert verdicts.outcome(io.read_json(run / "manifest.json")) == "complete"


@pytest.mark.parametrize("sig, code, word", [("SIGTERM", 143, "terminated (SIGTERM)"),
                                              ("SIGHUP", 129, "hung up (SIGHUP)")])
def test_sigterm_and_sighup_end_a_run_as_ctrl_c_does(tmp_path, sig, code, word):
    """`timeout`, a scheduler or `docker stop` (SIGTERM) and a closed terminal (SIGHUP): one line, the outcome
    recorded with the signal, the kernels' process groups ended, the last complete run untouched."""
    import signal
    run = tmp_path / "run"
    complete = complete_run_in(run)
    proc = driver_process(run, tmp_path / "ready")
    kid = wait_for_pid(tmp_path / "ready", proc)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == code and len(lines) == 1, err
    assert lines[0].startswith(f"study: {word} in 01_export after") and "Traceback" not in err
    assert f"the last complete run is still {run}" in lines[0]
    assert io.read_json(run / "manifest.json") == complete
    stopped = io.read_json(runfolder.incomplete_of(run) / "manifest.json")
    assert stopped["outcome"]["status"] == "interrupted" and stopped["outcome"]["signal"] == sig
    assert set(stopped["timing"]["notebooks_s"]) == {"01_export"}
    assert not alive(kid), "the kernel's process group still runs"


def test_the_manifest_and_the_console_say_where_the_time_went(tmp_path, monkeypatch, capsys):
    """Each notebook's wall seconds and the run's total beside the stages' seconds; the driver ends with the
    slowest stages, slowest first."""
    run = tmp_path / "run"
    fake_notebooks(monkeypatch, work={"04_int8": 0.3, "02_graph": 0.1})
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run)]) == study.OK
    manifest = io.read_json(run / "manifest.json")
    books = manifest["timing"]["notebooks_s"]
    assert list(books) == [nb.stem for nb in NOTEBOOKS]
    assert books["04_int8"] + 0.05 >= manifest["stages"]["04_int8/work"]["seconds"] >= 0.3  # books: to 0.1 s
    assert manifest["timing"]["total_s"] >= sum(books.values()) - 0.1 * len(books)  # each rounded to 0.1 s
    out = capsys.readouterr().out.splitlines()
    start = out.index("slowest stages:")
    assert out[start - 1].startswith("time: ") and "04 " in out[start - 1]
    assert [ln.split()[-1] for ln in out[start + 1:start + 3]] == ["04_int8/work", "02_graph/work"]


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs), mounted for the test: skipped where this machine cannot mount one."""
    disk = tmp_path / "small disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); "
                    "test_a_write_cut_short_by_a_full_disk covers ENOSPC without one")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def whole_files(folder: Path) -> list[str]:
    """Every file under `folder` that is not a whole file of its kind (JSON, CSV, notebook), or a leftover
    temporary one; [] when all are whole."""
    bad = []
    for f in folder.rglob("*"):
        if not f.is_file() or f.name in ("ballast", rundir.MARKER):
            continue
        try:
            if ".tmp" in f.name or ".partial" in f.name:
                raise ValueError("a temporary file left behind")
            if f.suffix in (".json", ".ipynb"):
                json.loads(f.read_text())
            elif f.suffix == ".csv":
                pd.read_csv(f)
        except ValueError as err:
            bad.append(f"{f}: {err}")
    return bad


def test_a_run_on_a_full_disk_says_so_in_one_line(small_disk, monkeypatch, capsys):
    """The run folder's disk fills during notebook 02: one line naming the disk and the file being written, exit
    code 1, and no file there cut short (the manifest before the failure stays whole)."""
    run = small_disk / "run"
    fake_notebooks(monkeypatch, fill="02_graph")
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run)]) == study.FAILED
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith(f"study: no space left on {small_disk} (0 MiB free of 2 MiB) while writing "
                               f"{runfolder.incomplete_of(run) / 'manifest.json'}"), lines[0]
    assert "no space to record it in its manifest either" in lines[0]
    assert whole_files(small_disk) == []
    assert set(io.read_json(runfolder.incomplete_of(run) / "manifest.json")["params"]) == {"01_export", "02_graph"}


def test_a_write_cut_short_by_a_full_disk(tmp_path, monkeypatch, capsys):
    """ENOSPC half-way through a table the driver writes: one line naming it, the failure recorded in the manifest
    (there is space for that), the table never under its own name."""
    import errno
    run = tmp_path / "run"
    fake_notebooks(monkeypatch)

    def half_then_full(frame, path, **kw):
        Path(path).write_text("batch,img_s\n1,")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full)
    assert study.main(["--profile", "smoke", "--tier", "cpu", "--run-dir", str(run)]) == study.FAILED
    table = runfolder.incomplete_of(run) / "results" / "rerun_cache.csv"
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"no space left on {io.mount_point(tmp_path)}" in lines[0], lines
    assert f"while writing {table}" in lines[0] and "either" not in lines[0]
    outcome = io.read_json(runfolder.incomplete_of(run) / "manifest.json")["outcome"]
    assert outcome["status"] == "failed" and outcome["problems"][0].startswith("no space left on")
    assert not table.exists() and whole_files(tmp_path) == []


def test_an_executed_notebook_cut_short_never_takes_its_name(tmp_path, monkeypatch):
    """papermill writes into a partial file: a notebook cut short by a full disk is removed, a whole one (also of a
    failed cell) takes its name."""
    import errno
    executed = tmp_path / "notebooks" / "02_graph.ipynb"
    executed.parent.mkdir()
    whole = nbformat.writes(nbformat.v4.new_notebook())

    def cut_short(nb, out, **kw):
        Path(out).write_text(whole[: len(whole) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(papermill, "execute_notebook", cut_short)
    with pytest.raises(OSError):
        kernels.papermill_into(NOTEBOOKS[1], executed)
    assert list(executed.parent.iterdir()) == []

    def failed_cell(nb, out, **kw):
        Path(out).write_text(whole)
        raise papermill.PapermillExecutionError(3, 3, "x = 1 / 0", "ZeroDivisionError", "division by zero", [])
    monkeypatch.setattr(papermill, "execute_notebook", failed_cell)
    with pytest.raises(papermill.PapermillExecutionError):
        kernels.papermill_into(NOTEBOOKS[1], executed)
    assert [p.name for p in executed.parent.iterdir()] == [executed.name]


@pytest.mark.parametrize("target, code, says", [("study", 1, "the run failed"), ("study", 130, "interrupted"),
                                                ("publish", 2, "bad input or a refused publish")])
def test_make_says_the_drivers_exit_code(tmp_path, target, code, says):
    """make exits 2 whenever a recipe fails; `make study` and `make publish` say the driver's own code and what it
    means. A stand-in interpreter exits with the code, so nothing is installed or run."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f"#!/bin/sh\nexit {code}\n")
    (venv / "bin" / "python").chmod(0o755)
    installed = venv / ".installed"  # newer than pyproject.toml: make installs nothing
    installed.touch()
    stamp = (paths.ROOT / "pyproject.toml").stat().st_mtime + 1
    os.utime(installed, (stamp, stamp))
    proc = subprocess.run(["make", "-C", str(paths.ROOT), target, f"VENV={venv}"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert f"make: python -m mvlib.study exited {code} ({says}); make itself exits 2 on any failure" in proc.stderr


def test_after_a_stop_signal_the_libraries_log_nothing_until_the_block_ends(caplog):
    """Ctrl-C (or SIGTERM/SIGHUP) inside the driver's block: nbclient's "Kernel died while waiting for execute reply"
    and asyncio's "Task exception was never retrieved" for the kernels the driver then stops once surrounded its one
    line (a CI run caught it); logging is off from the signal to the block's end, and on again after it."""
    import logging
    import signal
    import time
    # a shell's background job (CI under nohup or `&`) inherits SIGINT ignored, which the block keeps: give this
    # process the Ctrl-C a user's terminal sends
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with study.stops_as_ctrl_c():
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            logging.getLogger("asyncio").error("Task exception was never retrieved")
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert "never retrieved" not in caplog.text
    logging.getLogger("asyncio").error("logging is back")
    assert "logging is back" in caplog.text
