"""The driver, the run manifest and notebook hygiene."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

from mvlib import io, paths, study, tiers, trt
from mvlib.run import Run, StageSkipped

NOTEBOOKS = sorted(paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_notebooks_exist_in_order():
    assert [nb.name[:2] for nb in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(nb_path):
    """Stored without outputs, exactly one `parameters` cell, every parameter visible to papermill."""
    nb = nbformat.read(nb_path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear outputs before committing"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{len(tagged)} cells tagged parameters"
    assigned = set(re.findall(r"^(\w+)\s*=", tagged[0].source, flags=re.M))
    assert set(papermill.inspect_notebook(str(nb_path))) == assigned, "papermill cannot parse a parameter line"
    assert "run_dir" in assigned
    assert nb.cells[0].cell_type == "markdown" and "Creates" in nb.cells[0].source
    assert not any("sys.path" in c.source for c in code), "no sys.path hacks: import mvlib"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_defaults_are_the_full_profile(nb_path):
    """`make lab` (the notebook's defaults) measures what `make study` (the full profile) measures."""
    declared = papermill.inspect_notebook(str(nb_path))
    full = study.load_profile("full")
    for name, value in full.items():
        if name in declared:
            assert eval(declared[name]["default"]) == value, f"{nb_path.stem}.{name} differs from full.yaml"


def test_run_records_the_parameters_cell_from_globals(tmp_path):
    names = {"variant": "mobilevit_xs", "batch_max": 8, "run_dir": "x", "pd": object(), "not_a_param": 3}
    run = Run(tmp_path / "r", "01_export", params=names)
    recorded = io.read_json(run.manifest_path)["params"]["01_export"]
    assert recorded == {"variant": "mobilevit_xs", "batch_max": 8}  # declared names only, run_dir left out


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_profiles_match_notebook_parameter_types(nb_path):
    """A profile value handed to a notebook has the type of that notebook's default."""
    declared = papermill.inspect_notebook(str(nb_path))
    for profile in ("full", "smoke"):
        for name, value in study.load_profile(profile).items():
            if name in declared:
                default = eval(declared[name]["default"])  # literals from our own notebooks
                assert type(value) is type(default), f"{profile}.{name}: {value!r} vs default {default!r}"


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(SystemExit, match="full.*smoke"):
        study.load_profile("huge")


def test_stage_problems_follow_the_expected_tier():
    manifest = {"stages": {
        "01/a": {"tier": "cpu", "status": "ok", "reason": ""},
        "03/engine": {"tier": "trt", "status": "skipped", "reason": "TensorRT not installed"},
        "05/kernel": {"tier": "gpu", "status": "skipped", "reason": "no CUDA GPU"},
    }}
    assert study.stage_problems(manifest, "cpu") == []
    assert [p.split(":")[0] for p in study.stage_problems(manifest, "gpu")] == ["05/kernel"]
    assert len(study.stage_problems(manifest, "trt")) == 2
    manifest["stages"]["01/a"]["status"] = "failed"
    assert study.stage_problems(manifest, "cpu")[0].startswith("01/a: failed")


def test_engine_builds_fail_the_run_on_a_machine_with_a_builder_whatever_its_tier():
    manifest = {"stages": {
        "03/engines": {"tier": "build", "status": "skipped", "reason": "no TensorRT builder", "no_builder": True},
        "05/plugin_engines": {"tier": "build", "status": "skipped", "reason": "the TensorRT plugin was not built"},
        "04/engines": {"tier": "build", "status": "ok", "reason": ""},
    }}
    for tier in ("cpu", "gpu", "trt"):
        assert [p.split(":")[0] for p in study.stage_problems(manifest, tier)] == ["05/plugin_engines"]
    manifest["stages"]["04/engines"]["status"] = "failed"
    assert len(study.stage_problems(manifest, "cpu")) == 2


def test_a_missing_builder_is_recorded_as_such(tmp_path):
    from mvlib import trt as mvtrt
    run = Run(tmp_path / "r", "99_test")

    def no_builder():
        raise mvtrt.NoBuilder("no TensorRT builder: TensorRT-RTX not installed")
    assert run.stage("engines", "build", no_builder) is None
    entry = io.read_json(run.manifest_path)["stages"]["99_test/engines"]
    assert entry["tier"] == "build" and entry["status"] == "skipped" and entry["no_builder"] is True


def test_every_model_file_notebook_06_reads_is_written_by_an_earlier_notebook(smoke_run):
    """06 times the FP32/FP16/INT8 models and their plugin rewrites: each exists after 01-05, and each was built."""
    from mvlib import export
    manifest = io.read_json(smoke_run / "manifest.json")
    exported, _ = export.ensure_exported("mobilevit_xxs", "random", 256, 17, seed=0)
    read = [exported.model(p, plugin=k) for p in export.PRECISIONS for k in (False, True)]
    missing = [p.name for p in read if not p.is_file()]
    assert not missing, f"notebook 06 reads files nothing wrote: {missing}"
    names = {f"plugin_{p}" if k else p for p in export.PRECISIONS for k in (False, True)}
    assert {f"06_benchmark/tensorrt_{n}" for n in names} <= set(manifest["stages"])
    if trt.builder_status()[0]:
        table = pd.read_csv(smoke_run / "results" / trt.ENGINES_TABLE)
        built = table[table["status"].isin(["built", "reused"])]
        assert names <= set(built["engine"]), f"not built: {names - set(built['engine'])}"
        assert set(table.set_index("engine").loc[sorted(names), "onnx"]) == {p.name for p in read}


@pytest.mark.skipif(not trt.builder_status()[0], reason="no TensorRT builder here")
def test_smoke_run_built_every_engine_for_real(smoke_run):
    table = pd.read_csv(smoke_run / "results" / trt.ENGINES_TABLE)
    assert (table["status"].isin(["built", "reused"])).all(), table[["engine", "status", "messages"]]
    assert {"fp32", "fp16", "int8", "plugin_fp32", "plugin_fp16", "plugin_int8"} <= set(table["engine"])
    assert any(e.startswith("int8.all.") for e in table["engine"])  # the policies of the accuracy table too
    for r in table.itertuples():
        assert Path(r.path).stat().st_size == r.engine_bytes > 1_000_000 and trt.has_plan_header(r.path, r.flavour)
        assert r.build_seconds > 0 and r.network_layers > 100
    plugin_rows = table[table["engine"].str.startswith("plugin_")]
    assert (plugin_rows["plugin_layers"] == plugin_rows["plugin_nodes_in_onnx"]).all()
    assert (plugin_rows["plugin_layers"] > 0).all()
    runs = trt.select().runs_here()[0]
    assert table["ran"].astype(bool).any() == runs  # a built engine is never reported as run
    if not runs:
        assert table["accuracy"].str.startswith("skipped:").all() and table["timing"].str.startswith("skipped:").all()
    manifest = io.read_json(smoke_run / "manifest.json")
    assert manifest["stages"]["03_fp32_fp16/engines"]["status"] == "ok"


def test_run_records_ok_skipped_failed(tmp_path):
    run = Run(tmp_path / "r", "99_test", params={"x": 1})
    assert run.stage("fine", "cpu", lambda a: a + 1, 1) == 2

    def skip():
        raise StageSkipped("no images")
    assert run.stage("skips", "cpu", skip) is None
    with pytest.raises(ZeroDivisionError):
        run.stage("breaks", "cpu", lambda: 1 / 0)
    stages = io.read_json(run.manifest_path)["stages"]
    assert stages["99_test/fine"]["status"] == "ok"
    assert stages["99_test/skips"] == {"tier": "cpu", "status": "skipped", "reason": "no images"}
    assert stages["99_test/breaks"]["status"] == "failed" and "ZeroDivisionError" in stages["99_test/breaks"]["reason"]


@pytest.mark.skipif(tiers.detect() != "cpu", reason="checks the skip path of a CPU-only machine")
def test_gpu_stage_is_skipped_with_reason_on_cpu(tmp_path):
    run = Run(tmp_path / "r", "99_test")
    assert run.stage("kernel", "gpu", lambda: pytest.fail("must not run")) is None
    entry = io.read_json(run.manifest_path)["stages"]["99_test/kernel"]
    assert entry["status"] == "skipped" and entry["reason"]


@pytest.mark.skipif(tiers.detect() != "cpu", reason="needs a machine below the gpu tier")
def test_driver_refuses_a_tier_the_machine_cannot_reach(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mvlib.study", "--profile", "smoke", "--tier", "gpu",
                           "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cpu" in proc.stderr and "gpu" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.fixture
def fake_papermill(monkeypatch):
    """The driver in this process with papermill's execution replaced: each notebook opens its Run, records
    the weights it would load and nothing else. The parameters each notebook got, by notebook stem."""
    from mvlib import model
    got = {}

    def execute(nb, out, parameters, **kw):
        stem = Path(nb).stem
        got[stem] = dict(parameters) | {"MVLIB_PROGRESS": os.environ.get("MVLIB_PROGRESS")}
        run = Run(parameters["run_dir"], stem, params=dict(parameters))
        run.set("weights", model.random_info(parameters["seed"]) if parameters["weights"] == "random" else
                {"source": parameters["weights"]})
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(study, "expose_tensorrt_libraries", lambda flavour: None)  # keep this process's environment
    monkeypatch.setenv("MVLIB_PROGRESS", "")
    monkeypatch.delenv("MVLIB_PROGRESS")
    return got


def test_driver_decides_the_weights_once_for_every_notebook(tmp_path, fake_papermill, capsys):
    """Full profile (weights auto), hub unreachable (MVLIB_OFFLINE): every notebook gets 'random', recorded once."""
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="WEIGHTS FALLBACK"):
        rc = study.main(["--profile", "full", "--tier", "cpu", "--run-dir", str(run), "--publish", "no"])
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


def test_run_records_weights_as_the_driver_decided(tmp_path):
    from mvlib import model
    plain = Run(tmp_path / "a", "99_test")
    plain.set("weights", model.random_info(0))
    assert "fallback_reason" not in io.read_json(plain.manifest_path)["weights"]
    decided = {"requested": "auto", "chosen": "random", "fallback": True, "reason": "hub down",
               "label": model.random_info(0, "hub down")["label"]}
    io.write_json(tmp_path / "b" / "manifest.json", {"run": {"weights": decided}, "stages": {}, "params": {}})
    run = Run(tmp_path / "b", "99_test")
    run.set("weights", model.random_info(0))
    assert io.read_json(run.manifest_path)["weights"] == model.random_info(0, "hub down")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "table.csv"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_smoke_run_manifest(smoke_run):
    """The smoke run ran every notebook and wrote a complete manifest."""
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert manifest["tier"] == "cpu" and manifest["run"]["expected_tier"] == "cpu"
    assert manifest["run"]["profile"] == "smoke"
    assert {"torch", "onnx", "onnxruntime", "nvidia-modelopt", "polygraphy", "tensorrt", "tensorrt_rtx"} \
        <= set(manifest["versions"])
    for name in trt.FLAVOUR_NAMES:  # what this machine imports, whatever it is: recorded, never faked
        found, _ = trt.installed(name)
        assert manifest["versions"][name] == (found.version if found else None)
    assert manifest["weights"]["source"] == "random" and manifest["weights"]["tag"] == "random-seed0"
    assert manifest["run"]["weights"]["requested"] == manifest["run"]["weights"]["chosen"] == "random"
    assert {p["weights"] for p in manifest["params"].values()} == {"random"}  # one choice for every notebook
    assert sorted(manifest["params"]) == sorted(nb.stem for nb in NOTEBOOKS)
    smoke = study.load_profile("smoke")  # what papermill injected is what the manifest records
    for nb, params in manifest["params"].items():
        declared = set(papermill.inspect_notebook(str(paths.NOTEBOOKS / f"{nb}.ipynb"))) - {"run_dir"}
        assert set(params) == declared
        assert all(params[k] == v for k, v in smoke.items() if k in params), nb
    assert all(st["status"] in ("ok", "skipped") for st in manifest["stages"].values())
    assert all(st["reason"] for st in manifest["stages"].values() if st["status"] == "skipped")
    assert sorted(p.name for p in (smoke_run / "notebooks").iterdir()) == [nb.name for nb in NOTEBOOKS]


def test_notebook_01_creates_what_it_lists(smoke_run):
    assert sorted(p.name for p in (smoke_run / "results").glob("01_*")) == ["01_export_accuracy.csv",
                                                                        "01_export_model.csv"]
    table = io.read_json(smoke_run / "manifest.json")["stages"]
    assert table["01_export/export"]["status"] == "ok" and table["01_export/verify_onnxrt"]["status"] == "ok"
    import pandas as pd
    acc = pd.read_csv(smoke_run / "results" / "01_export_accuracy.csv")
    assert list(acc["batch"]) == [1, 4] and (acc["top1_agreement"] == 1.0).all()
