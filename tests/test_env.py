"""mvlib.env: what this machine has (GPU, nvcc, versions, network), read for real, never assumed."""
import importlib.metadata
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from mvlib import env


def test_versions_are_the_installed_distributions():
    found = env.versions()
    assert set(found) == {*env.PACKAGES, "onnxruntime-dist"} and found["torch"] and found["onnx"]
    for name in env.PACKAGES:  # one distribution of each here (ONNX Runtime's CPU build, installed by make)
        try:
            assert found[name] == importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            assert found[name] is None, name
    assert found["onnxruntime-dist"] in ("onnxruntime", "onnxruntime-gpu")


def _fake_site(site: Path, dist: str, version: str, module: str) -> Path:
    """A site folder holding `module` (a package) installed by distribution `dist` at `version`."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(f"__version__ = {version!r}\n")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "RECORD").write_text(f"{module}/__init__.py,,\n")
    return site


def test_onnxruntime_s_version_is_the_build_the_run_imports(tmp_path, monkeypatch):
    """An image's CPU onnxruntime with onnxruntime-gpu ahead of it on the path (the two install the same module):
    the version is the GPU build's, the one a run imports, not the distribution named `onnxruntime`."""
    import importlib
    cpu = _fake_site(tmp_path / "image", "onnxruntime", "1.30.0", "onnxruntime")
    gpu = _fake_site(tmp_path / "carried", "onnxruntime-gpu", "1.31.0", "onnxruntime")
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)  # an imported module's own spec would answer
    for first, version, dist in ((gpu, "1.31.0", "onnxruntime-gpu"), (cpu, "1.30.0", "onnxruntime")):
        monkeypatch.setattr(sys, "path", [str(first), str(cpu if first == gpu else gpu), *sys.path])
        importlib.invalidate_caches()
        found = env.versions()
        assert (found["onnxruntime"], found["onnxruntime-dist"]) == (version, dist)
        assert found["torch"] == importlib.metadata.version("torch")  # the others as before
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not p.startswith(str(tmp_path))])
    importlib.invalidate_caches()
    assert env.provider("no_such_module_here") is None


def test_nvcc_is_found_on_the_path_then_in_the_usual_prefix(monkeypatch):
    prefix = "/usr/local/cuda/bin/nvcc" if shutil.which("/usr/local/cuda/bin/nvcc") else None
    assert env.nvcc_path() == (shutil.which("nvcc") or prefix)
    monkeypatch.setenv("PATH", "")  # not on PATH: the CUDA toolkit's own prefix, where it is installed
    assert env.nvcc_path() == prefix
    assert env.machine()["nvcc"] == env.nvcc_path() and env.machine()["cores"] == os.cpu_count()


def test_cuda_status_says_why_not():
    torch = pytest.importorskip("torch")
    ok, why = env.cuda_status()
    assert ok == torch.cuda.is_available()
    if not ok:
        assert why == f"no CUDA GPU visible to PyTorch {torch.__version__}"
        assert env.gpu_info()["capability"] is None and env.gpu_info()["gpu"] is None


@pytest.mark.parametrize("variables, says", [({"MVLIB_OFFLINE": "1"}, "offline mode is set"),
                                             ({"HF_HUB_OFFLINE": "1"}, "offline mode is set"),
                                             ({"HF_HUB_OFFLINE": "0"}, "")])
def test_offline_mode_comes_from_either_variable(monkeypatch, variables, says):
    for name in ("MVLIB_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert env.offline().startswith(says) and bool(env.offline()) == bool(says)
    if says:  # offline: nothing is dialled, the reason is the answer
        assert env.reachable("localhost", 1, 1.0) == (False, env.offline())


def test_reachable_dials_for_real(monkeypatch):
    for name in ("MVLIB_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert env.reachable("127.0.0.1", port, 5.0) == (True, "reachable")
    ok, why = env.reachable("127.0.0.1", port, 5.0)  # the same port, closed now
    assert not ok and why.startswith("127.0.0.1 unreachable (")
