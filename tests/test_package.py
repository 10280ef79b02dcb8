"""mvlib as a package: timm runs without it, it imports quietly, builds a wheel that holds its profiles, and the
module -> notebook -> test map and the figure table of docs/package.md say what the modules, notebooks and tests
hold."""
import ast
import fnmatch
import importlib
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
    code = "import warnings; warnings.simplefilter('default'); import mvlib, timm"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


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

