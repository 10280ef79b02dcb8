"""mvlib.env: what this machine has (GPU, nvcc, versions, network), read for real, never assumed."""
import importlib.metadata
import os
import shutil
import socket

import pytest

from mvlib import env


def test_versions_are_the_installed_distributions():
    found = env.versions()
    assert set(found) == set(env.PACKAGES) and found["torch"] and found["onnx"]
    for name, version in found.items():
        try:
            assert version == importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            assert version is None, name


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
