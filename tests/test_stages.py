"""mvlib.stages and mvlib.skips: which notebook makes which artifact, and a skip that says what it needs."""
import pytest

from mvlib import paths, stages
from mvlib.skips import StageSkipped


def test_every_producer_is_a_notebook_that_exists():
    stems = {nb.stem for nb in paths.NOTEBOOKS.glob("*.ipynb")}
    assert set(stages.PRODUCERS.values()) <= stems


def test_producer_takes_a_name_or_a_path_and_refuses_an_unknown_one(tmp_path):
    assert stages.producer("model.int8.onnx") == "04_int8"
    assert stages.producer(tmp_path / "model.fp16.onnx") == "03_fp32_fp16"
    with pytest.raises(ValueError, match="PRODUCERS"):
        stages.producer("model.int4.onnx")


def test_missing_is_a_skip_naming_its_artifact_and_maker(tmp_path):
    skip = stages.missing(tmp_path / "model.int8.onnx", "run it first")
    assert isinstance(skip, StageSkipped) and skip.needs == ("model.int8.onnx",)
    assert str(skip) == "model.int8.onnx not found (notebook 04_int8 makes it; run it first)"


def test_needs_is_a_tuple_of_artifacts():
    assert StageSkipped("x", needs="model.onnx").needs == ("model.onnx",)
    assert StageSkipped("x").needs == ()
    assert stages.short("01_export") == "01" and stages.short("calibration") == "calibration"


def test_notebooks_run_in_file_name_order_whatever_their_names(tmp_path, monkeypatch):
    """A new notebook is named to sort into place; no code lists notebook numbers."""
    for name in ("02_graph", "01_export", "03b_calibration", "appendix", ".~scratch"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    monkeypatch.setattr(paths, "NOTEBOOKS", tmp_path)
    assert [nb.stem for nb in stages.all_notebooks()] == ["01_export", "02_graph", "03b_calibration", "appendix"]
    assert [nb.stem for nb in stages.select("1,03b,appendix")] == ["01_export", "03b_calibration", "appendix"]
    assert [nb.stem for nb in stages.select("02_graph")] == ["02_graph"]
    with pytest.raises(ValueError, match="07 names no notebook; the notebooks are 01_export, 02_graph"):
        stages.select("07")


def test_the_studys_own_notebooks_are_all_found():
    assert [stages.short(nb.stem) for nb in stages.all_notebooks()] == ["01", "02", "03", "04", "05", "06"]


def test_every_precisions_files_have_their_maker_from_the_table_of_precisions():
    from mvlib import precisions
    for p in precisions.TABLE.values():
        assert stages.producer(p.artifact) == p.notebook
        assert p.plugin_artifact is None or (  # a precision may have no plugin model
            stages.producer(p.plugin_artifact) == (stages.GRAPH if p.name == "fp32" else stages.PLUGIN))


@pytest.mark.parametrize("notebook", [nb.stem for nb in stages.all_notebooks()])
def test_parameter_names_are_papermills_names_without_papermill(notebook):
    """The notebooks' first cell reads its parameters' names with ast (papermill and nbformat take seconds to
    import): the same names, in the same order, as papermill's own reading of the cell."""
    assert stages.parameter_names(notebook) == list(stages.parameters(notebook))


def test_parameter_names_of_a_cell_with_annotations_comments_and_no_parameters(tmp_path):
    """Annotated and plain assignments count, comments and other statements do not; no tagged cell: no names."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('# parameters\nvariant: str = "mobilevit_s"  # a comment\nseed = 0\n'
                                     'seed = 1\nprint(seed)\n')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), cell]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert stages.parameter_names(path) == ["variant", "seed"]
    nb.cells = [nb.cells[0]]
    nbformat.write(nb, path)
    assert stages.parameter_names(path) == []
    assert stages.parameter_names(tmp_path / "missing.ipynb") is None
