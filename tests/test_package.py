"""mvlib as a package: timm runs without it, it imports quietly, builds a wheel that holds its profiles, its modules
import each other in no circle, the module -> notebook map and the figure table of docs/package.md say what the
modules and notebooks hold, and tests/ mirrors mvlib (docs/package.md, "Tests")."""
import ast
import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from mvlib import paths

ROOT = paths.ROOT


def test_timm_builds_mobilevit_without_mvlib(tmp_path):
    """The venv `make env` builds runs timm on its own: torch and torchvision are one build, so torchvision's C++
    ops load (a +cpu torch beside PyPI's CUDA torchvision died at `import timm`: 'operator torchvision::nms does
    not exist', and only mvlib's import-time workaround, now gone, hid it)."""
    code = ("import sys, torch, timm, timm.models, torchvision; timm.create_model('mobilevit_xxs'); "
            "torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mvlib'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    assert proc.returncode == 0, f"timm fails in {sys.prefix} ({last}): rebuild it with make env (see TORCHVISION_SPEC)"
    assert proc.stdout.strip() == "[]"  # nothing of mvlib was imported


def test_both_venvs_install_torch_and_torchvision_in_one_command():
    """`make env` and `make test-floors` take the pair from one index, never torch from a folder of local wheels."""
    out = subprocess.run(["make", "-n", "-B", "env", "test-floors-venv", "VENV=/nonexistent/venv",
                          "FLOORS_VENV=/nonexistent/floors"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for py in ("/nonexistent/venv/bin/python", "/nonexistent/floors/bin/python"):
        pair = [line for line in out.splitlines() if f'PIP_FIND_LINKS=" " {py} -m pip install' in line]
        assert pair and '"torch==' in pair[0] and '"torchvision==' in pair[0], py


def test_importing_mvlib_prints_no_warning():
    """mvlib's import adds no warning to what timm's own prints (nothing at today's versions; at the floors, timm
    1.0.3's hrnet calls torch.jit.interface, which torch 2.13 deprecates: timm's, not ours)."""
    def stderr(code: str) -> str:
        proc = subprocess.run([sys.executable, "-c", "import warnings; warnings.simplefilter('default'); " + code],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr.strip()
    assert stderr("import mvlib, timm") == stderr("import timm")
    assert stderr("import mvlib") == ""


def test_the_profiles_are_declared_package_data(tmp_path):
    """Building the package finds mvlib.profiles without setuptools' 'absent from packages' warning."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "mvlib", src / "mvlib", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is absent from the `packages` configuration" not in proc.stdout + proc.stderr
    wheel = next((tmp_path / "dist").glob("mvlib-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"mvlib/profiles/full.yaml", "mvlib/profiles/smoke.yaml", "mvlib/progress.py"} <= set(names)


# --- the import graph: no circle ---------------------------------------------------------------------------
def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The mvlib modules (named as _modules names them) that module `name` imports, at module level or inside a
    function alike."""
    here = [] if name == "mvlib" else name.split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            dotted = [a.name.split(".") for a in node.names]
        elif node.level:  # relative: from this module's package, or one above it per extra dot
            base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            dotted = [["mvlib", *base, a.name] for a in node.names]
        else:
            dotted = [[*(node.module or "").split("."), a.name] for a in node.names]
        for parts in dotted:
            if parts[0] == "mvlib":  # the longest prefix that is a module: `from mvlib import x` names module x
                found |= next(({".".join(parts[1:n])} for n in range(len(parts), 1, -1)
                               if ".".join(parts[1:n]) in modules), set())
    return found - {name}


def test_no_module_imports_itself_through_others():
    """A circle of imports (a -> b -> c -> a) makes every module of it stand above the others: none can be read,
    tested or moved alone. Function-level imports count: they tie the modules as much."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    for start in graph:
        seen, todo = set(), [(start, (start,))]
        while todo:
            name, way = todo.pop()
            for nxt in graph[name]:
                assert nxt != start, f"import circle: {' -> '.join((*way, nxt))}; move what they share lower"
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append((nxt, (*way, nxt)))


# --- docs/package.md's map (module -> notebook) and the tests' layout ------------------------------------------
PACKAGE = (paths.ROOT / "docs" / "package.md").read_text()
MAP = PACKAGE[PACKAGE.index("## Module → notebook"):PACKAGE.index("## Tests")]
TESTS_SECTION = PACKAGE[PACKAGE.index("## Tests"):PACKAGE.index("## Figures")]


def _modules(package: Path = paths.ROOT / "mvlib") -> dict[str, Path]:
    """Every module of mvlib by its dotted name below mvlib ('mvlib' for the package itself)."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package).with_suffix("").parts)
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        found[".".join(parts) or "mvlib"] = path
    return found


def _notebooks(text: str) -> tuple[set[str], bool]:
    """Notebook numbers ('01-06', '03 to 05', '02, 05') named in `text`, and whether it names the driver."""
    found = set(re.findall(r"\b(0[1-9])\b", text))
    for first, last in re.findall(r"\b(0[1-9])\s*(?:-|to)\s*(0[1-9])\b", text):
        found |= {f"{n:02d}" for n in range(int(first), int(last) + 1)}
    return found, "driver" in text


def _served(docstring: str) -> tuple[set[str], bool]:
    """What a module docstring says it serves: its 'Serves' sentences, else its first line."""
    flat = " ".join(docstring.split())
    said = re.findall(r"[Ss]erves\b.*?(?:\.(?=\s|$)|$)", flat)
    return _notebooks(" ".join(said) or docstring.strip().splitlines()[0])


def _map_rows() -> dict[str, str]:
    """module -> its 'serves notebooks' cell, from docs/package.md's map."""
    return dict(re.findall(r"^\| `([\w.]+)` \| ([^|`]+) \|$", MAP, re.M))


def test_the_map_has_every_module_and_the_notebooks_its_docstring_serves():
    rows, modules = _map_rows(), _modules()
    missing, stale = set(modules) - set(rows), set(rows) - set(modules)
    assert not missing and not stale, f"docs/package.md's map is missing {missing}, has stale {stale}"
    for name, serves in rows.items():
        doc = ast.get_docstring(ast.parse(modules[name].read_text())) or ""
        assert _served(doc) == _notebooks(serves), f"{name}: its docstring and the map serve different notebooks"
        assert _served(doc) != (set(), False), f"{name}: the docstring says no notebook and not the driver"


def _tested_elsewhere() -> dict[str, list[str]]:
    """docs/package.md's 'Tested elsewhere': module -> the test files (below tests/) that cover it."""
    rows = re.findall(r"^\| `([\w.]+)` \| (`[^|]+) \|$", TESTS_SECTION, re.M)
    return {name: re.findall(r"`([\w/]+\.py)`", files) for name, files in rows}


def _project_tests() -> set[str]:
    """docs/package.md's tests of the project as a whole (test files named after no module)."""
    said = TESTS_SECTION[TESTS_SECTION.index("Tests of the project as a whole"):]
    return set(re.findall(r"`(test_\w+\.py)`", said))


def _home(name: str, package: Path, tests: Path) -> Path:
    """Where the layout puts the tests of module `name`: tests/<package>/test_<module>.py; a package's folder."""
    parts = name.split(".")
    return tests.joinpath(*parts) if package.joinpath(*parts).is_dir() else \
        tests.joinpath(*parts[:-1], f"test_{parts[-1]}.py")


def layout_faults(package: Path, tests: Path, elsewhere: dict[str, list[str]], project: set[str]) -> list[str]:
    """What breaks the rule that tests/ mirrors the package: modules without their test file, test files of no
    module, and stale or needless entries of the two lists of exceptions."""
    modules = _modules(package)
    return [*_untested_modules(modules, package, tests, elsewhere), *_stale_elsewhere(modules, tests, elsewhere),
            *_orphan_tests(modules, package, tests, project)]


def _untested_modules(modules, package: Path, tests: Path, elsewhere) -> list[str]:
    """Modules without their test file (and not tested elsewhere), or tested elsewhere though they have one."""
    faults = []
    for name in sorted(modules):
        home = _home(name, package, tests)
        has_home = any(home.glob("**/test_*.py")) if home.is_dir() else home.is_file()
        if name in elsewhere and has_home:
            faults.append(f"{name} has {home.relative_to(tests)}: take it off 'Tested elsewhere' in docs/package.md")
        elif name not in elsewhere and not has_home:
            want = home.relative_to(tests) / ("test_*.py" if package.joinpath(*name.split(".")).is_dir() else "")
            faults.append(f"{name} has no tests/{want}: add it, or list where it is tested under "
                          "'Tested elsewhere' in docs/package.md")
    return faults


def _stale_elsewhere(modules, tests: Path, elsewhere) -> list[str]:
    """'Tested elsewhere' entries whose module is gone or whose test file does not use it."""
    faults = [f"'Tested elsewhere' names {name}, which is no module: take it off docs/package.md"
              for name in elsewhere if name not in modules]
    return faults + [f"{name}: tests/{file} does not use it (docs/package.md, 'Tested elsewhere')"
                     for name, files in elsewhere.items() for file in files
                     if not (tests / file).is_file() or name.split(".")[-1] not in (tests / file).read_text()]


def _orphan_tests(modules, package: Path, tests: Path, project: set[str]) -> list[str]:
    """Test files named after no module and not tests of the project, or listed as both."""
    faults = []
    for path in sorted(tests.rglob("test_*.py")):
        rel = path.relative_to(tests)
        module = ".".join([*rel.parent.parts, path.stem.removeprefix("test_")])
        if (module in modules) == (rel.as_posix() in project):
            faults.append(f"tests/{rel} names the module {module}: take it off the project's tests in docs/package.md"
                          if module in modules else f"tests/{rel} names no module of {package.name}: rename it "
                          "after the module it tests, or list it as a test of the project in docs/package.md")
    return faults + [f"docs/package.md lists tests/{f}, which does not exist" for f in sorted(project)
                     if not (tests / f).is_file()]


def test_the_tests_mirror_the_package():
    faults = layout_faults(paths.ROOT / "mvlib", paths.ROOT / "tests", _tested_elsewhere(), _project_tests())
    assert not faults, "\n".join(faults)
    assert len(_tested_elsewhere()) >= 5 and "test_notebooks.py" in _project_tests()  # the docs' lists were read


def test_the_layout_check_fails_for_a_module_without_tests_and_for_tests_of_no_module(tmp_path):
    package, tests = tmp_path / "mvlib", tmp_path / "tests"  # a small mvlib
    for name in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py", "helpers_covered.py"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text('"""A module."""\n')
    for name in ("test_a.py", "sub/test_b.py", "test_project.py"):
        (tests / name).parent.mkdir(parents=True, exist_ok=True)
        (tests / name).write_text("from mvlib import a, helpers_covered\n")
    elsewhere, project = {"mvlib": ["test_project.py"], "helpers_covered": ["test_a.py"]}, {"test_project.py"}
    assert layout_faults(package, tests, elsewhere, project) == []
    (package / "sub" / "c.py").write_text('"""A new module."""\n')
    (tests / "test_gone.py").write_text("")
    assert layout_faults(package, tests, elsewhere, project) == [
        "sub.c has no tests/sub/test_c.py: add it, or list where it is tested under 'Tested elsewhere' in "
        "docs/package.md",
        "tests/test_gone.py names no module of mvlib: rename it after the module it tests, or list it as a test of "
        "the project in docs/package.md"]
    (tests / "sub" / "test_b.py").unlink()
    faults = layout_faults(package, tests, elsewhere, project)
    assert faults[0].startswith("sub has no tests/sub/test_*.py") and faults[1].startswith("sub.b has no tests/sub/")


def test_no_folder_of_tests_passes_for_a_package():
    """tests/ is not on sys.path (pytest's importlib mode), so tests/tensorrt/ never stands in for TensorRT."""
    for folder in sorted((paths.ROOT / "tests").iterdir()):
        spec = importlib.util.find_spec(folder.name) if folder.is_dir() and folder.name.isidentifier() else None
        where = [*(spec.submodule_search_locations or []), spec.origin or ""] if spec else []
        assert not any(str(paths.ROOT / "tests") in w for w in where), f"import {folder.name} finds {where}"


def test_the_map_reads_notebooks_as_written():
    assert _notebooks("notebooks 01 and 03 to 06 and the driver") == ({"01", "03", "04", "05", "06"}, True)
    assert _notebooks("02, 05, 06; 06_decision.csv") == ({"02", "05", "06"}, False)
    assert _served("One line.\n\nServes: notebook 04 (calibration).\n") == ({"04"}, False)
    assert _served("Tables for notebook 03 and 05.\n\nMore text.") == ({"03", "05"}, False)


def test_every_figure_is_drawn_by_the_function_the_docs_name_and_its_notebook_calls_it():
    section = PACKAGE[PACKAGE.index("## Figures"):]
    rows = re.findall(r"^\| (`0\d_[^|]+) \| (0\d) \| ([^|]+) \|", section, re.M)
    assert len(rows) >= 7
    for figures_cell, notebook, drawn_by in rows:
        (nb,) = paths.NOTEBOOKS.glob(f"{notebook}_*.ipynb")
        for qualified in re.findall(r"`([\w.]+)`", drawn_by):
            module, function = qualified.rsplit(".", 1)
            assert callable(getattr(importlib.import_module(f"mvlib.{module}"), function)), qualified
            assert f"{module.split('.')[-1]}.{function}(" in nb.read_text().replace('\\"', '"'), (qualified, nb.name)
        for name in re.findall(r"`(0\d_\w+\.png)`", figures_cell):
            assert f'"{name}"' in nb.read_text().replace('\\"', '"'), (name, nb.name)

