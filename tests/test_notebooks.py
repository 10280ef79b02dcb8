"""The notebooks as a whole: each creates exactly the run-folder files its **Creates** cell lists.

A Creates cell lists files as `results/NN_x.csv` or `figures/NN_x.png`. A file listed after a condition
(`` `trt` tier ``, "wherever a builder is installed", ...) is expected only where the condition holds; a
condition holds to the end of its paragraph or bullet, and the conditions met there add up.
"""
import os
import re
import shutil
import subprocess

import nbformat
import pytest

from mvlib import fp8, io, paths, stages, tiers
from mvlib.tensorrt import flavours

NOTEBOOKS = [nb.stem for nb in stages.all_notebooks()]
CONDITIONS = {  # a phrase of a Creates cell -> what it needs
    "`nvcc` exists": "nvcc",
    "builder is installed": "builder",
    "`gpu` tier": "gpu",
    "a GPU backend ran": "gpu",
    "`trt` tier": "trt",
    "GPU with FP8": "fp8",
}
TOKEN = re.compile("|".join([re.escape(p) for p in CONDITIONS] + [r"`((?:results|figures)/[\w.]+)`"]),
                   re.IGNORECASE)


def creates(notebook: str) -> dict[str, frozenset[str]]:
    """Each run-folder file of this notebook that its Creates cell lists, with the conditions listed before it."""
    cell = nbformat.read(paths.NOTEBOOKS / f"{notebook}.ipynb", as_version=4).cells[0].source
    if "**Creates**" not in cell:
        raise ValueError(f"{notebook}: the first cell has no **Creates** list of the files it makes")
    own = stages.short(notebook) + "_"
    listed = {}
    for part in re.split(r"\n\s*\n|\n- ", cell[cell.index("**Creates**"):]):  # paragraphs and bullets
        needs = set()
        for token in TOKEN.finditer(part):
            if token.group(1) is None:
                needs.add(next(v for k, v in CONDITIONS.items() if k.lower() == token.group(0).lower()))
            elif token.group(1).split("/")[1].startswith(own):  # shared tables (engines.csv) are not its own
                listed[token.group(1)] = frozenset(needs)
    return listed


def holds(need: str, manifest: dict) -> bool:
    """Whether the run recorded in `manifest` (on this machine) had what `need` names."""
    if need == "nvcc":
        return bool(manifest["machine"].get("nvcc"))
    if need == "builder":
        return flavours.builder_status()[0]
    if need == "fp8":
        return fp8.has_fp8((manifest.get("gpu") or {}).get("capability"))[0]
    return tiers.rank(manifest["tier"]) >= tiers.rank(need)


def expected(listed: dict[str, frozenset[str]], manifest: dict) -> set[str]:
    """The listed files whose conditions all held in this run."""
    return {name for name, needs in listed.items() if all(holds(n, manifest) for n in needs)}


def test_creates_cells_parse_with_their_conditions():
    listed = {nb: creates(nb) for nb in NOTEBOOKS}
    assert all(listed.values()), [nb for nb, files in listed.items() if not files]
    assert set(listed["01_export"].values()) == set(listed["02_graph"].values()) == {frozenset()}
    assert listed["02_graph"]["figures/02_block_before_after.png"] == frozenset()
    assert listed["03_fp32_fp16"]["results/03_trt_layers.csv"] == {"builder", "trt"}
    assert listed["03_fp32_fp16"]["figures/03_errors.png"] == frozenset()
    assert listed["04_int8"]["results/04_int8_trt_accuracy.csv"] == {"builder", "trt"}
    assert listed["04_int8"]["results/04_fp8_trt_accuracy.csv"] == {"builder", "trt", "fp8"}
    assert listed["05_silu_plugin"]["results/05_build.csv"] == {"nvcc"}
    assert listed["05_silu_plugin"]["results/05_plugin_onnx.csv"] == frozenset()
    assert listed["05_silu_plugin"]["figures/05_kernel_bandwidth.png"] == {"gpu"}
    assert listed["05_silu_plugin"]["results/05_plugin_layers.csv"] == {"trt"}
    assert listed["06_benchmark"]["results/06_accuracy.csv"] == {"gpu"}
    assert "results/engines.csv" not in listed["03_fp32_fp16"]  # several notebooks add rows to it


@pytest.mark.parametrize("tier, capability, fp8_file", [("cpu", None, False), ("trt", "8.6", False),
                                                         ("trt", "8.9", True)])
def test_expected_files_follow_tier_and_gpu(monkeypatch, tier, capability, fp8_file):
    monkeypatch.setattr(flavours, "builder_status", lambda: (True, "TensorRT-RTX"))
    manifest = {"tier": tier, "gpu": {"capability": capability} if capability else None, "machine": {"nvcc": ""}}
    made = expected(creates("04_int8"), manifest)
    assert "results/04_int8_accuracy.csv" in made
    assert ("results/04_int8_trt_accuracy.csv" in made) == (tier == "trt")
    assert ("results/04_fp8_trt_accuracy.csv" in made) == fp8_file
    assert "results/05_build.csv" not in expected(creates("05_silu_plugin"), manifest)  # no nvcc recorded


def test_a_notebook_without_a_creates_list_is_named(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 07 · New\n\nMakes things.")])
    nbformat.write(nb, tmp_path / "07_new.ipynb")
    monkeypatch.setattr(paths, "NOTEBOOKS", tmp_path)
    with pytest.raises(ValueError, match="07_new: the first cell has no \\*\\*Creates\\*\\*"):
        creates("07_new")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_each_notebook_creates_what_its_creates_cell_lists(smoke_run, notebook):
    manifest = io.read_json(smoke_run / "manifest.json")
    own = stages.short(notebook) + "_"
    made = {f"{d}/{p.name}" for d in ("results", "figures") for p in (smoke_run / d).glob(f"{own}*")}
    assert made == expected(creates(notebook), manifest), f"made {sorted(made)}"


# --- stored without outputs: the git filter `make hooks` installs ------------------------------------------
def _git(repo, *args, **kw):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, **kw)


def test_make_hooks_strips_outputs_on_git_add(tmp_path):
    """`make hooks` in a clone: committed notebooks pass the filter unchanged, a saved one loses its outputs."""
    pytest.importorskip("nbstripout")
    if shutil.which("git") is None or not (paths.ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    repo = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(paths.ROOT), str(repo)], check=True, timeout=300)
    for name in ("Makefile", ".gitattributes"):  # this checkout's, committed or not
        shutil.copy(paths.ROOT / name, repo / name)
    (repo / ".venv").symlink_to(paths.ROOT / ".venv")
    env = os.environ | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["make", "-o", ".venv/.installed", "hooks"], cwd=repo, check=True, capture_output=True, timeout=120)
    assert "nbstripout" in _git(repo, "config", "filter.nbstripout-keepid.clean").stdout
    _git(repo, "add", "--renormalize", "notebooks")
    assert _git(repo, "status", "--porcelain", "notebooks").stdout == ""  # the filter keeps clean notebooks as they are
    nb_path = repo / "notebooks" / "01_export.ipynb"
    committed = nb_path.read_text()
    nb = nbformat.read(nb_path, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.execution_count = 3
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="saved from the UI\n")]
    nbformat.write(nb, nb_path)
    _git(repo, "add", "notebooks/01_export.ipynb", env=env)
    staged = _git(repo, "show", ":notebooks/01_export.ipynb").stdout
    assert staged == committed  # outputs and execution count gone, cell ids kept
    assert "saved from the UI" in nb_path.read_text()  # the working copy keeps them
