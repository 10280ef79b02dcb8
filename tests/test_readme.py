"""What the README says about the commands, JupyterLab and the committed results is what they do and hold."""
import re

import pytest

from mvlib import io, paths, study

README = (paths.ROOT / "README.md").read_text()
MAKEFILE = (paths.ROOT / "Makefile").read_text()


def test_the_jupyterlab_address_is_the_one_jupyterlab_prints():
    """`make lab` opens on its default URL, so the address JupyterLab prints carries that path, not `/lab?token`."""
    (default_url,) = re.findall(r"--LabApp\.default_url=(\S+)", MAKEFILE)
    addresses = re.findall(r"http://localhost:\d+(/\S*?)\?token=", README)
    assert addresses and set(addresses) == {default_url}, addresses


def test_the_anchor_check_is_described_as_the_committed_results_hold_it():
    """06_anchor.csv and the manifest's `anchor` entry: the README says whether the committed run has them."""
    has_table = (paths.RESULTS / "06_anchor.csv").is_file()
    has_entry = "anchor" in io.read_json(paths.RESULTS / "manifest.json")
    says_missing = "the committed H200 run\n  predates this check" in README
    assert has_table == has_entry, "the table and the manifest entry come from the same stage"
    assert says_missing == (not has_table), "README's anchor paragraph no longer matches data/results"


def test_the_readme_states_the_onnx_range_pyproject_declares():
    (declared,) = re.findall(r'"(onnx[<>=!~][^"]*)"', (paths.ROOT / "pyproject.toml").read_text())
    assert f"`{declared}`" in README


@pytest.mark.parametrize("code", [study.OK, study.FAILED, study.BAD_INPUT, study.INTERRUPTED])
def test_the_readme_and_help_give_the_same_exit_codes(code):
    assert re.search(rf"\b{code} (the run|bad input|interrupted)", README), code
    assert re.search(rf"^\s+{code}\s", study.EXIT_CODES, re.M), code


def test_the_readme_options_are_the_drivers_options():
    """Every `--option` the README's driver sections name is one the driver takes (no stale flag)."""
    parser_options = set(re.findall(r"--[a-z][a-z-]+", study.parser().format_help()))
    start, end = README.index("## Two commands"), README.index("## The tiers")
    named = set(re.findall(r"--[a-z][a-z-]+", README[start:end])) - {"--help"}
    assert named <= parser_options, named - parser_options
