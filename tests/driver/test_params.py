"""mvlib.driver.params: profiles, the parameters as the notebooks' parameters cells declare them, value rules."""
import ast
import re

import nbformat
import papermill
import pytest

from mvlib import stages
from mvlib.driver import params

NOTEBOOKS = stages.all_notebooks()
LINE = re.compile(r"^(\w+)\s*=\s*(.+?)\s+#\s*(.*)$")


def parameter_lines(nb_path) -> dict[str, tuple[object, str]]:
    """name -> (default, comment) from the notebook's `parameters` cell."""
    nb = nbformat.read(nb_path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    found = {}
    for line in cell.source.splitlines():
        m = LINE.match(line)
        if m:
            found[m.group(1)] = (ast.literal_eval(m.group(2)), m.group(3))
    return found


def test_every_parameter_is_declared_alike_wherever_it_is_declared():
    """A parameter has one default and one meaning: every parameters cell that declares it writes both alike."""
    assert params.disagreements(params.declarations(NOTEBOOKS)) == []


def test_the_table_is_what_the_cells_say():
    """The meanings are the cells' own comments, as papermill reads them (no hand-kept copy)."""
    table = params.table()
    for nb_path in NOTEBOOKS:
        for name, (default, comment) in parameter_lines(nb_path).items():
            assert table[name] == params.Param(default, comment), f"{nb_path.stem}.{name}"
    assert all(p.meaning for p in table.values()), "every parameter line ends with a comment saying what it means"
    assert set(params.defaults()) == set(table) - {"run_dir"}


def test_a_parameter_declared_otherwise_in_another_notebook_is_named(tmp_path):
    """A copy of a notebook whose line for batch_max says another default and meaning is caught, by name."""
    src = next(nb for nb in NOTEBOOKS if "batch_max" in parameter_lines(nb))
    nb = nbformat.read(src, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = re.sub(r"^batch_max\s*=.*$", "batch_max = 64  # the largest batch", cell.source, flags=re.M)
    other = tmp_path / "99_other.ipynb"
    nbformat.write(nb, other)
    found = params.disagreements(params.declarations([src, other]))
    assert len(found) == 1 and found[0].startswith("batch_max: ") and "99_other" in found[0], found


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_defaults_are_the_full_profile(nb_path):
    """`make lab` (the notebook's defaults) measures what `make study` (the full profile) measures."""
    declared = papermill.inspect_notebook(str(nb_path))
    full = params.load_profile("full")
    for name, value in full.items():
        if name in declared:
            assert eval(declared[name]["default"]) == value, f"{nb_path.stem}.{name} differs from full.yaml"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_profiles_match_notebook_parameter_types(nb_path):
    """A profile value handed to a notebook has the type of that notebook's default."""
    declared = papermill.inspect_notebook(str(nb_path))
    for profile in ("full", "smoke"):
        for name, value in params.load_profile(profile).items():
            if name in declared:
                default = eval(declared[name]["default"])  # literals from our own notebooks
                assert type(value) is type(default), f"{profile}.{name}: {value!r} vs default {default!r}"


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(params.BadInput, match="full.*smoke"):
        params.load_profile("huge")


def test_the_driver_choices_are_the_notebooks_own():
    """Choices the driver checks are those the modules define (no copy drifts)."""
    from mvlib import quant_eval
    from mvlib.silu import gpu_checks
    assert params.CHOICES["granularity"] == quant_eval.GRANULARITIES
    assert set(params.CHOICES["swap_dtypes"]) == set(gpu_checks.TOLERANCE)  # the dtypes the kernel is checked in
    assert set(params.AT_LEAST) | set(params.POSITIVE) | set(params.BATCH_LISTS) | set(params.CHOICES) \
        <= set(params.defaults()), "a rule for a parameter no notebook has"
