"""The notebooks as a whole: each creates exactly the run-folder files its **Creates** cell lists, every cell can be
run twice in one kernel (a name it reads is never one it rebinds; on the smoke run, for real), and no measured
number is typed into their prose.

A Creates cell lists files as `results/NN_x.csv` or `figures/NN_x.png`. A file listed after a condition
(`` `trt` tier ``, "wherever a builder is installed", ...) is expected only where the condition holds; a
condition holds to the end of its paragraph or bullet, and the conditions met there add up.
"""
import ast
import os
import re
import shutil
import subprocess

import nbformat
import pandas as pd
import pytest
import smoke
from background import TWICE, TWICE_DIR, TWICE_RESULT, doubled

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


@pytest.mark.venv  # `make hooks` runs nbstripout from the project's .venv
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


# --- a cell run again in JupyterLab does what it did the first time --------------------------------------------
MUTATORS = {"append", "extend", "insert", "update", "setdefault", "add", "pop", "remove", "clear"}


class _Names(ast.NodeVisitor):
    """The top-level names a cell reads and binds, in the order Python evaluates them."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []  # ("load" | "store" | "mutate", name)
        self.local: set[str] = set()  # comprehension and lambda variables, which are not the cell's

    def visit_Name(self, node):
        if node.id not in self.local:
            self.events.append(("load" if isinstance(node.ctx, ast.Load) else "store", node.id))

    def visit_Assign(self, node):
        self.visit(node.value)  # the value first: `x = f(x)` reads x before it binds it
        for target in node.targets:
            self.visit(target)

    def visit_AugAssign(self, node):
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self.events.append(("load", node.target.id))
        self.visit(node.target)

    def visit_Import(self, node):
        self.events += [("store", (a.asname or a.name).split(".")[0]) for a in node.names]

    visit_ImportFrom = visit_Import

    def visit_Call(self, node):
        self.generic_visit(node)
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in MUTATORS and isinstance(f.value, ast.Name):
            self.events.append(("mutate", f.value.id))

    def visit_Lambda(self, node):
        self._scoped({a.arg for a in node.args.args}, [node.body])

    def _comprehension(self, node):
        self.visit(node.generators[0].iter)  # evaluated outside the comprehension's scope
        targets = {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        inner = [c for g in node.generators for c in g.ifs] + [g.iter for g in node.generators[1:]]
        inner += [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        self._scoped(targets, inner)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension

    def _scoped(self, names, nodes):
        saved, self.local = self.local, self.local | names
        for n in nodes:
            self.visit(n)
        self.local = saved


def rerun_hazards(source: str) -> list[str]:
    """Names a cell takes from earlier cells and then rebinds or grows: running it again reads its own result."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    names = _Names()
    for statement in ast.parse(code).body:
        names.visit(statement)
    bound, from_before, changed = set(), set(), set()
    for kind, name in names.events:
        if kind == "load" and name not in bound:
            from_before.add(name)
        elif kind == "store":
            bound.add(name)
        elif kind == "mutate" and name not in bound:
            changed.add(name)
    return sorted((from_before & bound) | changed)


def code_cells(notebook: str) -> list[tuple[int, str]]:
    """(index, source) of each Python code cell of a notebook (`%%bash` cells are not Python)."""
    nb = nbformat.read(paths.NOTEBOOKS / f"{notebook}.ipynb", as_version=4)
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code" and not c.source.startswith("%%")]


def test_rerun_hazards_are_found():
    assert rerun_hazards("from mvlib.tensorrt import table as trt_table") == []
    assert rerun_hazards("spec = trt_table.EngineSpec()\ntrt_table, errors = f(spec)") == ["trt_table"]
    assert rerun_hazards("table = pd.concat([table, pd.DataFrame(rows)])") == ["table"]
    assert rerun_hazards("tables += [f(x)]") == ["tables"]
    assert rerun_hazards("tables.append(f(x))") == ["tables"]
    assert rerun_hazards("rows = []\nrows.append(1)\ntables['gpu'] = rows") == []  # made anew, then set
    assert rerun_hazards("d = {k: v.get(k) for k in keys}\nk = 1") == []  # a comprehension's k is its own
    assert rerun_hazards("%%time\nx = f(y)") == []


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_a_cell_run_again_does_not_read_its_own_result(notebook):
    """Re-running a cell in JupyterLab must not find its own earlier result in a name it reads (a module name bound
    to a table, a table that grows each time); make a new name instead."""
    hazards = {i: names for i, src in code_cells(notebook) if (names := rerun_hazards(src))}
    assert not hazards, f"{notebook}: cells (by index) that rebind or grow a name they read: {hazards}"


# --- measured numbers in the prose come from the run's tables ---------------------------------------------------
MEASURED = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s?(?:%|×|x\b)"  # 99.2 %, 7×, 51x
                      r"|(?<![\w.])(\d+) of (\d+)\b"  # 62 of 89
                      r"|(?<![\w.-])(0\.\d{3,}|\d+\.\d+(?=\s?(?:img/s|ms|MB|MiB|GB/s|s\b|W\b|J\b)))")  # 0.983, 14.8 MB


def _numbers(source: str) -> set[float]:
    """Every number written as a literal in Python source."""
    return {float(n.value) for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Constant) and isinstance(n.value, int | float) and not isinstance(n.value, bool)}


def typed_measurements(text: str, allowed: set[float]) -> list[str]:
    """Numbers in prose that look measured (a percentage, a ratio, 'N of M', a cosine, a value with its unit) and
    are neither a constant of the code nor a published anchor."""
    def known(v: float) -> bool:
        return v in allowed or v / 100 in allowed
    return [m.group(0) for m in MEASURED.finditer(text)
            if not all(known(float(g)) for g in m.groups() if g is not None)]


def test_typed_measurements_are_found():
    allowed = {0.999, 0.99, 11790.0}
    assert typed_measurements("62 of 89 stay INT8 and pass: 0.99982, 99.2 % (max)", allowed) == [
        "62 of 89", "0.99982", "99.2 %"]
    assert typed_measurements("cosine at least 0.999 and top-1 agreement of at least 99 %; 11790 img/s", allowed) == []
    assert typed_measurements("Plans: 14.8 MB, 7× smaller; opset 17, TensorRT 10.13", allowed) == ["14.8", "7×"]


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_prose_types_no_measured_number(notebook):
    """A measured number in a markdown cell goes stale with the next run: a cell prints it from the run's tables,
    and dated findings live in docs/findings.md. Constants of the code and the anchors of docs/method.md may be
    quoted."""
    allowed = set().union(*(_numbers(p.read_text()) for p in (paths.ROOT / "mvlib").rglob("*.py")))
    allowed |= set().union(*(_numbers(src) for _, src in code_cells(notebook)))
    anchors = (paths.ROOT / "docs" / "method.md").read_text()
    allowed |= {float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?", anchors.replace(",", ""))}
    nb = nbformat.read(paths.NOTEBOOKS / f"{notebook}.ipynb", as_version=4)
    typed = {i: found for i, c in enumerate(nb.cells)
             if c.cell_type == "markdown" and (found := typed_measurements(c.source, allowed))}
    assert not typed, f"{notebook}: markdown cells (by index) with typed measured numbers: {typed}"


# --- every cell twice in one kernel, for real --------------------------------------------------------------------
def test_doubled_runs_each_code_cell_twice_and_keeps_the_parameters_last():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("y = x")])
    nb.cells[1].metadata["tags"] = ["parameters"]
    cells = doubled(nb).cells
    assert [c.source for c in cells] == ["# t", "x = 1", "x = 1", "y = x", "y = x"]
    assert [c.metadata.get("tags") for c in cells[1:3]] == [None, ["parameters"]]  # papermill injects after this
    assert len({c.id for c in cells}) == 5


@pytest.fixture(scope="module")
def twice_run(smoke_run):
    """The smoke run's notebooks executed again in order, one kernel each, every code cell twice in a row, with the
    smoke run's parameters and build folder, into a run folder of their own: made in the background after the smoke
    run (tests/helpers/background.py); (the run folder, {notebook: error})."""
    if not TWICE_RESULT.is_file():
        pytest.fail(f"the twice-run left no {TWICE_RESULT}; see {smoke.BUILD / 'run.log'}")
    result = io.read_json(TWICE_RESULT)
    print(f"every cell twice, seconds per notebook: {result['seconds']}")
    return TWICE_DIR / "run", result["errors"]


def _run_files(run, notebook: str) -> dict[str, tuple[list[str], int] | None]:
    """A notebook's own run-folder files: a table's columns and row count, None for a figure."""
    own = stages.short(notebook) + "_"
    files = {f"figures/{p.name}": None for p in (run / "figures").glob(f"{own}*")}
    for p in (run / "results").glob(f"{own}*"):
        table = pd.read_csv(p)
        files[f"results/{p.name}"] = (list(table.columns), len(table))
    return files


@pytest.mark.parametrize("notebook", TWICE)
def test_every_cell_runs_twice_in_one_kernel(twice_run, smoke_run, notebook):
    """As a user re-running cells in JupyterLab: no cell fails the second time, and the notebook writes the same
    tables (columns and rows) and figures as the smoke run, where each cell ran once."""
    run, errors = twice_run
    assert notebook not in errors, errors[notebook]
    assert _run_files(run, notebook) == _run_files(smoke_run, notebook)
