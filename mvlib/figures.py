"""The one figure convention: a pyplot-free matplotlib Figure on the Agg canvas, and its provenance footer.

Serves: notebooks 02-06 (every figure function of mvlib draws on `new`; Run.save_figure writes `footer`).
Figures made here never enter pyplot's global list, so a notebook shows the saved file once and nothing leaks
between figures or stays open after a batch run.
"""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.path import Path
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
    note = fig.text(0.01, 0.005, text, fontsize=7, color="0.35", ha="left", va="bottom")
    fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, FOOTER_BOTTOM))
    # FOOTER_BOTTOM is a floor: a short figure with tick labels and an axis label below its axes needs more, else
    # the footer sits on them. Raise the axes by what the drawn layout lacks.
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lowest = min((ax.get_tightbbox(renderer).y0 for ax in fig.axes), default=None)
    short = note.get_window_extent(renderer).y1 + 4 - lowest if lowest is not None else 0
    if short > 0:
        fig.subplots_adjust(bottom=fig.subplotpars.bottom + short / fig.bbox.height)


def plain_log(axis) -> None:
    """Log-axis tick labels as plain numbers (0.02, 300, 1e+04), minor ones only where they fit."""
    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.2, 0.6)))


def _drawn_texts(fig: Figure) -> list:
    """Every non-empty visible text a saved figure shows: figure texts, titles, axis labels, the tick labels drawn
    (major and minor), legend entries and annotations."""
    out = list(fig.texts) + ([fig._suptitle] if fig._suptitle else [])
    for ax in fig.axes:
        out += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):
            if not axis.get_visible():  # a twin's shared axis: drawn once, by its owner
                continue
            for tick in axis._update_ticks():  # the ticks inside the view, the ones drawn
                out += [t for t in (tick.label1, tick.label2) if t.get_visible()]
        legend = ax.get_legend()
        out += list(legend.get_texts()) + [legend.get_title()] if legend else []
    legends = getattr(fig, "legends", [])
    out += [t for leg in legends for t in leg.get_texts()]
    unique = list({id(t): t for t in out}.values())  # the suptitle is one of fig.texts too
    return [t for t in unique if t.get_visible() and t.get_text().strip()]


def _outline(text, renderer) -> Path:
    """The box a text fills on the canvas, turned as the text is (a rotated tick label is a slanted rectangle, not
    the upright box around it)."""
    box = text.get_window_extent(renderer)
    angle = text.get_rotation() % 180
    if angle % 90 == 0:
        return Path([(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1)], closed=False)
    turned = text.get_rotation()
    text.set_rotation(0)
    w, h = text.get_window_extent(renderer).size
    text.set_rotation(turned)
    a = np.radians(angle if angle < 90 else 180 - angle)
    sw, sh = w * np.sin(a), h * np.sin(a)
    corners = [(box.x0 + sh, box.y0), (box.x1, box.y0 + sw), (box.x1 - sh, box.y1), (box.x0, box.y1 - sw)]
    if angle > 90:  # the mirror image
        corners = [(box.x0 + box.x1 - x, y) for x, y in corners]
    return Path(corners, closed=False)


def _shrunk(path: Path, px: float) -> Path:
    """`path`'s corners moved `px` pixels towards its centre (two boxes that only touch then do not meet)."""
    v = path.vertices
    centre = v.mean(axis=0)
    away = v - centre
    length = np.maximum(np.hypot(*away.T), 1e-9)[:, None]
    return Path(centre + away * np.maximum(length - px, 0) / length)


def label_overlaps(fig: Figure, slack_px: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes overlap on the drawn figure (as matplotlib's renderer lays them out): each pair's
    two strings. Boxes that only touch (within `slack_px` pixels) do not count."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    shapes = [(t.get_text(), _shrunk(_outline(t, renderer), slack_px)) for t in _drawn_texts(fig)]
    shapes = [(s, p) for s, p in shapes if np.ptp(p.vertices[:, 0]) > 0 and np.ptp(p.vertices[:, 1]) > 0]
    pairs = []
    for i, (s1, p1) in enumerate(shapes):
        for s2, p2 in shapes[i + 1:]:
            if p1.intersects_path(p2, filled=True):
                pairs.append((s1, s2))
    return pairs
