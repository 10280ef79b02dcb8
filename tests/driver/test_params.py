"""mvlib.driver.params: profiles, the table of shared parameters the notebooks' parameters cells follow, value rules."""
import ast
import re
from collections import Counter

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


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_parameters_cell_declares_a_shared_parameter_as_the_table_says(nb_path):
    """A shared parameter has one default and one meaning, written in params.SHARED; every cell repeats both."""
    for name, (default, comment) in parameter_lines(nb_path).items():
        if name in params.SHARED:
            want = params.SHARED[name]
            assert (default, comment) == (want.default, want.meaning), f"{nb_path.stem}.{name}: write it as SHARED says"


def test_every_parameter_two_notebooks_declare_is_in_the_table():
    counts = Counter(name for nb in NOTEBOOKS for name in parameter_lines(nb))
    assert {name for name, n in counts.items() if n > 1} <= set(params.SHARED)


def test_the_tables_defaults_are_the_full_profiles_values():
    full = params.load_profile("full")
    assert {k: v.default for k, v in params.SHARED.items() if k in full} == {k: full[k] for k in params.SHARED
                                                                             if k in full}


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
