"""Benchmark figures, each drawn from saved results tables only (Agg canvas, no pyplot state)."""
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, NullFormatter

from mvlib import bench

PCT = (("median_ms", "median"), ("p90_ms", "p90"), ("p95_ms", "p95"), ("p99_ms", "p99"))
DEVICE_NAMES = {"cpu": "CPU", "cuda": "GPU"}


def _figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _plain_log(axis) -> None:
    """Log-scale tick labels as plain numbers (20, 300, 1e+04), minor ones only where they fit."""
    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.2, 0.6)))


def _margins(fig: Figure, bottom_in: float = 0.9, **kw) -> None:
    """Leave `bottom_in` inches under the axes for tick labels, x label and the provenance footer."""
    fig.subplots_adjust(bottom=min(0.45, bottom_in / fig.get_figheight()), **kw)


def _labels(df: pd.DataFrame) -> list[str]:
    """Row labels in table order, each once."""
    return list(dict.fromkeys(df.label))


def throughput(df: pd.DataFrame) -> Figure:
    """Throughput against batch per backend (log-log); bars span the repeats' min..max."""
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    for label in _labels(df):
        d = df[df.label == label].sort_values("batch")
        err = np.vstack([d.throughput_ips - d.throughput_min_ips, d.throughput_max_ips - d.throughput_ips])
        ax.errorbar(d.batch, d.throughput_ips, yerr=err, marker="o", ms=4, capsize=3, label=label,
                    linestyle="--" if d.device.iloc[0] == "cpu" else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    batches = sorted(df.batch.unique())
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_formatter(NullFormatter())
    _plain_log(ax.yaxis)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (images/s)")
    ax.set_title("Throughput against batch (GPU: transfers excluded; dashed: CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _margins(fig)
    return fig


def latency_b1(df: pd.DataFrame) -> Figure:
    """Latency percentiles (median, p90, p95, p99) at batch 1 per backend, log scale."""
    d = df[df.batch == 1]
    labels = _labels(d)
    fig = _figure(8, 2.2 + 0.5 * max(len(labels), 1))
    ax = fig.add_subplot()
    if not labels:
        ax.text(0.5, 0.5, "no batch-1 rows in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    y = np.arange(len(labels))
    h = 0.8 / len(PCT)
    for i, (col, name) in enumerate(PCT):
        vals = [d[d.label == lab][col].iloc[0] for lab in labels]
        ax.barh(y + (i - 1.5) * h, vals, height=h, label=name)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    _plain_log(ax.xaxis)
    ax.set_xlabel("latency per launch at batch 1 (ms)")
    ax.set_title("Latency percentiles at batch 1")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _margins(fig)
    return fig


def speedup(sp: pd.DataFrame) -> Figure:
    """The seed's speed-up table as bars: ratio to PyTorch CPU and to PyTorch GPU eager FP32, at batch 1 and the
    largest batch each reference was measured at; hatched bars are within the spread (no difference)."""
    fig = _figure(13, 5.5)
    titles = {"pytorch_cpu": "PyTorch CPU FP32", "pytorch_gpu_eager": "PyTorch GPU eager FP32"}
    for i, key in enumerate(bench.REFERENCES):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.set_title(f"speed-up over {titles[key]}", fontsize=10)
        col, vcol = f"vs_{key}", f"verdict_vs_{key}"
        d = sp[sp[col].notna()]
        if d.empty:
            ax.text(0.5, 0.5, f"{titles[key]} not measured in this run", ha="center", va="center",
                    transform=ax.transAxes, color="0.3")
            ax.set_axis_off()
            continue
        batches = sorted({1, int(d.batch.max())} & set(d.batch.astype(int)))
        labels = _labels(d)
        x = np.arange(len(labels))
        w = 0.8 / len(batches)
        for j, b in enumerate(batches):
            db = d[d.batch == b].set_index("label")
            vals = [db[col].get(lab, np.nan) for lab in labels]
            bars = ax.bar(x + (j - (len(batches) - 1) / 2) * w, vals, width=w, label=f"batch {b}")
            for bar, lab, v in zip(bars, labels, vals):
                if np.isnan(v):
                    continue
                same = db.loc[lab, vcol] == "no difference"
                if same:
                    bar.set_hatch("//")
                    bar.set_alpha(0.6)
                ax.annotate(f"{v:.3g}x" + (" (=)" if same else ""), (bar.get_x() + bar.get_width() / 2, v),
                            ha="center", va="bottom", fontsize=6, xytext=(0, 1), textcoords="offset points")
        ax.axhline(1, color="0.3", lw=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("throughput ratio (same batch)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, title="hatched, (=): no difference", title_fontsize=7)
    _margins(fig, 1.9, wspace=0.25)
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
        ax.text(0.98, 0.03, "measured ceilings:\n" + "\n".join(f"{c.ceiling} {c.value:.4g} {c.unit}" for _, c in ceil.iterrows()),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"})
    return heights


def roofline(df: pd.DataFrame, ceilings: pd.DataFrame, cost: pd.DataFrame) -> Figure:
    """Achieved FLOP/s against compulsory arithmetic intensity, under each device's measured copy and matmul roofs."""
    pts = bench.roofline_points(df, cost)
    fig = _figure(13, 5.5)
    for i, device in enumerate(("cpu", "cuda")):
        ax = fig.add_subplot(1, 2, i + 1)
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
