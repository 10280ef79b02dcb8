"""mvlib.driver.params: profiles, the table of shared parameters the notebooks' parameters cells follow, value rules."""
import ast
import re
from collections import Counter

import nbformat
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

