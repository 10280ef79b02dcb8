"""A second run of the same study command: which cached artifacts it reused, and whether its tables agree.

The driver snapshots the artifact folders (exports, FP16/INT8/plugin ONNX files,
engines, plugin builds, downloaded images) before and after a run: a file whose
size and modification time did not change was reused, not rebuilt. When the run
folder already held a run of the same parameters on the same GPU, the driver
keeps it as `<run>.previous` and compares the two:

- timed tables (benchmark throughput, model swap, kernel bandwidth): row by row,
  a row agrees when the difference is within the larger of the two rows' spreads
  (`bench.compare_throughput`, the rule the benchmark figures use);
- every other table (accuracy, graph, precision, INT8): identical, or else
  whether its pass/fail columns still agree (tables measured on freshly drawn
  random inputs differ in their error values by design), leaving out columns
  that are durations.
"""
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from mvlib import bench, paths

# timed table -> (row key columns, measured value column)
TIMED = {
    "06_benchmark.csv": (("label", "batch"), "throughput_ips"),
    "05_model_swap.csv": (("model", "mode", "dtype", "batch"), "throughput_ips"),
    "05_kernel_bandwidth.csv": (("impl", "dtype", "n"), "gbps"),
}
# Derived from the timed tables, or measured machine ceilings: their sources are compared instead.
DERIVED = {"06_speedup.csv", "06_ceilings.csv", "06_anchor.csv"}
CACHE_TABLE, TIMED_TABLE, TABLES_TABLE = "rerun_cache.csv", "rerun_timing.csv", "rerun_tables.csv"
OWN_TABLES = {CACHE_TABLE, TIMED_TABLE, TABLES_TABLE}
VERDICTS = ("passed", "passes", "allclose", "within_tol", "top1_agree", "excluded", "passes_after", "ok")
TIMED_COLUMNS = ["table", "row", "measure", "first", "second", "diff_pct", "spread_pct", "agrees"]


def cache_roots() -> list[Path]:
    """Folders whose files a run may reuse from an earlier run."""
    return [paths.MODELS, paths.ENGINES, paths.PLUGIN_BUILD, paths.CACHE]


def snapshot(roots: Iterable[Path] | None = None) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under the artifact folders, by path relative to the build root."""
    found = {}
    for root in cache_roots() if roots is None else roots:
        for f in sorted(Path(root).rglob("*")) if Path(root).exists() else []:
            if f.is_file() and not f.name.startswith("."):
                st = f.stat()
                found[str(f.relative_to(paths.BUILD) if f.is_relative_to(paths.BUILD) else f)] = (st.st_size,
                                                                                                 st.st_mtime_ns)
    return found


def cache_use(before: dict, after: dict) -> pd.DataFrame:
    """One row per artifact file: reused (untouched), rewritten, new or removed during the run."""
    rows = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            status = "removed"
        elif name not in before:
            status = "new"
        else:
            status = "reused" if before[name] == after[name] else "rewritten"
        rows.append({"file": name, "status": status, "bytes": after.get(name, before.get(name))[0]})
    return pd.DataFrame(rows, columns=["file", "status", "bytes"])


def _spread_pct(row: pd.Series) -> float:
    """A row's measured spread in percent: the repeats' range, or the p10-p90 range of kernel samples."""
    if "spread_pct" in row:
        return float(row["spread_pct"])
    return float(100 * (row["p90_us"] - row["p10_us"]) / row["median_us"])


def timed_agreement(name: str, first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Row-by-row comparison of one timed table from two runs (rows present in both)."""
    keys, value = TIMED[name]
    a, b = first.set_index(list(keys)), second.set_index(list(keys))
    rows = []
    for key in a.index.intersection(b.index):
        ra, rb = a.loc[key], b.loc[key]
        c = bench.compare_throughput({"throughput_ips": rb[value], "spread_pct": _spread_pct(rb)},
                          {"throughput_ips": ra[value], "spread_pct": _spread_pct(ra)})
        rows.append({"table": name, "row": " | ".join(str(k) for k in (key if isinstance(key, tuple) else (key,))),
                     "measure": value, "first": float(ra[value]), "second": float(rb[value]),
                     "diff_pct": c["diff_pct"], "spread_pct": c["threshold_pct"],
                     "agrees": c["verdict"] == "no difference"})
    return pd.DataFrame(rows, columns=TIMED_COLUMNS)


def _durations(columns: Iterable[str]) -> list[str]:
    """Columns that hold how long something took (they differ between runs by nature)."""
    return [c for c in columns if c.endswith("_s") or c in ("seconds",)]


def _verdicts(frame: pd.DataFrame) -> list[str]:
    """Pass/fail columns: booleans, or the names the tables use for verdicts."""
    return [c for c in frame.columns if frame[c].dtype == bool or c in VERDICTS]


def table_identity(name: str, first: pd.DataFrame, second: pd.DataFrame) -> dict:
    """Whether an untimed table is the same in both runs; if not, which columns changed and whether any verdict did.

    Tables measured on freshly drawn random inputs differ in their error values by
    design; 'same verdicts' says that every pass/fail column still agrees.
    """
    drop = _durations(first.columns)
    a, b = first.drop(columns=drop), second.drop(columns=_durations(second.columns))
    row = {"table": name, "ignored": ", ".join(drop)}
    if set(a.columns) != set(b.columns) or len(a) != len(b):
        return row | {"status": "verdicts differ", "columns": "shape or columns changed", "max_rel_diff": np.nan}
    b = b[list(a.columns)]  # the same columns in another order are the same table
    changed, worst = [c for c in a.columns if not a[c].equals(b[c])], 0.0
    for col in changed:
        if pd.api.types.is_numeric_dtype(a[col]) and pd.api.types.is_numeric_dtype(b[col]):
            x, y = a[col].to_numpy(np.float64), b[col].to_numpy(np.float64)
            worst = max(worst, float(np.nanmax(np.abs(x - y) / np.maximum(np.abs(x), 1e-30), initial=0.0)))
    status = ("identical" if not changed else
              "verdicts differ" if set(changed) & set(_verdicts(a)) else "same verdicts")
    return row | {"status": status, "columns": ", ".join(changed), "max_rel_diff": worst}


def compare_runs(first: Path, second: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Timed agreement rows and the untimed tables' identity, for every table both runs wrote."""
    names = sorted({f.name for f in (first / "results").glob("*.csv")}
                   & {f.name for f in (second / "results").glob("*.csv")}
                   - OWN_TABLES - DERIVED)
    timed, identity = [], []
    for name in names:
        a, b = pd.read_csv(first / "results" / name), pd.read_csv(second / "results" / name)
        if name in TIMED:
            timed.append(timed_agreement(name, a, b))
        else:
            identity.append(table_identity(name, a, b))
    timed_df = pd.concat(timed, ignore_index=True) if timed else pd.DataFrame(columns=TIMED_COLUMNS)
    return timed_df, pd.DataFrame(identity, columns=["table", "status", "columns", "max_rel_diff", "ignored"])


def comparable(first: dict, second: dict) -> str:
    """Why two manifests' runs cannot be compared ('' when they can): other parameters or another GPU."""
    if (first.get("run") or {}).get("params") != (second.get("run") or {}).get("params"):
        return "the earlier run used other parameters"
    gpu = lambda m: (m.get("gpu") or {}).get("gpu")  # noqa: E731
    if gpu(first) != gpu(second):
        return f"the earlier run ran on {gpu(first)}, this one on {gpu(second)}"
    return ""


def summary(cache: pd.DataFrame, timed: pd.DataFrame | None = None, tables: pd.DataFrame | None = None) -> dict:
    """Counts for the manifest and the console: files reused, timed rows in agreement, tables identical."""
    out = {"files_" + k: int(v) for k, v in cache.status.value_counts().items()}
    out["bytes_reused"] = int(cache.bytes[cache.status == "reused"].sum())
    if timed is not None:
        out |= {"timed_rows": int(len(timed)), "timed_rows_agree": int(timed.agrees.sum()),
                "max_abs_diff_pct": float(timed.diff_pct.abs().max()) if len(timed) else 0.0}
    if tables is not None:
        out |= {"tables": int(len(tables)), "tables_identical": int((tables.status == "identical").sum()),
                "tables_verdicts_differ": [str(t) for t in tables.table[tables.status == "verdicts differ"]]}
    return out
