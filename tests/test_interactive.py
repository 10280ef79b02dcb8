"""Interactive use (issue 14): file permissions, --only skips, netron's address, titles of CPU-only figures,
progress in a batch log, a quiet import, the package configuration and the notebook-output git filter."""
import os
import shutil
import stat
import subprocess
import sys
import threading
import urllib.request

import matplotlib
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper

from mvlib import bench, graph, io, paths, plots, progress

ROOT = paths.ROOT


# --- written files get an ordinary write's permissions ------------------------------------------------------
def _write_everything(folder) -> list:
    """One file through each mvlib.io writer."""
    fig = matplotlib.figure.Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1])
    return [io.write_bytes(folder / "a.bin", b"\0\1"), io.write_text(folder / "b.txt", "b"),
            io.write_json(folder / "c.json", {"c": 1}), io.write_csv(folder / "d.csv", pd.DataFrame({"d": [1]})),
            io.save_figure(fig, folder / "e.png")]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umasks_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        written = _write_everything(tmp_path)
        with open(tmp_path / "plain.txt", "w") as f:  # what an ordinary write gives
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json", "d.csv", "e.png", "plain.txt"]


def test_rewriting_a_private_file_makes_it_readable(tmp_path):
    """Results left 0600 by earlier versions become readable when a run writes them again."""
    target = tmp_path / "table.csv"
    target.write_text("old")
    target.chmod(0o600)
    old = os.umask(0o022)
    try:
        io.write_text(target, "new")
    finally:
        os.umask(old)
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) & 0o044 == 0o044


def test_atomic_writes_of_one_file_from_threads_do_not_collide(tmp_path):
    target = tmp_path / "t.txt"
    threads = [threading.Thread(target=io.write_text, args=(target, str(i) * 1000)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = target.read_text()
    assert len(text) == 1000 and len(set(text)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


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


# --- figures of a CPU-only run say what was measured -----------------------------------------------------------
def _table(devices=("cpu",)) -> pd.DataFrame:
    rows = []
    for device, backend, precision, label, base in (("cpu", "pytorch", "fp32", "PyTorch CPU FP32", 40.0),
                                                    ("cpu", "onnxruntime", "fp32", "ONNX Runtime CPU FP32", 100.0),
                                                    ("cpu", "onnxruntime", "int8", "ONNX Runtime CPU INT8", 30.0),
                                                    ("cuda", "pytorch-eager", "fp32", "PyTorch eager FP32", 3000.0)):
        if device not in devices:
            continue
        for batch in (1, 8, 32):
            ips = base * (1 + np.log2(batch) / 10)
            rows.append({c: np.nan for c in bench.COLUMNS} | {
                "backend": backend, "device": device, "precision": precision, "label": label, "batch": batch,
                "throughput_ips": ips, "throughput_min_ips": ips * 0.98, "throughput_max_ips": ips * 1.02,
                "spread_pct": 4.0, "median_ms": 1e3 * batch / ips, "p90_ms": 1.1e3 * batch / ips,
                "p95_ms": 1.2e3 * batch / ips, "p99_ms": 1.3e3 * batch / ips, "variant": "mobilevit_xxs",
                "img_size": 256})
    return pd.DataFrame(rows, columns=bench.COLUMNS)


def _titles(fig) -> str:
    return " | ".join([ax.get_title() for ax in fig.axes] + ([fig._suptitle.get_text()] if fig._suptitle else []))


def test_cpu_only_figures_do_not_claim_a_gpu():
    t = _table()
    for fig in (plots.throughput(t), plots.latency_b1(t), plots.speedup(bench.speedup_table(t))):
        titles = _titles(fig)
        assert "GPU" not in titles and "transfers excluded" not in titles, titles
        assert "CPU only" in titles, titles
    assert "mobilevit_xxs" in _titles(plots.throughput(t))  # the model, where the table names it


def test_speedup_axis_is_labelled_across_the_bars():
    sp = bench.speedup_table(_table())
    fig = plots.speedup(sp)
    fig.canvas.draw()
    assert len(fig.axes) == 1  # no empty GPU panel on a CPU-only run
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert len(labels) >= 3 and "1x" in labels and all(lab.endswith("x") for lab in labels), labels
    values = [float(lab[:-1]) for lab in labels]
    assert min(values) < 1 < max(values)  # the INT8 row is slower, ONNX Runtime FP32 faster


def test_mixed_run_titles_name_both_devices():
    t = _table(("cpu", "cuda"))
    assert "GPU rows: transfers excluded" in _titles(plots.throughput(t))
    assert len(plots.speedup(bench.speedup_table(t)).axes) == 2
    assert plots.ratio_ticks(0.01, 100) == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert len(plots.ratio_ticks(0.8, 1.3)) >= 3


# --- progress: bars where someone watches, plain lines in a batch log ---------------------------------------
def test_progress_in_a_batch_log_is_a_few_plain_lines(monkeypatch, capsys):
    monkeypatch.setenv("MVLIB_PROGRESS", "lines")
    assert list(progress.progress(range(25), "sensitivity")) == list(range(25))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert 3 <= len(lines) <= progress.LINES_PER_LOOP + 1 and "\r" not in out
    assert lines[-1].startswith("sensitivity") and "25/25" in lines[-1]
    assert list(progress.progress(range(3), "measure", lines=False)) == [0, 1, 2]
    assert capsys.readouterr().out == ""  # loops that print their own line per step get nothing extra
    assert list(progress.progress(iter(range(2)), "unsized")) == [0, 1]
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("unsized") and "2" in last


def test_progress_modes(monkeypatch, capsys):
    monkeypatch.setenv("MVLIB_PROGRESS", "off")
    assert list(progress.progress(range(3), "x")) == [0, 1, 2] and capsys.readouterr().out == ""
    monkeypatch.setenv("MVLIB_PROGRESS", "bar")
    bar = progress.progress(range(3), "x")
    assert type(bar).__module__.startswith("tqdm") and list(bar) == [0, 1, 2]
    monkeypatch.setenv("MVLIB_PROGRESS", "loud")
    with pytest.raises(ValueError, match="bar, lines, off"):
        progress.mode()
    monkeypatch.delenv("MVLIB_PROGRESS")
    assert progress.mode() == "lines"  # pytest captures stderr: no terminal, no kernel


# --- a quiet import ---------------------------------------------------------------------------------------------
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


# --- package configuration -------------------------------------------------------------------------------------
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
    import zipfile
    wheel = next((tmp_path / "dist").glob("mvlib-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"mvlib/profiles/full.yaml", "mvlib/profiles/smoke.yaml", "mvlib/progress.py"} <= set(names)


# --- notebook outputs are stripped on commit ----------------------------------------------------------------------
def _git(repo, *args, **kw):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, **kw)


def test_make_hooks_strips_outputs_on_git_add(tmp_path):
    """`make hooks` in a clone: committed notebooks pass the filter unchanged, a saved one loses its outputs."""
    pytest.importorskip("nbstripout")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    import nbformat
    repo = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(repo)], check=True, timeout=300)
    for name in ("Makefile", ".gitattributes"):  # this checkout's, committed or not
        shutil.copy(ROOT / name, repo / name)
    (repo / ".venv").symlink_to(ROOT / ".venv")
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
