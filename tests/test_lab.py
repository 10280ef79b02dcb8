"""`make lab` started the way a user starts it: the project is reachable through the server, results are readable.

One JupyterLab server for the module, started with `make lab LAB_ARGS=...` (as root here, so the Makefile's
--allow-root is exercised), then asked over HTTP what a browser would ask.
"""
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper

from mvlib import graph, io, onnxmodel, paths

ROOT = paths.ROOT
pytestmark = pytest.mark.venv  # `make lab` runs JupyterLab from the project's .venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str, redirect: bool = True):
    """(status, headers, body) of a GET with the server's token."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    opener = urllib.request.build_opener() if redirect else urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running `make lab`: (base url, token, server info, log path)."""
    # `make test` brings the venv up to date first; run alone after an edit of pyproject.toml, the test does not
    # reinstall it (that is `make env`'s job, minutes long), it starts JupyterLab from the venv as it is.
    stale = subprocess.run(["make", "-q", ".venv/.installed"], cwd=ROOT).returncode != 0
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path_factory.mktemp("lab") / "lab.log"
    args = f"--no-browser --port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", *(["-o", ".venv/.installed"] if stale else []), "lab", f"LAB_ARGS={args}"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"make lab exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if _get(f"{url}/api/status", token)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"make lab did not answer on port {port} within 120 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        from jupyter_server.serverapp import list_running_servers
        info = next((i for i in list_running_servers() if i.get("port") == port), None)
        yield url, token, info, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the jupyter server it started: our own process group
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_make_lab_starts_as_root_or_user(lab):
    url, token, info, log = lab
    text = log.read_text()
    assert "Running as root is not recommended. Use --allow-root" not in text or os.geteuid() != 0
    assert info is not None, "the server wrote no runtime info file"
    assert Path(info["root_dir"]).resolve() == ROOT.resolve()


def test_lab_is_rooted_at_the_project_and_opens_the_notebooks(lab):
    url, token, _, _ = lab
    status, _, body = _get(f"{url}/api/contents/figures", token)
    assert status == 200, body[:500]
    listing = json.loads(body)
    assert listing["type"] == "directory"
    assert "06_throughput.png" in {c["name"] for c in listing["content"]}
    for folder, member in (("data/results", "manifest.json"), ("notebooks", "02_graph.ipynb")):
        status, _, body = _get(f"{url}/api/contents/{folder}", token)
        assert status == 200 and member in {c["name"] for c in json.loads(body)["content"]}, folder
    status, headers, _ = _get(f"{url}/", token, redirect=False)
    assert status in (301, 302) and headers["Location"].split("?")[0].rstrip("/").endswith("/lab/tree/notebooks")


def test_written_results_are_readable_by_others_through_the_lab(lab):
    url, token, _, _ = lab
    folder = ROOT / "build" / "tests" / "lab"  # under the project root, ignored by git
    old = os.umask(0o022)  # the usual umask; the io tests cover others
    try:
        table = io.write_csv(folder / "readable.csv", pd.DataFrame({"batch": [1, 32], "img_s": [10.0, 99.5]}))
        plain = folder / "plain.txt"
        plain.unlink(missing_ok=True)
        plain.write_text("an ordinary write\n")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(table.stat().st_mode)
    assert mode & 0o044 == 0o044, f"{table} is {oct(mode)}: group and others cannot read it"
    assert mode == stat.S_IMODE(plain.stat().st_mode)
    status, _, body = _get(f"{url}/api/contents/build/tests/lab/readable.csv?content=1&type=file&format=text", token)
    assert status == 200 and json.loads(body)["content"].startswith("batch,img_s")


def test_netron_through_the_lab_proxy(lab, tmp_path):
    """netron started as notebook 02 starts it is reachable on JupyterLab's own port, with analytics blocked."""
    pytest.importorskip("netron")
    pytest.importorskip("jupyter_server_proxy")
    url, token, info, _ = lab
    model = tmp_path / "tiny.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    onnx.save(onnxmodel.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])),
              str(model))
    port = graph._netron_serve(model, None)
    try:
        assert graph._proxy_serves(info, port) is True
        src, note = graph.netron_address(port, info, proxy=True)
        assert src == f"/proxy/{port}/" and "ssh" not in note
        status, headers, body = _get(f"{url}{src}", token)
        assert status == 200 and b'<meta name="file" content="/data/tiny.onnx">' in body
        assert headers["Content-Security-Policy"] == "connect-src 'self'"
        status, _, data = _get(f"{url}{src}data/tiny.onnx", token)
        assert status == 200 and data == model.read_bytes()
    finally:
        graph.netron_stop()
