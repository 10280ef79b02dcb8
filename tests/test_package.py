"""mvlib as a package (__init__, _compat): it imports quietly and builds a wheel that holds its profiles."""
import os
import shutil
import subprocess
import sys
import zipfile

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
