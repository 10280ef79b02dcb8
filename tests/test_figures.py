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
    assert fig.subplotpars.bottom == max(bottom, figures.FOOTER_BOTTOM)  # raised, never lowered
    fig.canvas.draw()
    text = [t for t in fig.texts if t.get_text() == "GPU X | tier trt | run r1"]
    assert len(text) == 1
    box = text[0].get_window_extent()
    assert box.x0 >= 0 and box.y0 >= 0 and box.y1 < ax.get_window_extent().y0


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
