"""Benchmark figures, each drawn from saved results tables only (Agg canvas, no pyplot state).

Serves: notebook 06 (06_throughput, 06_latency_b1, 06_speedup and 06_roofline).
"""
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from mvlib import bench, figures
from mvlib.ceilings import roofline_points  # plain name: roofline's `ceilings` argument is the measured table

PCT = (("median_ms", "median"), ("p90_ms", "p90"), ("p95_ms", "p95"), ("p99_ms", "p99"))
DEVICE_NAMES = {"cpu": "CPU", "cuda": "GPU"}


def _margins(fig: Figure, bottom_in: float = 0.9, **kw) -> None:
    """Leave `bottom_in` inches under the axes for tick labels, x label and the provenance footer."""
    fig.subplots_adjust(bottom=min(0.45, bottom_in / fig.get_figheight()), **kw)


def _labels(df: pd.DataFrame) -> list[str]:
    """Row labels in table order, each once."""
    return list(dict.fromkeys(df.label))


def measured(df: pd.DataFrame, dashed_cpu: bool = False) -> str:
    """What the rows of a results table measured, for titles: devices, and where the inputs sat."""
    devices = set(df.device) if "device" in df else set()
    if devices == {"cpu"}:
        return "CPU only, inputs in host memory"
    if devices == {"cuda"}:
        return "GPU only, transfers excluded"
    if devices:
        return "GPU rows: transfers excluded; " + ("dashed: " if dashed_cpu else "") + "CPU rows: host memory"
    return "no rows"


def _subject(df: pd.DataFrame) -> str:
    """'mobilevit_s, 256x256: ' when the table says which model it measured, else ''."""
    if "variant" not in df or df.empty:
        return ""
    variants = sorted({str(v) for v in df.variant.dropna() if str(v)})
    sizes = sorted({int(v) for v in df.img_size.dropna()}) if "img_size" in df else []
    parts = [", ".join(variants)] + [f"{s}x{s}" for s in sizes]
    text = ", ".join(p for p in parts if p)
    return f"{text}: " if text else ""


def ratio_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis of ratios from `lo` to `hi`: 1-2-5 steps, finer on a short range, always >= 3."""
    lo, hi = min(lo, hi), max(lo, hi)
    decades = np.log10(hi / lo) if lo > 0 else np.inf
    for subs in ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
                 (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)):
        if len(subs) == 1 and decades < 3:
            continue
        ticks = [m * 10.0 ** e for e in range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
                 for m in subs]
        inside = [t for t in ticks if lo <= t * (1 + 1e-9) and t <= hi * (1 + 1e-9)]
        if len(inside) >= 3 or subs[-1] == 9.0:
            return [float(f"{t:.3g}") for t in inside]
    return []


def _ratio_label(v: float, _=None) -> str:
    """1x, 0.5x, 2.41x."""
    return f"{v:.3g}x"


def throughput(df: pd.DataFrame) -> Figure:
    """Throughput against batch per backend (log-log); bars span the repeats' min..max."""
    labels = _labels(df)
    fig, ax = figures.new(size=(11, 5))
    for label, colour in zip(labels, _colours(len(labels)), strict=True):
        d = df[df.label == label].sort_values("batch")
        err = np.vstack([d.throughput_ips - d.throughput_min_ips, d.throughput_max_ips - d.throughput_ips])
        ax.errorbar(d.batch, d.throughput_ips, yerr=err, marker="o", ms=4, capsize=3, label=label, color=colour,
                    linestyle="--" if d.device.iloc[0] == "cpu" else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    batches = sorted(df.batch.unique())
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_formatter(NullFormatter())
    figures.plain_log(ax.yaxis)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (images/s)")
    ax.set_title(f"{_subject(df)}throughput against batch\n{measured(df, dashed_cpu=True)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    # beside the axes, not over them: a dozen rows leave no corner of the plot free
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _margins(fig, right=0.66)
    return fig


def _colours(n: int) -> list:
    """n colours, no two alike: the default cycle's ten, tab20's twenty beyond that, then repeating."""
    from matplotlib import colormaps
    if n <= 10:
        return [f"C{k}" for k in range(n)]
    return [colormaps["tab20"](k % 20) for k in range(n)]


def latency_b1(df: pd.DataFrame) -> Figure:
    """Latency percentiles (median, p90, p95, p99) at batch 1 per backend: bars from zero on a linear axis, each
    with its value; one panel per device, so GPU milliseconds are not dwarfed by CPU ones."""
    d = df[df.batch == 1]
    devices = [dev for dev in DEVICE_NAMES if dev in set(d.device)]
    counts = [len(_labels(d[d.device == dev])) for dev in devices]
    fig, _ = figures.new(0, size=(8, 1.6 + 0.55 * max(sum(counts), 1) + 0.5 * len(devices)))
    fig.suptitle(f"{_subject(d)}latency percentiles at batch 1\n{measured(d)}", fontsize=10)
    if not devices:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no batch-1 rows in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    grid = fig.add_gridspec(len(devices), 1, height_ratios=counts, hspace=0.35)
    for k, dev in enumerate(devices):
        _latency_panel(fig.add_subplot(grid[k]), d[d.device == dev], DEVICE_NAMES[dev], legend=k == 0)
    _margins(fig, 0.8, top=1 - 0.8 / fig.get_figheight())  # the title, then the legend above the first panel
    return fig


def _ms(v: float) -> str:
    """A latency label: 3 significant digits, whole milliseconds from 100 ms (1980, not 1.98e+03)."""
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _latency_panel(ax, d: pd.DataFrame, device: str, legend: bool) -> None:
    """One device's batch-1 percentiles as horizontal bars from zero, each labelled with its value in ms."""
    labels = _labels(d)
    y = np.arange(len(labels))
    h = 0.8 / len(PCT)
    top = float(np.nanmax(d[[c for c, _ in PCT]].to_numpy()))
    for i, (col, name) in enumerate(PCT):
        vals = [float(d[d.label == lab][col].iloc[0]) for lab in labels]
        bars = ax.barh(y + (i - 1.5) * h, vals, height=h, label=name)
        ax.bar_label(bars, labels=[_ms(v) for v in vals], padding=2, fontsize=6)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("linear")
    ax.set_xlim(0, top * 1.15)  # from zero, room for the value labels
    ax.set_xlabel(f"{device}: latency per launch at batch 1 (ms)", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    if legend:  # one line above the panel: inside, it would hide the longest bars and their values
        ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=len(PCT), frameon=False,
                  borderaxespad=0.2)


def speedup(sp: pd.DataFrame) -> Figure:
    """The seed's speed-up table as bars: ratio to PyTorch CPU and to PyTorch GPU eager FP32, at batch 1 and the
    largest batch each reference was measured at; hatched bars are within the spread (no difference).

    One panel per reference the run measured (a CPU-only run has no GPU reference, so no GPU panel); the ratio
    axis is labelled across the range of the bars, not only at powers of ten."""
    titles = {"pytorch_cpu": "PyTorch CPU FP32", "pytorch_gpu_eager": "PyTorch GPU eager FP32"}
    keys = [k for k in bench.REFERENCES if f"vs_{k}" in sp and sp[f"vs_{k}"].notna().any()]
    fig, _ = figures.new(0, size=(6.5 * max(len(keys), 1) + 0.5 * (len(keys) < 2), 5.5))
    fig.suptitle(f"{_subject(sp)}speed-up at the same batch ({measured(sp)})", fontsize=10)
    if not keys:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "neither reference (" + " / ".join(titles[k] for k in bench.REFERENCES)
                + ") was measured in this run", ha="center", va="center", transform=ax.transAxes, color="0.3")
        ax.set_axis_off()
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        ax.set_title(f"over {titles[key]}", fontsize=10)
        col, vcol = f"vs_{key}", f"verdict_vs_{key}"
        d = sp[sp[col].notna()]
        batches = sorted({1, int(d.batch.max())} & set(d.batch.astype(int)))
        labels = _labels(d)
        x = np.arange(len(labels))
        w = 0.8 / len(batches)
        # Two bars a label are narrower than their values written across: bars of about the same height would
        # carry colliding labels (0.753x beside 0.788x), so the values stand upright on their bars.
        upright = len(batches) > 1
        for j, b in enumerate(batches):
            db = d[d.batch == b].set_index("label")
            vals = [db[col].get(lab, np.nan) for lab in labels]
            bars = ax.bar(x + (j - (len(batches) - 1) / 2) * w, vals, width=w, label=f"batch {b}")
            for bar, lab, v in zip(bars, labels, vals, strict=True):
                if np.isnan(v):
                    continue
                same = db.loc[lab, vcol] == "no difference"
                if same:
                    bar.set_hatch("//")
                    bar.set_alpha(0.6)
                ax.annotate(f"{v:.3g}x" + (" (=)" if same else ""), (bar.get_x() + bar.get_width() / 2, v),
                            ha="center", va="bottom", fontsize=6, xytext=(0, 1), textcoords="offset points",
                            rotation=90 if upright else 0)
        ax.axhline(1, color="0.3", lw=0.8)
        ax.set_yscale("log")
        shown = d[d.batch.isin(batches)][col]
        lo, hi = min(float(shown.min()), 1.0), max(float(shown.max()), 1.0)
        ax.set_ylim(lo / 1.35, hi * (2.4 if upright else 1.35))  # room for the value labels above the bars
        ax.yaxis.set_major_locator(FixedLocator(ratio_ticks(lo / 1.35, hi * 1.35)))  # across the bars themselves
        ax.yaxis.set_major_formatter(FuncFormatter(_ratio_label))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("throughput ratio (same batch)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, title="hatched, (=): no difference", title_fontsize=7)
    _margins(fig, 1.9, wspace=0.25, top=0.88)
    return fig


def _roofs(ax, ceil: pd.DataFrame, xlim: tuple[float, float]) -> list[float]:
    """Draw each matmul ceiling, capped by the copy bandwidth where measured; the roofs' heights."""
    x = np.logspace(np.log10(xlim[0]), np.log10(xlim[1]), 200)
    bw = ceil[ceil.ceiling == "copy"].value
    heights = []
    for i, (_, c) in enumerate(ceil[ceil.unit == "TFLOP/s"].iterrows()):
        peak = c.value * 1e12
        roof = np.minimum(peak, bw.iloc[0] * 1e9 * x) if not bw.empty else np.full_like(x, peak)
        ax.plot(x, roof, color="0.35", lw=1, ls=":" if "fp32" in c.ceiling else "-")
        ax.annotate(c.ceiling, (x[-1], peak), ha="right", va="bottom", fontsize=7, xytext=(-2 - 70 * i, 1),
                    textcoords="offset points")  # side by side: fp16 and bf16 roofs nearly coincide
        heights.append(peak)
    if not ceil.empty:
        ax.text(0.98, 0.03,
                "measured ceilings:\n" + "\n".join(f"{c.ceiling} {c.value:.4g} {c.unit}" for _, c in ceil.iterrows()),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"})
    return heights


def roofline(df: pd.DataFrame, ceilings: pd.DataFrame, cost: pd.DataFrame) -> Figure:
    """Achieved FLOP/s against compulsory arithmetic intensity, under each device's measured copy and matmul roofs."""
    pts = roofline_points(df, cost)
    fig, axes = figures.new(1, 2, size=(13, 5.5))
    for ax, device in zip(axes, ("cpu", "cuda"), strict=True):
        d, ceil = pts[pts.device == device], ceilings[ceilings.device == device]
        ax.set_title(f"{DEVICE_NAMES[device]}: throughput x FLOPs per image", fontsize=10)
        missing = []
        if ceil.empty:
            missing.append(f"{DEVICE_NAMES[device]} ceilings absent (not measured in this run"
                           + (": no CUDA GPU" if device == "cuda" else "") + ")")
        if d.empty:
            missing.append(f"no {DEVICE_NAMES[device]} rows in this run")
        if d.empty and ceil.empty:
            ax.text(0.5, 0.5, "\n".join(missing), ha="center", va="center", transform=ax.transAxes, color="0.3")
            ax.set_axis_off()
            continue
        ax.set_xscale("log")
        ax.set_yscale("log")
        xs = d.intensity.tolist() or [10.0, 1000.0]
        xlim = (min(xs) / 10, max(xs) * 10)
        heights = _roofs(ax, ceil, xlim)
        for label in _labels(d):
            dl = d[d.label == label].sort_values("batch")
            ax.plot(dl.intensity, dl.flops_per_s, marker="o", ms=4, label=label)
        ys = d.flops_per_s.tolist() + heights
        ax.set_xlim(*xlim)
        ax.set_ylim(min(ys) / 5, max(ys) * 3)
        ax.set_xlabel("FLOPs per compulsory byte (weights once per launch + input + output)")
        ax.set_ylabel("achieved FLOP/s")
        ax.grid(True, which="both", alpha=0.3)
        if missing:
            ax.text(0.5, 0.5, "\n".join(missing), ha="center", va="center", transform=ax.transAxes, fontsize=8,
                    color="0.3")
        if not d.empty:
            ax.legend(fontsize=7, loc="upper left")
    _margins(fig, 0.9, wspace=0.25)
    return fig
