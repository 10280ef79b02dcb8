"""The decision figure (06_decision.png), drawn from the decision table (mvlib.decision): top-1 agreement with the
FP32 reference against throughput, energy per image as marker size, the Pareto front; and energy per image against
throughput. A row a panel cannot place is listed under it with why.

Serves: notebook 06 (06_decision.png).
"""
import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from mvlib import figures, precisions
from mvlib.decision import FRONT, number
from mvlib.energy import NOT_MEASURED

COLOURS = {"cpu": "tab:blue", "cuda": "tab:orange"}
KEY_ROWS = 8  # lines per column of the key under the panels


def _subject(manifest: dict) -> str:
    """'mobilevit_s, 256x256: ' from notebook 06's recorded parameters, where the manifest has them."""
    params = (manifest.get("params") or {}).get("06_benchmark") or {}
    parts = [str(params["variant"])] if params.get("variant") else []
    parts += [f"{params['img_size']}x{params['img_size']}"] if params.get("img_size") else []
    return f"{', '.join(parts)}: " if parts else ""


def _front_line(ax, xs: list[float], ys: list[float]) -> None:
    """The Pareto front as the staircase that bounds what it dominates (below and left of it), its points ringed."""
    if not xs:
        return
    order = np.argsort(xs)
    x, y = np.asarray(xs, float)[order], np.asarray(ys, float)[order]  # faster along the front: less accurate
    verts = [(ax.get_xlim()[0], y[0])]
    for i in range(len(x)):
        verts.append((x[i], y[i]))
        if i + 1 < len(x):
            verts.append((x[i], y[i + 1]))
    verts.append((x[-1], ax.get_ylim()[0]))
    ax.plot(*zip(*verts, strict=True), color="0.3", lw=1, ls="--", zorder=1, label="Pareto front")
    ax.scatter(x, y, s=170, facecolors="none", edgecolors="k", lw=1.2, zorder=5)


def _points(ax, d: pd.DataFrame, y: str, scale: float | None) -> None:
    """One marker per row (colour: device, shape: precision, area: J/image where `scale`); _numbers numbers them."""
    for r in d.itertuples():
        j = number(r.j_per_image)
        size = 45 if scale is None else (30 + 400 * j / scale if j is not None else 45)
        hollow = scale is not None and j is None
        colour = COLOURS.get(r.device, "0.5")
        ax.scatter(r.best_throughput_ips, getattr(r, y), s=size, marker=precisions.get(r.precision).marker,
                   facecolors="none" if hollow else colour, edgecolors=colour, alpha=0.85, zorder=3)


# Where a marker's number may go, in points from the marker: right-up first, then the other corners, then farther.
OFFSETS = [(5, 4), (5, -12), (-12, 4), (-12, -12), (5, 14), (-12, 14), (5, -22), (-12, -22), (14, -4), (-22, -4)]


def _numbers(ax, d: pd.DataFrame, y: str) -> None:
    """Each row's key beside its marker, at the first of OFFSETS where it overlaps no number placed before (call it
    once the figure's layout is final: the boxes are compared on the drawn canvas)."""
    renderer = ax.figure.canvas.get_renderer()
    boxes = []
    for r in d.itertuples():
        for dx, dy in OFFSETS:
            text = ax.annotate(str(r.key), (r.best_throughput_ips, getattr(r, y)), xytext=(dx, dy),
                               textcoords="offset points", fontsize=8, fontweight="bold", zorder=4)
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in boxes) or (dx, dy) == OFFSETS[-1]:
                boxes.append(box)
                break
            text.remove()


def _reasons(d: pd.DataFrame, column: str) -> list[str]:
    """The distinct reasons a column is empty, with the rows (by key) they apply to."""
    why: dict[str, list[str]] = {}
    for r in d.itertuples():
        value = getattr(r, column)
        if number(value) is None:
            why.setdefault(str(value).removeprefix(NOT_MEASURED), []).append(str(r.key))
    return [f"{', '.join(keys)}: {reason}" for reason, keys in why.items()]


def _short(line: str, width: int) -> str:
    """A line cut to `width` characters."""
    return line if len(line) <= width else line[:width - 3] + "..."


LINE_IN = 0.13  # height of one 7-point text line, inches
PANELS_IN = 5.2  # height of the two panels with their titles, inches
AXIS_IN = 0.9  # room under the panels for the x-axis labels, inches
FOOTER_IN = 0.35  # room for the run's provenance footer at the bottom, inches


def _key_lines(d: pd.DataFrame, notes: list[str]) -> tuple[list[list[str]], str]:
    """The key's columns (each number's row) and the wrapped notes (what the panels leave out and why)."""
    entries = [_short(f"{r.key}  {r.label} ({r.pareto})", 80) for r in d.itertuples()]
    columns = [entries[i:i + KEY_ROWS] for i in range(0, len(entries), KEY_ROWS)]
    text = "\n".join(textwrap.fill(n, 150, subsequent_indent="    ") for n in notes[:6])
    return columns, text


def _key(fig: Figure, columns: list[list[str]], notes: str) -> None:
    """Under the panels, above the footer: each number's row, then the notes, placed in inches so they never
    overlap the axis labels above or the footer below."""
    height = fig.get_figheight()
    top = (FOOTER_IN + _key_height(columns, notes)) / height
    for c, lines in enumerate(columns):
        fig.text(0.06 + c * 0.46, top, "\n".join(lines), fontsize=7, va="top", family="monospace")
    if notes:
        fig.text(0.06, top - LINE_IN * (_rows(columns) + 1) / height, notes, fontsize=6.5, va="top", color="0.3")


def _key_height(columns: list[list[str]], notes: str) -> float:
    """Inches the key and its notes take (one blank line between, one spare)."""
    return LINE_IN * (_rows(columns) + notes.count("\n") + 2)


def _rows(columns: list[list[str]]) -> int:
    """Lines of the key's longest column."""
    return max((len(c) for c in columns), default=0)


def _idle(manifest: dict) -> tuple[str, list[tuple[str, str]]]:
    """('GPU idle 71 W; CPU idle not measured', [(device name, why not measured)]) from the manifest's energy
    entry."""
    parts, why = [], []
    for dev, v in sorted(((manifest or {}).get("energy") or {}).items(), reverse=True):  # cuda before cpu
        name, w = "GPU" if dev == "cuda" else "CPU", number(v.get("idle_w"))
        parts.append(f"{name} idle " + (f"{w:.0f} W" if w is not None else "not measured"))
        if w is None:
            why.append((name, str(v.get("idle_w")).removeprefix(NOT_MEASURED)))
    return "; ".join(parts), why


def _with_idle(notes: list[str], idle_why: list[tuple[str, str]]) -> list[str]:
    """The notes, each idle draw not measured folded into the note that gives the same reason (the CPU rows' energy
    and the CPU's idle draw both lack RAPL), else a line of its own."""
    notes = list(notes)
    for name, why in idle_why:
        same = [k for k, line in enumerate(notes) if line.endswith(f": {why}")]
        if same:
            notes[same[0]] = f"{notes[same[0]].removesuffix(f': {why}')}, nor the {name} idle draw: {why}"
        else:
            notes.append(f"{name} idle draw not measured: {why}")
    return notes


def tradeoffs(decision: pd.DataFrame, manifest: dict | None = None) -> Figure:
    """Top-1 agreement against best throughput (marker area: J/image; the Pareto front dashed, its points ringed)
    and J/image against throughput, from the decision table (and the idle draw the manifest records)."""
    d = decision.reset_index(drop=True).copy()
    d["key"] = range(1, len(d) + 1)
    d["top1_pct"] = [100 * y if y is not None else None for y in map(number, d["top1_agreement"])]
    energies = [j for j in map(number, d["j_per_image"]) if j is not None]
    scale = max(energies) if energies else None
    fig, (ax, ax2) = figures.new(1, 2, size=(13, 8))
    fig.suptitle(f"{_subject(manifest or {})}which backend and precision to ship: accuracy, throughput, energy "
                 "per image", fontsize=10)
    placed = d[d["top1_pct"].notna()]
    ax.set_xscale("log")
    if len(placed):
        _points(ax, placed, "top1_pct", scale)
        lo = float(placed["top1_pct"].min())
        pad = 0.15 * max(100 - lo, 1)
        ax.set_ylim(max(0.0, lo - pad), 100 + pad)
        xs = placed["best_throughput_ips"].astype(float)
        ax.set_xlim(xs.min() / 2, xs.max() * 2)
        front = placed[placed["pareto"] == FRONT]
        _front_line(ax, list(front["best_throughput_ips"]), list(front["top1_pct"]))
        if len(front):
            ax.legend(fontsize=7, loc="lower right")
    figures.plain_log(ax.xaxis)
    ax.set_xlabel("best throughput (images/s, at the row's best batch)")
    ax.set_ylabel("top-1 agreement with the FP32 reference (%)")
    ax.set_title("accuracy against throughput" + ("\nmarker area: J/image (hollow: not measured)" if scale else ""),
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    idle, idle_why = _idle(manifest or {})
    ax2.set_title("energy per image against throughput" + (f"\n{idle}" if idle else ""), fontsize=9)
    measured = d[[number(j) is not None for j in d["j_per_image"]]].copy()
    if len(measured):
        measured["j"] = measured["j_per_image"].map(number)
        _points(ax2, measured, "j", None)
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel("best throughput (images/s)")
        ax2.set_ylabel("J per image (board or package, idle included)")
        figures.plain_log(ax2.xaxis)
        # joules per image span 0.01-1: plain decimals read better than LogFormatter's 9e-02
        for fmt in (ax2.yaxis.set_major_formatter, ax2.yaxis.set_minor_formatter):
            fmt(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax2.grid(True, which="both", alpha=0.3)
    else:
        lines = [textwrap.fill(r, 70) for r in _reasons(d, "j_per_image")]
        ax2.text(0.5, 0.5, "no energy measured in this run:\n" + "\n".join(lines),
                 ha="center", va="center", transform=ax2.transAxes, fontsize=7, color="0.3")
        ax2.set_axis_off()
    notes = [f"not on the left (no accuracy): {line}" for line in _reasons(d, "top1_agreement")]
    if len(measured):
        notes += [f"not on the right (no energy): {line}" for line in _reasons(d, "j_per_image")]
    columns, text = _key_lines(d, _with_idle(notes, idle_why))
    below = FOOTER_IN + _key_height(columns, text) + LINE_IN + AXIS_IN  # inches under the panels
    fig.set_figheight(PANELS_IN + below)
    fig.subplots_adjust(bottom=below / fig.get_figheight(), top=1 - 0.75 / fig.get_figheight(), wspace=0.22,
                        left=0.06, right=0.98)
    _key(fig, columns, text)
    fig.canvas.draw()  # the final layout, where the numbers are placed apart
    _numbers(ax, placed, "top1_pct")
    if len(measured):
        _numbers(ax2, measured, "j")
    return fig
