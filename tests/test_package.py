"""mvlib as a package (__init__, _compat): it imports quietly, builds a wheel that holds its profiles, its modules
import each other in no circle, and the module -> notebook -> test map and the figure table of docs/package.md say
what the modules, notebooks and tests hold."""
import ast
import fnmatch
import importlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from mvlib import paths

ROOT = paths.ROOT


def test_importing_mvlib_prints_no_warning():
    code = "import warnings; warnings.simplefilter('default'); import mvlib, timm, sys; " \
           "print(getattr(sys.modules['torchvision'], '_mvlib_placeholder_ops', ()))"
    env = {k: v for k, v in os.environ.items() if k != "MVLIB_VERBOSE"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "RuntimeWarning" not in quiet.stderr and "torchvision" not in quiet.stderr, quiet.stderr
    if quiet.stdout.strip() != "()":  # the workaround ran: MVLIB_VERBOSE brings its note back
        loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env=env | {"MVLIB_VERBOSE": "1"})
        assert "RuntimeWarning" in loud.stderr and "torchvision" in loud.stderr


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


# --- docs/package.md's map: module -> notebook -> test ------------------------------------------------------
PACKAGE = (paths.ROOT / "docs" / "package.md").read_text()
MAP = PACKAGE[PACKAGE.index("## Module → notebook → test"):PACKAGE.index("## Figures")]


def _modules() -> dict[str, Path]:
    """Every module of mvlib by its dotted name below mvlib ('mvlib' for the package itself)."""
    found = {}
    for path in (paths.ROOT / "mvlib").rglob("*.py"):
        parts = list(path.relative_to(paths.ROOT / "mvlib").with_suffix("").parts)
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


def _map_rows() -> dict[str, tuple[str, list[str]]]:
    """module -> (its 'serves notebooks' cell, its test file patterns) from docs/package.md's map."""
    rows = re.findall(r"^\| `([\w.]+)` \| ([^|]+) \| ([^|]+) \|$", MAP, re.M)
    return {name: (serves, re.findall(r"`([^`]+)`", tests)) for name, serves, tests in rows}


def test_the_map_has_every_module_its_notebooks_and_its_tests():
    rows, modules = _map_rows(), _modules()
    missing, stale = set(modules) - set(rows), set(rows) - set(modules)
    assert not missing and not stale, f"docs/package.md's map is missing {missing}, has stale {stale}"
    for name, (serves, patterns) in rows.items():
        doc = ast.get_docstring(ast.parse(modules[name].read_text())) or ""
        assert _served(doc) == _notebooks(serves), f"{name}: its docstring and the map serve different notebooks"
        assert _served(doc) != (set(), False), f"{name}: the docstring says no notebook and not the driver"
        for pattern in patterns:
            files = sorted((paths.ROOT / "tests").glob(pattern))
            assert files, f"{name}: no test file {pattern}"
            assert any(name.split(".")[-1] in f.read_text() for f in files), f"{name}: {pattern} does not use it"


def test_every_test_file_is_in_the_map():
    named = re.findall(r"`(test_[\w*]+\.py)`", MAP)
    unnamed = [f.name for f in (paths.ROOT / "tests").glob("test_*.py") if not any(fnmatch.fnmatch(f.name, n)
                                                                                for n in named)]
    assert not unnamed, f"add these to docs/package.md's module -> notebook -> test map: {unnamed}"


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

