"""The dependency ranges pyproject.toml declares are the ones the study is known to work with."""
import importlib.metadata as md
import json
import re

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from mvlib import paths
from mvlib.tensorrt import cudainfo

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _dependencies(*extras: str) -> dict[str, Requirement]:
    """pyproject.toml's [project] dependencies by name, and those of `extras`."""
    project = tomllib.loads((paths.ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + [t for e in extras for t in project["optional-dependencies"][e]]
    return {(r := Requirement(text)).name: r for text in texts}


def _pins(name: str) -> dict[str, Version]:
    """The `name==version` lines of constraints/<name>, by package name."""
    pins = {}
    for line in (paths.ROOT / "constraints" / name).read_text().splitlines():
        if line.split("#")[0].strip():
            req = Requirement(line.split("#")[0])
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line} is not a pin"
            pins[req.name] = Version(spec.version)
    return pins


def _floor(req: Requirement) -> Version | None:
    """The lowest version `req` allows by its >=, == or ~= clause; None where it names none."""
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(floors) if floors else None


def test_every_declared_range_holds_what_is_installed_here():
    """The environment the tests run in is inside the declared ranges (else the ranges are not what was tested)."""
    outside = []
    for name, req in _dependencies().items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            outside.append(f"{name}: not installed")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            outside.append(f"{name} {installed} is outside {req.specifier}")
    assert not outside, outside


def test_onnx_range_holds_every_version_a_published_run_used():
    """The committed runs record their onnx version (1.23.1 on the H200): the declared range must allow it."""
    spec = _dependencies()["onnx"].specifier
    used = {manifest["versions"]["onnx"] for manifest in
            (json.loads(p.read_text()) for p in paths.RESULTS.rglob("manifest.json"))}
    assert used, "no published manifest records an onnx version"
    assert all(spec.contains(v) for v in used), f"onnx {sorted(used)} used by published runs; declared {spec}"
    assert not spec.contains("1.17.0")  # not claimed: the study was never run with it


def test_environment_yml_installs_the_rtx_extra_make_picks_without_a_driver_and_names_the_other():
    """conda users get the extra `make` installs on an R580+ driver or without a GPU (rtx-cu13), and are told to
    write rtx-cu12 for an R535-R570 driver; both are extras pyproject.toml declares."""
    text = (paths.ROOT / "environment.yml").read_text()
    pip = next(d["pip"] for d in yaml.safe_load(text)["dependencies"] if isinstance(d, dict))
    editable = next(line for line in pip if line.startswith("-e ."))
    extras = set(re.fullmatch(r"-e \.\[(.*)\]", editable).group(1).split(","))
    declared = tomllib.loads((paths.ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras <= set(declared) and "dev" in extras
    assert cudainfo.extra_for(None) == cudainfo.extra_for(13000) == "rtx-cu13" and "rtx-cu13" in extras
    assert cudainfo.extra_for(12080) == "rtx-cu12" in declared and "R535-R570" in text and "rtx-cu12" in text


def test_the_floors_file_pins_every_declared_floor_and_nothing_else():
    """`make test-floors` installs constraints/floors.txt: it must be pyproject's floors (the dependencies and the dev
    extra the tests run with, and the CPU build of ONNX Runtime it installs: ort-cpu), each at exactly its floor, so
    the floors CI tests are the ones the project declares."""
    declared = {name: f for name, req in _dependencies("dev", "ort-cpu").items() if (f := _floor(req)) is not None}
    assert _pins("floors.txt") == declared


def test_the_h200_pair_is_inside_the_declared_ranges_and_ci_tests_both_files():
    deps = _dependencies("ort-cpu")
    pair = _pins("h200.txt")
    assert set(pair) == {"onnx", "onnxruntime"} and all(deps[n].specifier.contains(v) for n, v in pair.items())
    makefile = (paths.ROOT / "Makefile").read_text()
    assert '-c constraints/floors.txt -e ".[dev,ort-cpu]"' in makefile and "-r constraints/h200.txt" in makefile
    assert re.search(r"^test-floors: test-floors-venv test-h200-pair$", makefile, re.MULTILINE)
    pair_tests = re.search(r"^PAIR_TESTS\s*\?=((?:.*\\\n)*.*)$", makefile, re.MULTILINE).group(1).split()
    missing = [t for t in pair_tests if t != "\\" and not (paths.ROOT / t).is_file()]
    assert pair_tests and not missing, f"PAIR_TESTS names test files that do not exist: {missing}"
    # CI runs them, after the suite and the linter (outside make test's own time)
    ci = [line.strip() for line in (paths.ROOT / ".ci" / "run").read_text().splitlines()]
    assert [line for line in ci if line.startswith("make ")] == [
        "make test", "make lint", "make test-h200-pair", "make test-floors-venv"]
    # the floors' run leaves out the tests that drive make targets of the project's .venv, which CI removes first
    assert '-m "not slow and not venv"' in makefile
    # one torch-sized venv at a time: CI's disk ran out holding both
    assert ci.index("rm -rf .venv") == ci.index("make test-floors-venv") - 2
