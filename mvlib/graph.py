"""Looking at the ONNX graph: op census, one MobileViT block as a compact picture, netron on request.

No system binaries: the block is laid out here (layers by longest path) and drawn with networkx and
matplotlib. Every figure is drawn from a table, so the census and block tables are the source of truth.

Serves: notebook 02 (op census, block figure, netron).
"""
import collections
import re
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from mvlib import figures
from mvlib.export import ARTIFACTS
from mvlib.tensorrt.plugins import PLUGIN_DOMAIN

CENSUS_FILES = tuple(ARTIFACTS[role] for role in ("fp32", "plugin_fp32", "fp16", "int8"))
OWN_FILES = CENSUS_FILES[:2]  # what notebook 02 itself makes: its census must not depend on later notebooks
SHAPE_OPS = {"Shape", "Size"}  # their outputs describe a tensor, they carry no activations
COLORS = {"conv": "#9ecae1", "act": "#fdae6b", "plugin": "#74c476", "norm": "#dadaeb", "linear": "#c6dbef",
          "reshape": "#e5e5e5", "collapsed": "#fcc5c0", "merge": "#fee391", "io": "#ffffff", "other": "#f0f0f0"}
KINDS = {"conv": "convolution", "act": "SiLU as Sigmoid + Mul", "plugin": "SiLU plugin node", "norm": "LayerNorm",
         "linear": "linear layer", "reshape": "unfold / fold", "collapsed": "collapsed group",
         "merge": "residual / concat", "other": "other op"}


# --- op census --------------------------------------------------------------------------------------------
def census_files(model_dir: Path | str, names=CENSUS_FILES) -> dict[str, Path]:
    """The ONNX files of one export that exist now, by file name, in the study's order."""
    model_dir = Path(model_dir)
    found = {n: model_dir / n for n in names if (model_dir / n).is_file()}
    if ARTIFACTS["fp32"] not in found:
        raise FileNotFoundError(f"{model_dir / ARTIFACTS['fp32']} does not exist; export first "
                                "(notebook 01 or mvlib.export.ensure_exported)")
    return found


def op_census(files: dict[str, Path]) -> pd.DataFrame:
    """Node count per op type (rows) and file (columns), most frequent first, with a total row last."""
    counts = {label: collections.Counter(n.op_type for n in onnx.load(str(p), load_external_data=False).graph.node)
              for label, p in files.items()}
    table = pd.DataFrame(counts).fillna(0).astype(int)
    table = table.loc[table.max(axis=1).sort_values(ascending=False, kind="stable").index]
    table.loc["total"] = table.sum()
    return table.rename_axis("op_type").reset_index()


def census_heatmap(table: pd.DataFrame) -> Figure:
    """The op census table as an annotated heat map; cells that differ from the first file are outlined."""
    files = [c for c in table.columns if c != "op_type"]
    ops = table["op_type"].tolist()
    counts = table[files].to_numpy()
    fig, ax = figures.new(size=(2.2 + 1.45 * len(files), 0.26 * len(ops) + 1.6))
    shade = np.log1p(counts.astype(float))
    shade[-1] = np.nan  # the total row would dominate the colour scale
    ax.imshow(shade, cmap="Blues", aspect="auto", vmin=0, vmax=np.nanmax(shade) * 1.25)
    for i, op in enumerate(ops):
        for j in range(len(files)):
            v = int(counts[i, j])
            ax.text(j, i, str(v) if v else "·", ha="center", va="center", fontsize=7.5,
                    fontweight="bold" if op == "total" else "normal")
            if j and v != counts[i, 0]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="#d62728", lw=1.5))
    ax.set_xticks(range(len(files)), files, rotation=20, ha="left", fontsize=8)  # left: the labels sit on top
    ax.set_yticks(range(len(ops)), ops, fontsize=8)
    ax.tick_params(top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.set_title("ONNX op census: nodes per op type (red outline: differs from " + files[0] + ")", fontsize=9)
    fig.tight_layout()
    return fig


# --- one MobileViT block ----------------------------------------------------------------------------------
def block_prefixes(model: onnx.ModelProto) -> list[str]:
    """Name prefixes of the MobileViT blocks (scopes that hold a transformer), in graph order."""
    found: list[str] = []
    for node in model.graph.node:
        m = re.match(r"^(.*/)transformer/", node.name)
        if m and m.group(1) not in found:
            found.append(m.group(1))
    if not found:
        raise ValueError("no node name contains '/transformer/': this graph does not carry timm's module names "
                         "(export it with mvlib.export, which keeps them)")
    return found


def _data_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors that carry activations: reachable from the graph inputs without passing a Shape op."""
    consumers = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    seen, stack = set(), [i.name for i in model.graph.input]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in consumers[name]:
            if node.op_type not in SHAPE_OPS:
                stack.extend(node.output)
    return seen


def _describe(node: onnx.NodeProto, rel: str) -> tuple[str, str]:
    """Label and kind of one node kept as its own box."""
    parts = [p for p in rel.split("/")[:-1]
             if p not in ("transformer", "bn", "conv") and not p.startswith("transformer.")]
    scope = " ".join(parts)
    op = node.op_type
    if op == "Conv":
        k = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
        return f"Conv {'x'.join(map(str, k)) if k else ''} · {scope}".strip(" ·"), "conv"
    if node.domain == PLUGIN_DOMAIN:  # the domain, not the op's name, says a node is a plugin op
        return f"{op} (plugin) · {scope}", "plugin"
    if op in ("Sigmoid", "Mul") and scope.endswith("act"):
        return f"{op} · {scope}", "act"
    if op == "LayerNormalization":
        return f"LayerNorm · {scope}", "norm"
    if op in ("Add", "Concat"):
        return f"{op} · {scope or ('residual' if op == 'Add' else 'local + global')}", "merge"
    return f"{op} · {scope}".strip(" ·"), "other"


def _group(node: onnx.NodeProto, rel: str, layers: list[int], after_transformer: bool) -> tuple[str, str, str]:
    """The box a block node is drawn in: (id, label, kind)."""
    m = re.match(r"transformer/transformer\.(\d+)/(.*)", rel)
    if m and int(m.group(1)) != layers[0]:
        rest = layers[1:]
        span = f"transformer layer {rest[0]}" if len(rest) == 1 else f"transformer layers {rest[0]}-{rest[-1]}"
        return "later layers", span + " (as layer 0)", "collapsed"
    if m and m.group(2).startswith("attn/"):
        return "attention", "multi-head self-attention", "collapsed"
    if m and re.match(r"mlp/fc\d/", m.group(2)):
        fc = m.group(2).split("/")[1]
        return fc, f"{fc} (MatMul + Add)", "linear"
    if "/" not in rel and node.op_type in ("Reshape", "Transpose"):
        gid = "fold" if after_transformer else "unfold"
        return gid, f"{gid} (Reshape / Transpose)", "reshape"
    return (rel, *_describe(node, rel))


def _block_nodes(model: onnx.ModelProto, block: int) -> tuple[str, list[onnx.NodeProto]]:
    """The name prefix of block `block` and its data-path nodes, in graph order."""
    prefixes = block_prefixes(model)
    if not 0 <= block < len(prefixes):
        raise ValueError(f"block {block} does not exist: this model has {len(prefixes)} MobileViT blocks "
                         f"(0..{len(prefixes) - 1})")
    prefix, data = prefixes[block], _data_tensors(model)
    return prefix, [n for n in model.graph.node if n.name.startswith(prefix) and n.op_type not in SHAPE_OPS
                    and any(i in data for i in n.input)]


def block_graph(path: Path | str, block: int = 0) -> nx.DiGraph:
    """One MobileViT block of an ONNX file as a compact DAG of labelled boxes.

    Shape arithmetic is left out; the unfold and fold reshapes, the attention and every transformer
    layer after the first are each one box; convolutions, activations (Sigmoid, Mul or the plugin),
    norms and merges stay single nodes so the SiLU rewrite shows.
    """
    model = onnx.load(str(path), load_external_data=False)
    prefix, nodes = _block_nodes(model, block)
    layer_of = (re.match(r"transformer/transformer\.(\d+)/", n.name[len(prefix):]) for n in nodes)
    layers = sorted({int(m.group(1)) for m in layer_of if m})
    g = nx.DiGraph(prefix=prefix, source=Path(path).name)
    group_of, after_transformer = {}, False
    for node in nodes:
        rel = node.name[len(prefix):]
        after_transformer |= rel.startswith("transformer/")
        gid, label, kind = _group(node, rel, layers, after_transformer)
        group_of[node.name] = gid
        if gid not in g:
            g.add_node(gid, label=label, kind=kind, ops=0)
        g.nodes[gid]["ops"] += 1
    for _gid, d in g.nodes(data=True):
        d["label"] += f"\n{d['ops']} ops" if d["ops"] > 1 else ""
    _connect(g, model, prefix, nodes, group_of)
    return g


def _connect(g: nx.DiGraph, model: onnx.ModelProto, prefix: str, nodes: list, group_of: dict) -> None:
    """Edges between boxes along data tensors, plus the block's input and output."""
    data = _data_tensors(model)
    producer = {o: n for n in nodes for o in n.output}
    for node in nodes:
        for name in (i for i in node.input if i in data):
            src = group_of[producer[name].name] if name in producer else "block input"
            if src == "block input":
                g.add_node(src, label="block input", kind="io", ops=0)
            if src != group_of[node.name]:
                g.add_edge(src, group_of[node.name])
    read_outside = {i for n in model.graph.node if not n.name.startswith(prefix) for i in n.input}
    read_outside |= {o.name for o in model.graph.output}
    for node in nodes:
        if any(o in read_outside for o in node.output):
            g.add_node("block output", label="block output", kind="io", ops=0)
            g.add_edge(group_of[node.name], "block output")


def block_tables(files: dict[str, Path], block: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Nodes (with layout) and edges of one block for each labelled file, as two tables."""
    node_rows, edge_rows = [], []
    for label, path in files.items():
        g = block_graph(path, block)
        layer = {}
        for v in nx.topological_sort(g):  # longest-path layering: every edge points down
            layer[v] = max((layer[u] + 1 for u in g.predecessors(v)), default=0)
        by_layer = collections.defaultdict(list)
        for v in nx.topological_sort(g):
            by_layer[layer[v]].append(v)
        for lay, vs in by_layer.items():
            for i, v in enumerate(vs):
                node_rows.append({"graph": label, "source": g.graph["source"], "block": g.graph["prefix"], "id": v,
                                  "label": g.nodes[v]["label"], "kind": g.nodes[v]["kind"], "ops": g.nodes[v]["ops"],
                                  "layer": lay, "x": i - (len(vs) - 1) / 2})
        edge_rows += [{"graph": label, "src": u, "dst": v} for u, v in g.edges]
    return pd.DataFrame(node_rows), pd.DataFrame(edge_rows)


def block_before_after(nodes: pd.DataFrame, edges: pd.DataFrame) -> Figure:
    """Side-by-side drawings of the block tables (one panel per graph), skip edges drawn as arcs."""
    graphs = list(dict.fromkeys(nodes["graph"]))
    depth = int(nodes["layer"].max()) + 1
    fig, axes = figures.new(1, len(graphs), size=(4.6 * len(graphs), 0.42 * depth + 1.8), squeeze=False)
    for ax, name in zip(axes[0], graphs, strict=True):
        ns, es = nodes[nodes["graph"] == name], edges[edges["graph"] == name]
        g = nx.DiGraph()
        for r in ns.itertuples():
            g.add_node(r.id, label=r.label, kind=r.kind, layer=r.layer)
        g.add_edges_from(zip(es["src"], es["dst"], strict=True))
        pos = {r.id: (r.x * 2.2, -r.layer) for r in ns.itertuples()}
        near = [(u, v) for u, v in g.edges if g.nodes[v]["layer"] - g.nodes[u]["layer"] == 1]
        far = [(u, v) for u, v in g.edges if (u, v) not in near]
        nx.draw_networkx_edges(g, pos, edgelist=near, ax=ax, arrows=True, arrowsize=8, node_size=900, width=0.8)
        nx.draw_networkx_edges(g, pos, edgelist=far, ax=ax, arrows=True, arrowsize=8, node_size=900, width=0.8,
                               edge_color="0.45", style="dashed", connectionstyle="arc3,rad=-0.35")
        for v, (x, y) in pos.items():
            d = g.nodes[v]
            plugin = d["kind"] == "plugin"
            ax.text(x, y, d["label"], ha="center", va="center", fontsize=6.5, zorder=3,
                    bbox=dict(boxstyle="round,pad=0.3", fc=COLORS.get(d["kind"], "#ffffff"),
                              ec="#006d2c" if plugin else "0.3", lw=1.6 if plugin else 0.8))
        n_ops = int(ns["ops"].sum())
        ax.set_title(f"{name}\n{ns['source'].iloc[0]}: {ns['block'].iloc[0]} ({n_ops} data-path ops)", fontsize=9)
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-depth + 0.4, 0.6)
        ax.axis("off")
    present = [k for k in KINDS if k in set(nodes["kind"])]
    fig.legend(handles=[Patch(fc=COLORS[k], ec="0.3", label=KINDS[k]) for k in present], loc="lower center",
               ncol=min(5, len(present)), fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.02))
    fig.suptitle("One MobileViT block: local conv, unfold, transformer, fold, fusion conv\n"
                 "(dashed: skip connections; shape arithmetic left out)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


# --- netron ------------------------------------------------------------------------------------------------
# netron (the dev extra) serves its web app and the model file from a small HTTP server in this kernel. The
# browser reaches it through JupyterLab's own port where jupyter-server-proxy is installed (`/proxy/<port>/`,
# relative to the server's base URL, so it works through an SSH tunnel to JupyterLab), else on localhost:<port>.
# The web app asks for consent to cookies and then reports usage to Google Analytics and looks the visitor up
# on ipinfo.io; netron has no setting to turn that off, so this server sends a Content-Security-Policy that
# lets the page connect to its own origin only: the browser blocks both calls.
NETRON_PORT = 8080  # tried first, then any free port; one server per kernel, reused by every call
NETRON_HEADERS = {"Content-Security-Policy": "connect-src 'self'", "Cache-Control": "no-store"}
_NETRON: dict = {}  # this kernel's netron server: server, thread, handler, port, path


def jupyter_server(pid: int | None = None) -> dict | None:
    """The running Jupyter server that started this kernel (its parent process), from the runtime files.

    Its info has `url`, `base_url`, `port`, `token`, `root_dir`, `pid`. None outside a Jupyter server (a
    papermill run, a terminal), or where jupyter_server is not installed.
    """
    import os
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:
        return None
    pid = os.getppid() if pid is None else pid
    try:
        return next((info for info in list_running_servers() if info.get("pid") == pid), None)
    except OSError:
        return None


def _proxy_serves(server: dict, port: int, timeout: float = 3.0) -> bool | None:
    """Whether the server's `/proxy/<port>/` answers (True), is absent (False) or could not be asked (None)."""
    import urllib.error
    import urllib.request
    url = server.get("url", "").rstrip("/") + f"/proxy/{port}/"
    headers = {"Authorization": f"token {server['token']}"} if server.get("token") else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as reply:
            return reply.status == 200
    except urllib.error.HTTPError as err:
        return False if err.code == 404 else None
    except (OSError, ValueError):
        return None


def proxy_installed() -> bool:
    """Whether jupyter-server-proxy is installed where this kernel runs (the server usually shares the env)."""
    import importlib.util
    return importlib.util.find_spec("jupyter_server_proxy") is not None


def netron_address(port: int, server: dict | None, proxy: bool, host: str = "", user: str = "") -> tuple[str, str]:
    """Where the netron frame points, and what to tell the user about reaching it.

    With a Jupyter server whose jupyter-server-proxy is on: a path on JupyterLab's own origin,
    `<base_url>proxy/<port>/`, which every browser that reaches JupyterLab also reaches (a tunnel
    included). Otherwise `http://localhost:<port>/`, visible only to a browser on this machine, and the one
    `ssh -L` line that forwards the port to a browser elsewhere.
    """
    if server is not None and proxy:
        base = "/" + server.get("base_url", "/").strip("/")
        src = base.rstrip("/") + f"/proxy/{port}/"
        return src, (f"netron is served through JupyterLab's own port at {src} (jupyter-server-proxy): it shows "
                     "wherever JupyterLab does, through an SSH tunnel too")
    import getpass
    import socket
    host = host or socket.gethostname()
    user = user or getpass.getuser()
    src = f"http://localhost:{port}/"
    why = ("jupyter-server-proxy is not enabled in this JupyterLab (pip install -e '.[dev]', then restart "
           "JupyterLab, to serve netron through JupyterLab's own port)" if server is not None else
           "this kernel was not started by a Jupyter server")
    return src, (f"netron serves {src}; {why}. The frame shows only in a browser on this machine. From another "
                 f"machine, forward the port, then reload the frame (re-run the cell):\n"
                 f"    ssh -N -L {port}:localhost:{port} {user}@{host}")


def _netron_handler(path: Path):
    """A request handler class that serves netron's app and `path`, with NETRON_HEADERS on every reply."""
    from netron import server as ns
    base, provider = ns._HTTPRequestHandler, ns._ContentProvider  # netron's own handler: mime types, /data/, meta

    class Handler(base):
        content = provider(None, str(path), str(path), str(path))

        def end_headers(self):
            for key, value in NETRON_HEADERS.items():
                self.send_header(key, value)
            super().end_headers()
    return Handler


def _netron_serve(path: Path, port: int | None) -> int:
    """Serve `path` from this kernel's one netron server (started on first use, else re-pointed); its port."""
    import http.server
    import threading
    running = _NETRON.get("thread")
    if running is not None and running.is_alive() and port in (None, _NETRON["port"]):
        handler = _NETRON["handler"]
        handler.content = _netron_handler(path).content  # same port and frame address, new file
        _NETRON["path"] = path
        return _NETRON["port"]
    netron_stop()
    handler, server = _netron_handler(path), None
    for candidate in ([port] if port else [NETRON_PORT, 0]):
        try:
            server = http.server.ThreadingHTTPServer(("localhost", candidate), handler)
            break
        except OSError:
            if port:
                raise
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="mvlib-netron", daemon=True)
    thread.start()
    _NETRON.update(server=server, thread=thread, handler=handler, port=server.server_address[1], path=path)
    return _NETRON["port"]


def netron_stop() -> None:
    """Stop this kernel's netron server, if one runs."""
    server = _NETRON.pop("server", None)
    _NETRON.clear()
    if server is not None:
        server.shutdown()
        server.server_close()


def netron_view(path: Path | str, height: int = 700, port: int | None = None):
    """Serve `path` with netron and return an IFrame for JupyterLab (netron comes with the dev extra).

    One server per kernel: a re-run, or another file, reuses it (same port, same frame address). The frame is
    served through JupyterLab's port where jupyter-server-proxy is on (`netron_address` says what else).
    After a kernel restart a saved frame points at a server that is gone: re-run the cell.
    """
    try:
        import netron  # noqa: F401
    except ImportError as err:
        raise ImportError("netron is not installed: pip install -e '.[dev]' (or pip install netron), or set "
                          "open_netron = False") from err
    from IPython.display import IFrame
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    reused = _NETRON.get("thread") is not None and _NETRON["thread"].is_alive()
    port = _netron_serve(path, port)
    server = jupyter_server()
    proxy = False
    if server is not None:
        answer = _proxy_serves(server, port)
        proxy = proxy_installed() if answer is None else answer
    src, note = netron_address(port, server, proxy)
    print(("reusing this kernel's netron server" if reused else "started netron") + f" on port {port} for {path.name}")
    print(note)
    return IFrame(src, width="100%", height=height)
