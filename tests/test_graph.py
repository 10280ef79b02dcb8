"""Graph views: op census, one MobileViT block before/after the rewrite, drawings from the saved tables, notebook 02."""
import collections
import os
import re
import shutil
import threading
import urllib.request

import matplotlib

matplotlib.use("Agg")
import onnx  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import smoke  # noqa: E402
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402

from mvlib import graph, io, onnxmodel, paths  # noqa: E402
from mvlib.silu import onnx_rewrite  # noqa: E402
from mvlib.tensorrt import plugins  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(xxs, tmp_path_factory):
    """A folder holding the exported xxs model.onnx and its SiLU rewrite."""
    exported, _ = xxs
    d = tmp_path_factory.mktemp("graph")
    shutil.copy(exported.onnx, d / "model.onnx")
    onnx_rewrite.rewrite(d / "model.onnx", d / "model.silu.onnx")
    return d


def test_census_counts_every_node_of_the_files_present(model_dir):
    files = graph.census_files(model_dir)
    assert list(files) == ["model.onnx", "model.silu.onnx"]  # fp16 / int8 absent: not listed
    table = graph.op_census(files).set_index("op_type")
    for name, path in files.items():
        counts = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        assert table.loc["total", name] == sum(counts.values())
        assert {op: int(table.loc[op, name]) for op in counts} == dict(counts)
    plugin = onnx_rewrite.plugin_id().name
    assert table.loc["Sigmoid", "model.onnx"] == 34 and table.loc["Sigmoid", "model.silu.onnx"] == 0
    assert table.loc[plugin, "model.onnx"] == 0 and table.loc[plugin, "model.silu.onnx"] == 34
    assert table.loc["Mul", "model.onnx"] - table.loc["Mul", "model.silu.onnx"] == 34


def test_census_needs_the_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="export first"):
        graph.census_files(tmp_path)


def test_census_figure_from_the_saved_table(model_dir, tmp_path):
    table = graph.op_census(graph.census_files(model_dir))
    io.write_csv(tmp_path / "census.csv", table)
    fig = graph.census_heatmap(pd.read_csv(tmp_path / "census.csv"))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert str(int(table.iloc[-1]["model.onnx"])) in texts  # the total is printed in its cell
    assert len(fig.axes[0].patches) == int((table["model.silu.onnx"] != table["model.onnx"]).sum())  # outlines
    fig.savefig(tmp_path / "census.png")
    assert (tmp_path / "census.png").stat().st_size > 10_000


def test_block_prefixes_of_mobilevit(model_dir):
    prefixes = graph.block_prefixes(onnx.load(str(model_dir / "model.onnx")))
    assert prefixes == ["/stages/stages.2/stages.2.1/", "/stages/stages.3/stages.3.1/", "/stages/stages.4/stages.4.1/"]


def test_block_before_and_after_the_rewrite(model_dir):
    before = graph.block_graph(model_dir / "model.onnx", 0)
    after = graph.block_graph(model_dir / "model.silu.onnx", 0)
    kinds = lambda g: collections.Counter(d["kind"] for _, d in g.nodes(data=True))  # noqa: E731
    # the visible activations: conv_kxk, mlp of layer 0, conv_proj, conv_fusion
    assert kinds(before)["act"] == 2 * 4 and kinds(before)["plugin"] == 0
    assert kinds(after)["plugin"] == 4 and kinds(after)["act"] == 0
    labels = [d["label"] for _, d in before.nodes(data=True)]
    for part in ("unfold", "fold", "multi-head self-attention", "transformer layer 1", "Conv 3x3 · conv_fusion",
                 "Concat · local + global", "block input", "block output"):
        assert any(part in label for label in labels), part
    # one op less per rewritten pair inside the block: 4 visible plus 1 in the collapsed layer 1
    ops = lambda g: sum(d["ops"] for _, d in g.nodes(data=True))  # noqa: E731
    assert ops(before) - ops(after) == 5
    # the shortcut: the block input feeds the local conv and the concat
    assert set(before.successors("block input")) == {"conv_kxk/conv/Conv", "Concat_6"}
    assert before.has_edge("conv_kxk/conv/Conv", "conv_kxk/bn/act/Mul")  # x goes to Mul and to Sigmoid
    assert after.has_edge("conv_kxk/conv/Conv", "conv_kxk/bn/act/" + onnx_rewrite.plugin_id().name)


def test_a_node_of_tensorrt_s_plugin_domain_is_a_plugin_whatever_its_op():
    """The domain says a node is a plugin op (mvlib.tensorrt.plugins), not the op's name."""
    other = h.make_node("OtherPlugin", ["x"], ["y"], domain=plugins.PLUGIN_DOMAIN)
    assert graph._describe(other, "stages.2/conv_kxk/bn/act/OtherPlugin")[1] == "plugin"
    namesake = h.make_node(onnx_rewrite.plugin_id().name, ["x"], ["y"])  # the plugin's name, ONNX's own domain
    assert graph._describe(namesake, "stages.2/head/Op")[1] == "other"


def test_block_tables_round_trip_and_drawing(model_dir, tmp_path):
    files = {"before": model_dir / "model.onnx", "after": model_dir / "model.silu.onnx"}
    nodes, edges = graph.block_tables(files, 1)
    assert set(nodes["block"]) == {"/stages/stages.3/stages.3.1/"}
    for name in files:  # every edge points to a later layer
        layer = nodes[nodes.graph == name].set_index("id")["layer"]
        e = edges[edges.graph == name]
        assert (layer[e.dst].to_numpy() > layer[e.src].to_numpy()).all()
    io.write_csv(tmp_path / "n.csv", nodes)
    io.write_csv(tmp_path / "e.csv", edges)
    fig = graph.block_before_after(pd.read_csv(tmp_path / "n.csv"), pd.read_csv(tmp_path / "e.csv"))
    assert len(fig.axes) == 2
    drawn = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sorted(drawn) == sorted(nodes["label"])
    assert "transformer layers 1-3 (as layer 0)" in "".join(drawn)  # block 1 of xxs has 4 layers


def test_block_bad_input(model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"block 7.*\b3\b"):
        graph.block_graph(model_dir / "model.onnx", 7)
    vi = h.make_tensor_value_info("x", T.FLOAT, [1])
    plain = onnxmodel.make_model(h.make_graph([h.make_node("Relu", ["x"], ["y"], name="relu")], "g", [vi],
                                              [h.make_tensor_value_info("y", T.FLOAT, [1])]))
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="module names"):
        graph.block_graph(tmp_path / "plain.onnx")


def test_netron_serves_the_model(model_dir):
    pytest.importorskip("netron", reason="netron comes with the dev extra")
    frame = graph.netron_view(model_dir / "model.onnx", height=300)
    try:
        assert re.match(r"http://[\w.]+:\d+", frame.src) and frame.height == 300
        assert urllib.request.urlopen(frame.src, timeout=10).status == 200
    finally:
        graph.netron_stop()  # the study's own server (netron.stop() knows only netron's)


def test_notebook_02_smoke_run_rewrites_and_checks_on_the_cpu(smoke_run):  # its files: test_notebooks
    model_dir = smoke.model_dir()  # the run builds in its own folder
    assert (model_dir / "model.silu.onnx").is_file()
    stages = {k: v for k, v in io.read_json(smoke_run / "manifest.json")["stages"].items() if k.startswith("02_graph/")}
    assert stages and all(v["status"] == "ok" and v["tier"] == "cpu" for v in stages.values()), stages
    rewrite = pd.read_csv(smoke_run / "results" / "02_silu_rewrite.csv").iloc[0]
    assert rewrite["pairs_rewritten"] == rewrite["torch_silu_calls"] == 34 and rewrite["passed"]
    check = pd.read_csv(smoke_run / "results" / "02_silu_cpu_check.csv")
    assert len(check) == 2 and (check["max_abs"] <= 1e-6).all()


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
    x = h.make_tensor_value_info("x", T.FLOAT, [1])
    y = h.make_tensor_value_info("y", T.FLOAT, [1])
    onnx.save(onnxmodel.make_model(h.make_graph([h.make_node("Identity", ["x"], ["y"])], path.stem, [x], [y])),
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
