"""Netron from notebook 02 (graph.netron_*): moving to test_graph.py."""
import os
import threading
import urllib.request

import onnx
import pytest
from onnx import TensorProto, helper

from mvlib import graph, io, paths


# --- netron: one server per kernel, an address the browser can reach --------------------------------------
def test_netron_address_through_the_proxy_follows_the_base_url():
    assert graph.netron_address(8080, {"base_url": "/"}, proxy=True)[0] == "/proxy/8080/"
    src, note = graph.netron_address(18123, {"base_url": "/user/ann/"}, proxy=True)
    assert src == "/user/ann/proxy/18123/" and "JupyterLab" in note and "ssh" not in note


def test_netron_address_without_the_proxy_prints_the_port_forward():
    src, note = graph.netron_address(18080, {"base_url": "/"}, proxy=False, host="gpu-box", user="ann")
    assert src == "http://localhost:18080/"
    assert "ssh -N -L 18080:localhost:18080 ann@gpu-box" in note and "jupyter-server-proxy" in note
    src, note = graph.netron_address(8081, None, proxy=True, host="h", user="u")  # no Jupyter server: no proxy
    assert src == "http://localhost:8081/" and "Jupyter server" in note


def test_jupyter_server_is_found_by_the_kernels_parent_pid(tmp_path, monkeypatch):
    pytest.importorskip("jupyter_server")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    for pid, base in ((os.getpid(), "/mine/"), (os.getppid(), "/parent/")):
        io.write_json(tmp_path / f"jpserver-{pid}.json", {"pid": pid, "base_url": base, "port": 1,
                                                          "url": f"http://localhost:1{base}"})
    assert graph.jupyter_server()["base_url"] == "/parent/"
    assert graph.jupyter_server(os.getpid())["base_url"] == "/mine/"
    assert graph.jupyter_server(2 ** 22 + 12345) is None


def _tiny_onnx(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], path.stem, [x], [y])),
              str(path))
    return path


def test_netron_view_reuses_one_server_and_blocks_analytics(tmp_path, capsys, monkeypatch):
    pytest.importorskip("netron")
    monkeypatch.setattr(graph, "jupyter_server", lambda pid=None: None)  # as in a terminal, whatever runs here
    a, b = _tiny_onnx(tmp_path / "a.onnx"), _tiny_onnx(tmp_path / "b.onnx")
    graph.netron_stop()  # a server an earlier test left in this process would be reused, not started
    try:
        first = graph.netron_view(a, height=300)
        port = graph._NETRON["port"]
        second = graph.netron_view(b)
        assert graph._NETRON["port"] == port and first.src == second.src == f"http://localhost:{port}/"
        alive = [t for t in threading.enumerate() if t.name == "mvlib-netron" and t.is_alive()]
        assert len(alive) == 1
        with urllib.request.urlopen(f"http://localhost:{port}/", timeout=10) as reply:
            page = reply.read().decode()
            assert reply.headers["Content-Security-Policy"] == "connect-src 'self'"
        assert '<meta name="file" content="/data/b.onnx">' in page  # the second file, on the same port
        with urllib.request.urlopen(f"http://localhost:{port}/data/b.onnx", timeout=10) as reply:
            assert reply.read() == b.read_bytes()
        out = capsys.readouterr().out
        assert "started" in out and "reusing" in out and "ssh -N -L" in out
    finally:
        graph.netron_stop()
    assert not any(t.name == "mvlib-netron" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://localhost:{port}/", timeout=5)


def test_netron_consent_and_analytics_are_what_the_notebook_says():
    """netron's web app still has the consent screen and the analytics call that notebook 02 describes."""
    netron = pytest.importorskip("netron")
    source = (paths.Path(netron.__file__).parent / "browser.js").read_text()
    assert "This app uses cookies to report errors and anonymous usage information." in source
    assert "analytics.google.com" in (paths.Path(netron.__file__).parent / "base.js").read_text()
    nb = (paths.NOTEBOOKS / "02_graph.ipynb").read_text()
    assert "connect-src 'self'" in nb and "re-run" in nb.lower()
