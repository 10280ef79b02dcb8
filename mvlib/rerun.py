"""A rerun of the study: which cached artifacts it left, rebuilt or added, and whether its tables agree with a run
before it.

The driver snapshots the artifact folders (exports, FP16/INT8/plugin ONNX files, engines, plugin builds,
downloaded images) before and after a run. A file whose size and modification time did not change was left as it
was (`unchanged`: not rebuilt, though this run may not have needed it); one written again with the same bytes is
`same bytes` (reproducible, but work done again); `changed` means its bytes differ, and whatever is keyed on it
(an engine on its ONNX file or plugin library) is rebuilt.

A complete run is compared with the last complete run of its folder when both ran the same notebooks with the
same parameters on the same GPU (otherwise "not compared" and why), or with a folder the user names
(`--compare-with`, e.g. the committed `data/results`, whose tables lie beside its manifest):

- timed tables (benchmark throughput, model swap, kernel bandwidth): row by row,
  a row agrees when the difference is within the larger of the two rows' spreads
  (`bench_windows.compare_throughput`, the rule the benchmark figures use);
- every other table (accuracy, graph, precision, INT8): identical, or else
  whether its pass/fail columns still agree (tables measured on freshly drawn
  random inputs differ in their error values by design), leaving out columns
  that are durations.

Serves: the driver (a second run's comparison, `--compare-with`); no notebook.
"""
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from mvlib import bench_windows, io, paths, stages

# timed table -> (row key columns, measured value column)
TIMED = {
    "06_benchmark.csv": (("label", "batch"), "throughput_ips"),
    "05_model_swap.csv": (("model", "mode", "dtype", "batch"), "throughput_ips"),
    "05_kernel_bandwidth.csv": (("impl", "dtype", "n"), "gbps"),
}
# Derived from the timed tables, or measured machine ceilings: their sources are compared instead. The decision
# table holds throughput, energy and a Pareto front that move with the timed rows.
DERIVED = {"06_speedup.csv", "06_ceilings.csv", "06_anchor.csv", "06_decision.csv"}
CACHE_TABLE, TIMED_TABLE, TABLES_TABLE = "rerun_cache.csv", "rerun_timing.csv", "rerun_tables.csv"
OWN_TABLES = {CACHE_TABLE, TIMED_TABLE, TABLES_TABLE}
VERDICTS = ("passed", "passes", "allclose", "within_tol", "top1_agree", "excluded", "passes_after", "ok")
TIMED_COLUMNS = ["table", "row", "measure", "first", "second", "diff_pct", "spread_pct", "agrees"]


def cache_roots() -> list[Path]:
    """Folders whose files a run may reuse from an earlier run."""
    return [paths.MODELS, paths.ENGINES, paths.PLUGIN_BUILD, paths.CACHE]


# What happened to an artifact file during a run (rerun_cache.csv's `status`).
UNCHANGED, SAME_BYTES, CHANGED, NEW, REMOVED = "unchanged", "same bytes", "changed", "new", "removed"


def snapshot(roots: Iterable[Path] | None = None) -> dict[str, tuple[int, int, str]]:
    """Size, modification time and content hash of every file under the artifact folders, by path relative to the
    build root."""
    found = {}
    for root in cache_roots() if roots is None else roots:
        for f in sorted(Path(root).rglob("*")) if Path(root).exists() else []:
            if f.is_file() and not f.name.startswith("."):
                st = f.stat()
                name = str(f.relative_to(paths.BUILD) if f.is_relative_to(paths.BUILD) else f)
                found[name] = (st.st_size, st.st_mtime_ns, io.sha256(f))
    return found


def cache_use(before: dict, after: dict) -> pd.DataFrame:
    """One row per artifact file: unchanged, rewritten with the same bytes, changed, new or removed during the run."""
    rows = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            status = REMOVED
        elif name not in before:
            status = NEW
        elif before[name][:2] == after[name][:2]:
            status = UNCHANGED
        else:
            status = SAME_BYTES if before[name][2:] == after[name][2:] else CHANGED
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
        if isinstance(ra, pd.DataFrame) or isinstance(rb, pd.DataFrame):
            continue  # a key measured twice in one run: no row to pair it with
        if any(pd.isna(x) for x in (ra[value], rb[value], _spread_pct(ra), _spread_pct(rb))):
            continue  # a row that was not measured (skipped backend) has nothing to compare
        c = bench_windows.compare_throughput({"throughput_ips": rb[value], "spread_pct": _spread_pct(rb)},
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


def tables_dir(folder: Path) -> Path:
    """Where a run's tables are: `results/` of a run folder, or the folder itself (a published `data/results`)."""
    folder = Path(folder)
    return folder / "results" if (folder / "results").is_dir() else folder


def compare_runs(first: Path, second: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Timed agreement rows and the untimed tables' identity, for every table both runs wrote."""
    a_dir, b_dir = tables_dir(first), tables_dir(second)
    names = sorted({f.name for f in a_dir.glob("*.csv")} & {f.name for f in b_dir.glob("*.csv")}
                   - OWN_TABLES - DERIVED)
    timed, identity = [], []
    for name in names:
        a, b = pd.read_csv(a_dir / name), pd.read_csv(b_dir / name)
        if name in TIMED:
            timed.append(timed_agreement(name, a, b))
        else:
            identity.append(table_identity(name, a, b))
    timed_df = pd.concat(timed, ignore_index=True) if timed else pd.DataFrame(columns=TIMED_COLUMNS)
    return timed_df, pd.DataFrame(identity, columns=["table", "status", "columns", "max_rel_diff", "ignored"])


def _selection(manifest: dict) -> str:
    """The notebooks a run ran, as "01, 02" (every one when the manifest does not say)."""
    ran = (manifest.get("run") or {}).get("notebooks")
    return ", ".join(stages.short(Path(nb).stem) for nb in ran) if ran else "every notebook"


def differences(first: dict, second: dict) -> list[str]:
    """What differs between two runs that makes them unlike: notebooks, profile, parameters, GPU (none: [])."""
    out = []
    if _selection(first) != _selection(second):
        out.append(f"the earlier run ran notebooks {_selection(first)}, this one {_selection(second)}")
    r1, r2 = first.get("run") or {}, second.get("run") or {}
    if r1.get("profile") != r2.get("profile"):
        out.append(f"the earlier run used profile {r1.get('profile')}, this one {r2.get('profile')}")
    p1, p2 = r1.get("params") or {}, r2.get("params") or {}
    changed = [f"{k} {p1.get(k, '(none)')} -> {p2.get(k, '(none)')}" for k in sorted(set(p1) | set(p2))
               if p1.get(k) != p2.get(k)]
    if changed:
        out.append("the earlier run used other parameters: " + ", ".join(changed[:6])
                   + (f" and {len(changed) - 6} more" if len(changed) > 6 else ""))
    gpu = lambda m: (m.get("gpu") or {}).get("gpu")  # noqa: E731
    if gpu(first) != gpu(second):
        out.append(f"the earlier run ran on {gpu(first) or 'no GPU'}, this one on {gpu(second) or 'no GPU'}")
    return out


def comparable(first: dict, second: dict) -> str:
    """Why two manifests' runs are not like with like ('' when they are): other notebooks, profile, parameters
    (the weights as decided) or GPU."""
    return "; ".join(differences(first, second))


def summary(cache: pd.DataFrame, timed: pd.DataFrame | None = None, tables: pd.DataFrame | None = None) -> dict:
    """Counts for the manifest and the console: artifact files by status, timed rows in agreement, tables identical."""
    out = {"files_" + str(k).replace(" ", "_"): int(v) for k, v in cache.status.value_counts().items()}
    out["bytes_unchanged"] = int(cache.bytes[cache.status == UNCHANGED].sum())
    if timed is not None:
        out |= {"timed_rows": int(len(timed)), "timed_rows_agree": int(timed.agrees.sum()),
                "max_abs_diff_pct": float(timed.diff_pct.abs().max()) if len(timed) else 0.0}
    if tables is not None:
        out |= {"tables": int(len(tables)), "tables_identical": int((tables.status == "identical").sum()),
                "tables_verdicts_differ": [str(t) for t in tables.table[tables.status == "verdicts differ"]]}
    return out


def artifacts_line(info: dict) -> str:
    """'artifacts: 3 new, 1 changed, ...' for the console, in a fixed order."""
    labels = ((NEW, "new"), (CHANGED, "changed (rebuilt)"), (SAME_BYTES, "rewritten with the same bytes"),
              (REMOVED, "removed"), (UNCHANGED, "unchanged (left as they were)"))
    parts = [f"{info[key]} {label}" for status, label in labels
             if info.get(key := "files_" + status.replace(" ", "_"))]
    return "artifacts: " + (", ".join(parts) if parts else "none")


def comparison_line(info: dict) -> str:
    """What the comparison found, or why there was none, in one line for the console."""
    if info.get("compared_with") is None:
        return f"not compared: {info.get('not_compared') or 'no earlier complete run'}"
    where = f"compared with {info['compared_with']}"
    if info.get("caveats"):
        where += f" (unlike runs: {'; '.join(info['caveats'])})"
    timed = (f"{info['timed_rows_agree']} of {info['timed_rows']} timed rows agree within their spread (largest "
             f"difference {info['max_abs_diff_pct']:.1f}%)" if info.get("timed_rows") else "no timed rows in common")
    tables = (f"{info['tables_identical']} of {info['tables']} untimed tables identical, verdicts differ in "
              f"{', '.join(info['tables_verdicts_differ']) or 'none'}" if info.get("tables")
              else "no untimed tables in common")
    return f"{where}: {timed}; {tables}"
