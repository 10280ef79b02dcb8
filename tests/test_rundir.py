"""mvlib.rundir: one home for the run folder (marker, claim, manifest) that the notebooks' Run and the driver share;
the notebooks' parameters read one way, as papermill reads them."""
import subprocess
import sys

import nbformat

from mvlib import io, paths, rundir, stages
from mvlib.driver import runfolder
from mvlib.run import Run


def test_the_manifest_is_read_and_written_in_one_place(tmp_path):
    assert rundir.read_manifest(tmp_path) is None  # none there
    (tmp_path / rundir.MANIFEST).write_text("{not json")
    assert rundir.read_manifest(tmp_path) is None
    io.write_json(tmp_path / rundir.MANIFEST, ["a list"])
    assert rundir.read_manifest(tmp_path) is None  # not a manifest of the study's
    rundir.write_manifest(tmp_path, {"stages": {}, "params": {"01_export": {"seed": 1}}})
    assert rundir.manifest(tmp_path) == rundir.read_manifest(tmp_path) == {"stages": {}, "params": {"01_export":
                                                                                                 {"seed": 1}}}
    assert sorted(p.name for p in tmp_path.iterdir()) == [rundir.MANIFEST]  # no temporary file left beside it


def test_a_notebook_joins_the_folder_the_driver_started(tmp_path):
    """The driver's start and the notebook's Run write one manifest, in one marked folder."""
    folder = tmp_path / "run.incomplete"
    runfolder.start_run(folder, "cpu", {"profile": "smoke", "tensorrt": {"trt_flavour": "tensorrt_rtx"}})
    assert rundir.is_study_run(folder)
    run = Run(folder, "01_export", params={"variant": "mobilevit_xxs", "run_dir": str(folder)})
    found = rundir.manifest(folder)
    assert found["run"]["profile"] == "smoke" and found["params"] == {"01_export": {"variant": "mobilevit_xxs"}}
    assert run.trt[0] == "tensorrt_rtx" and set(found["tier_limits"]) == {"cpu", "gpu", "trt"}


def test_the_driver_takes_no_folder_fact_from_the_notebooks_run():
    """The driver imports mvlib.rundir for the run folder, never the notebooks' Run (mvlib.run)."""
    code = "import sys, mvlib.study; print('mvlib.run' in sys.modules, 'mvlib.rundir' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_a_run_records_the_parameters_papermill_reads(tmp_path, monkeypatch):
    """An annotated line (`img_size: int = 224`) is a parameter to papermill, so the manifest records it too."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3 (ipykernel)"}})
    nb.cells = [nbformat.v4.new_code_cell("run_dir = ''  # run folder\nimg_size: int = 224  # input size\n",
                                          metadata={"tags": ["parameters"]})]
    monkeypatch.setattr(paths, "NOTEBOOKS", tmp_path / "notebooks")
    paths.NOTEBOOKS.mkdir()
    nbformat.write(nb, paths.NOTEBOOKS / "99_typed.ipynb")
    assert set(stages.parameters("99_typed")) == {"run_dir", "img_size"}
    assert stages.parameters("98_absent") is None
    run = Run(tmp_path / "r", "99_typed", params={"img_size": 224, "run_dir": "x", "np": object()})
    assert rundir.manifest(run.dir)["params"]["99_typed"] == {"img_size": 224}
