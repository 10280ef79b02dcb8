"""What the README and the docs/ pages say about the commands, the tiers, the notebooks, JupyterLab and the committed
results is what they do and hold."""
import re

import pytest

from mvlib import io, paths, stages, study, tiers

README = (paths.ROOT / "README.md").read_text()
DOCS = paths.ROOT / "docs"
MAKEFILE = (paths.ROOT / "Makefile").read_text()


def _page(name: str) -> str:
    """A docs page with its lines joined, so a sentence is found whatever its wrapping."""
    return " ".join((DOCS / name).read_text().split())


def test_the_readme_is_read_in_five_minutes():
    assert len(README.splitlines()) <= 200, "move reference into docs/ and link it"


def test_the_readme_starts_with_the_smoke_profile():
    first_block = re.search(r"^```bash\n(.*?)^```", README, re.M | re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands[:3] == ["make study PROFILE=smoke", "make study", "make test"], commands


def test_the_readme_tiers_are_the_tiers():
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| [^|]+ \|$", README[README.index("## The tiers"):], re.M)
    assert rows == list(tiers.TIERS)


def test_the_readme_notebook_table_lists_every_notebook():
    section = README[README.index("## The notebooks"):]
    rows = re.findall(r"^\| `(\d\d_\w+)` \|", section, re.M)
    assert rows == [nb.stem for nb in stages.all_notebooks()]


def test_the_jupyterlab_address_is_the_one_jupyterlab_prints():
    """`make lab` opens on its default URL, so the address JupyterLab prints carries that path, not `/lab?token`."""
    (default_url,) = re.findall(r"--LabApp\.default_url=(\S+)", MAKEFILE)
    addresses = re.findall(r"http://localhost:\d+(/\S*?)\?token=", (DOCS / "jupyterlab.md").read_text())
    assert addresses and set(addresses) == {default_url}, addresses


def test_the_anchor_check_is_described_as_the_committed_results_hold_it():
    """06_anchor.csv and the manifest's `anchor` entry: docs/method.md says whether the committed run has them."""
    has_table = (paths.RESULTS / "06_anchor.csv").is_file()
    has_entry = "anchor" in io.read_json(paths.RESULTS / "manifest.json")
    says_missing = "the committed H200 run predates this check" in _page("method.md")
    assert has_table == has_entry, "the table and the manifest entry come from the same stage"
    assert says_missing == (not has_table), "docs/method.md's anchor paragraph no longer matches data/results"


@pytest.mark.parametrize("code", [study.OK, study.FAILED, study.BAD_INPUT, study.INTERRUPTED])
def test_the_docs_and_help_give_the_same_exit_codes(code):
    assert re.search(rf"\b{code} (the run|bad input|interrupted)", _page("runs.md")), code
    assert re.search(rf"^\s+{code}\s", study.EXIT_CODES, re.M), code


@pytest.mark.parametrize("text", [README, (DOCS / "runs.md").read_text()], ids=["README", "runs.md"])
def test_the_options_named_are_the_drivers_options(text):
    """Every `--option` the README and docs/runs.md name is one the driver takes (no stale flag)."""
    parser_options = set(re.findall(r"--[a-z][a-z-]+", study.parser().format_help()))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text)) - {"--help"}
    assert named <= parser_options, named - parser_options
