"""The one figure convention: a pyplot-free matplotlib Figure on the Agg canvas, and its provenance footer.

Serves: notebooks 02-06 (every figure function of mvlib draws on `new`; Run.save_figure writes `footer`).
Figures made here never enter pyplot's global list, so a notebook shows the saved file once and nothing leaks
between figures or stays open after a batch run.
"""
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

FOOTER_BOTTOM = 0.12  # smallest bottom margin (figure fraction) that keeps the footer clear of tick labels


def new(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.8), **subplots):
    """(Figure, axes) on the Agg canvas as Figure.subplots returns them; nrows=0 gives a blank figure and None."""
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    if nrows == 0 or ncols == 0:
        return fig, None
    return fig, fig.subplots(nrows, ncols, **subplots)


def footer(fig: Figure, text: str) -> None:
    """Write `text` small in the bottom-left corner and keep the axes above it."""
    fig.text(0.01, 0.005, text, fontsize=7, color="0.35", ha="left", va="bottom")
    fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, FOOTER_BOTTOM))


def plain_log(axis) -> None:
    """Log-axis tick labels as plain numbers (0.02, 300, 1e+04), minor ones only where they fit."""
    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.2, 0.6)))
