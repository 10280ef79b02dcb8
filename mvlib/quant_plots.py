"""Notebook 04's figures, drawn from its saved tables: accuracy per precision, policy and method; sensitivity.

Thresholds are the criterion bounds of the precisions drawn (`quant_eval.criterion`); each function returns a
pyplot-free Figure (`mvlib.figures`).

Serves: notebook 04 (04_int8_accuracy, 04_sensitivity and 04_fp8_sensitivity).
"""
import numpy as np
import pandas as pd

from mvlib import figures, precisions
from mvlib.quant_eval import criterion


def _bounds(precisions, name: str) -> list[float]:
    """The distinct values of one criterion bound over the precisions drawn (one line each)."""
    return sorted({criterion(p)[name] for p in precisions})


def plot_accuracy(table: pd.DataFrame, title: str = ""):
    """Error (1 - mean cosine) and top-1 agreement per policy, one bar per precision and method, with the thresholds."""
    table = table.copy()
    # A chosen model can appear twice (FP16 floats, then the FP32-float fallback when FP16 fails): one label each.
    chosen = table.file == table.precision.map(lambda p: precisions.quantized(p).artifact)
    table["label"] = table.policy + np.where(chosen, "\n" + table.file + "\n" + table.high_precision + " floats", "")
    table["series"] = table.precision.map(precisions.label) + " " + table.method
    labels = list(dict.fromkeys(table.label))
    series = list(dict.fromkeys(table.series))
    # Each label's group of bars is wide enough for its tick label (a file name at 7 pt) and for one value per
    # bar side by side (5 pt); the two panels are stacked, so each has the figure's width.
    group_in = max(1.1, 0.38 * len(series))
    fig, axes = figures.new(2, 1, size=(max(10, group_in * len(labels) + 1.2), 8))
    width = 0.8 / len(series)
    colors = {name: f"C{k}" for k, name in enumerate(series)}
    drawn = set()
    for i, lab in enumerate(labels):
        here = table[table.label == lab].drop_duplicates("series", keep="last").set_index("series")
        present = [name for name in series if name in here.index]  # bars of one label sit side by side, centred
        for j, name in enumerate(present):
            r = here.loc[name]
            x = i + (j - (len(present) - 1) / 2) * width
            err, agree = max(1.0 - r.cosine_mean, 1e-9), 100 * r.top1_agreement
            mark = "pass" if r.passes else "fail"
            for ax, y, text in ((axes[0], err, f"{r.cosine_mean:.4f}\n{mark}"),
                                (axes[1], agree, f"{agree:.1f}\n{mark}")):
                ax.bar(x, y, width, color=colors[name], label=None if name in drawn else name)
                ax.text(x, y, text, ha="center", va="bottom", fontsize=5)
            drawn.add(name)
    for k, bound in enumerate(_bounds(table.precision.unique(), "cosine_mean")):
        axes[0].axhline(1 - bound, color="k", ls="--", lw=1, label=None if k else "pass if below")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("1 - mean cosine vs FP32 (lower is better)")
    for k, bound in enumerate(_bounds(table.precision.unique(), "top1_agreement")):
        axes[1].axhline(100 * bound, color="k", ls="--", lw=1, label=None if k else "pass if above")
    axes[1].set_ylabel("top-1 agreement with FP32 (%)")
    axes[1].set_ylim(max(0, 100 * table.top1_agreement.min() - 5), 106)
    for ax in axes:
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_sensitivity(table: pd.DataFrame, title: str = ""):
    """Error per group quantized alone (graph order, excluded groups in red) and the exclusion path (one precision)."""
    precision = str(table.precision.iloc[0])
    by_order = table.sort_values("order")
    n = len(by_order)
    fig, axes = figures.new(1, 2, size=(13, max(4.0, 0.22 * n + 1.5)), gridspec_kw={"width_ratios": [3, 2]})
    colors = ["tab:red" if e else "tab:blue" for e in by_order.excluded]
    axes[0].barh(range(n), np.maximum(by_order.error_alone, 1e-12), color=colors)
    axes[0].set_xscale("log")
    axes[0].set_yticks(range(n), [_short(g) for g in by_order.group], fontsize=7 if n < 40 else 5)
    axes[0].invert_yaxis()  # input at the top, output at the bottom
    axes[0].set_xlabel(f"1 - mean cosine vs FP32 with only this group {precisions.label(precision)}")
    axes[0].set_title("red: excluded by the sensitivity policy", fontsize=9)
    path = table[table.excluded].sort_values("rank")
    ax = axes[1]
    if len(path):
        ax.plot(path["rank"], np.maximum(1 - path.cosine_after, 1e-12), "o-", label="1 - mean cosine")
        ax.axhline(1 - criterion(precision)["cosine_mean"], color="tab:blue", ls="--", lw=1, label="cosine threshold")
        ax.set_yscale("log")
        ax.set_xticks(list(path["rank"]))
        ax2 = ax.twinx()
        ax2.plot(path["rank"], 100 * path.top1_agreement_after, "s--", color="tab:green", label="top-1 agreement")
        ax2.axhline(100 * criterion(precision)["top1_agreement"], color="tab:green", ls=":", lw=1,
                    label="top-1 threshold")
        ax2.set_ylim(min(90.0, 100 * path.top1_agreement_after.min() - 2), 100.5)
        ax2.set_ylabel("top-1 agreement with FP32 (%)")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="lower left")
    else:
        ax.text(0.5, 0.5, "passes with nothing excluded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("worst groups excluded (by rank)")
    ax.set_ylabel("1 - mean cosine after excluding")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _short(group: str) -> str:
    """A node or group name short enough for a tick label."""
    parts = [p for p in group.split("/") if p]
    return "/".join(parts[-2:]) if len(parts) > 2 else group
