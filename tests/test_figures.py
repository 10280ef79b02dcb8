"""mvlib.figures: the one figure convention (pyplot-free Figure, provenance footer)."""
import ast

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from mvlib import figures, paths


def test_new_stays_out_of_pyplot_and_saves(tmp_path):
    before = plt.get_fignums()
    fig, axes = figures.new(2, 3, size=(6, 3), sharey=True)
    assert isinstance(fig, Figure) and axes.shape == (2, 3)
    assert tuple(fig.get_size_inches()) == (6, 3)
    assert plt.get_fignums() == before  # nothing to close, nothing shown twice
    axes[0, 0].plot(np.random.default_rng(3).normal(size=20))
    fig.savefig(tmp_path / "f.png", dpi=50)
    assert Image.open(tmp_path / "f.png").size == (300, 150)


def test_new_single_axes_and_blank():
    fig, ax = figures.new()
    assert len(fig.axes) == 1 and ax is fig.axes[0]
    fig, none = figures.new(0, size=(4, 2))
    assert none is None and fig.axes == []
    gs = fig.add_gridspec(2, 1)  # callers that lay out their own panels start from the blank figure
    fig.add_subplot(gs[0])
    assert len(fig.axes) == 1


@pytest.mark.parametrize("bottom", [0.05, 0.3])
def test_footer_text_inside_figure_below_axes(bottom):
    fig, ax = figures.new(size=(5, 3))
    fig.subplots_adjust(bottom=bottom)
    figures.footer(fig, "GPU X | tier trt | run r1")
    assert fig.subplotpars.bottom >= max(bottom, figures.FOOTER_BOTTOM)  # raised, never lowered
    fig.canvas.draw()
    text = [t for t in fig.texts if t.get_text() == "GPU X | tier trt | run r1"]
    assert len(text) == 1
    box = text[0].get_window_extent()
    # below the axes and below their tick labels too (a short figure's 0.12 of its height is not enough for them)
    assert box.x0 >= 0 and box.y0 >= 0 and box.y1 < ax.get_tightbbox().y0


def test_plain_log_labels_plain_numbers():
    fig, ax = figures.new()
    ax.set_xscale("log")
    ax.plot([0.02, 300, 2e4], [1, 2, 3])
    figures.plain_log(ax.xaxis)
    fig.canvas.draw()
    labels = {t.get_text() for t in ax.get_xticklabels()}
    assert {"1", "10", "100", "1000"} <= labels  # not $10^{0}$ ... (matplotlib's default mathtext)
    assert not any("$" in label for label in labels)


def _pyplot_imports(path) -> list[int]:
    """Lines of `path` that import matplotlib.pyplot, in any spelling."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name == "matplotlib.pyplot" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module == "matplotlib.pyplot" or (
                node.module == "matplotlib" and any(a.name == "pyplot" for a in node.names))):
            lines.append(node.lineno)
    return lines


def test_no_mvlib_module_draws_through_pyplot():
    """Every figure of the package is a figures.new Figure: pyplot's global figure list is never touched."""
    package = paths.ROOT / "mvlib"
    offenders = {str(p.relative_to(package)): lines for p in sorted(package.rglob("*.py"))
                 if (lines := _pyplot_imports(p))}
    assert offenders == {}, f"draw on mvlib.figures.new instead of pyplot: {offenders}"


def test_pyplot_finder_sees_every_spelling(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import matplotlib.pyplot as plt\nfrom matplotlib import pyplot\nfrom matplotlib.pyplot import "
                   "subplots\nimport matplotlib\nfrom matplotlib.figure import Figure\n")
    assert _pyplot_imports(src) == [1, 2, 3]


# --- every figure's labels legible at the saved size (issue 26, row 12) ---------------------------------------
RESULTS = paths.ROOT / "data" / "results"
FOOTER = "NVIDIA H200 | tier gpu | random weights (seed 0, fallback) | run full 2026-11-24 | mvlib abcdef0"


def _committed_figures():
    """Notebooks 02-06's figures, each a function drawing it from the committed tables (each sensitivity figure
    from its precision's rows, as notebook 04 draws them)."""
    import pandas as pd

    from mvlib import autocast, decision_plots, graph, io, quant_plots
    from mvlib.silu import gpu_checks
    title = ("mobilevit_s, INT8 and FP8 vs FP32 on 256 evaluation images: shipped sample images "
             "(10 public-domain/CC0 pictures + variations)")
    from mvlib import plots
    bench = pd.read_csv(RESULTS / "06_benchmark.csv")
    sensitivity = pd.read_csv(RESULTS / "04_sensitivity.csv")
    return {"02_op_census": lambda: graph.census_heatmap(pd.read_csv(RESULTS / "02_op_census.csv")),
            "02_block_before_after": lambda: graph.block_before_after(pd.read_csv(RESULTS / "02_block_nodes.csv"),
                                                                      pd.read_csv(RESULTS / "02_block_edges.csv")),
            "03_errors": lambda: autocast.error_figure(RESULTS / "03_errors.csv", RESULTS / "03_accuracy.csv"),
            "04_int8_accuracy": lambda: quant_plots.plot_accuracy(pd.read_csv(RESULTS / "04_int8_accuracy.csv"), title),
            "04_sensitivity": lambda: quant_plots.plot_sensitivity(sensitivity[sensitivity.precision == "int8"],
                                                                   "sensitivity"),
            "04_fp8_sensitivity": lambda: quant_plots.plot_sensitivity(sensitivity[sensitivity.precision == "fp8"],
                                                                       "FP8 sensitivity"),
            "05_kernel_bandwidth": lambda: gpu_checks.bandwidth_figure(RESULTS / "05_kernel_bandwidth.csv"),
            "06_throughput": lambda: plots.throughput(bench),
            "06_latency_b1": lambda: plots.latency_b1(bench),
            "06_speedup": lambda: plots.speedup(pd.read_csv(RESULTS / "06_speedup.csv")),
            "06_roofline": lambda: plots.roofline(bench, pd.read_csv(RESULTS / "06_ceilings.csv"),
                                                  pd.read_csv(RESULTS / "06_model_cost.csv")),
            "06_decision": lambda: decision_plots.tradeoffs(pd.read_csv(RESULTS / "06_decision.csv"),
                                                            io.read_json(RESULTS / "manifest.json"))}


def test_the_overlap_check_sees_texts_that_collide():
    fig, ax = figures.new(size=(3, 2))
    ax.set_xlabel("a long axis label that runs on")
    ax.text(0.5, -0.2, "sits on it", transform=ax.transAxes, ha="center")
    assert ("a long axis label that runs on", "sits on it") in figures.label_overlaps(fig) or \
        ("sits on it", "a long axis label that runs on") in figures.label_overlaps(fig)
    fig, ax = figures.new(size=(3, 2))
    ax.set_xlabel("alone")
    assert figures.label_overlaps(fig) == []
    fig, ax = figures.new(size=(4, 3))  # slanted neighbours whose upright boxes overlap but whose letters do not
    ax.set_xticks(range(4), [f"a long slanted tick label {i}" for i in range(4)], rotation=35, ha="right")
    assert figures.label_overlaps(fig) == []


FIGURES = ["02_op_census", "02_block_before_after", "03_errors", "04_int8_accuracy", "04_sensitivity",
           "04_fp8_sensitivity", "05_kernel_bandwidth", "06_throughput", "06_latency_b1", "06_speedup", "06_roofline",
           "06_decision"]


@pytest.mark.parametrize("name", FIGURES)
def test_no_two_labels_of_a_figure_overlap_with_its_footer(name, tmp_path):
    """Tick labels, axis labels, titles, legends, values and the footer: no two boxes overlap as drawn (a rotated
    label by its slanted outline)."""
    from mvlib import io
    fig = _committed_figures()[name]()
    figures.footer(fig, FOOTER)
    assert figures.label_overlaps(fig) == []
    io.save_figure(fig, tmp_path / f"{name}.png")  # and it saves
