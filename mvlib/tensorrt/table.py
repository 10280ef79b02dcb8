"""The engines table (results/engines.csv: one row per engine of the run) and the prose notebooks show from it.

Notebooks 03, 04 and 05 build their engines with `build_all` and `record` their rows; 03 to 06 `annotate`
accuracy and timing. A row is never reported as run unless it ran here (`ran`). `compute_precision` is what
the builder said the convolutions and matmuls got; an "int8" engine whose builder made none INT8 says so.

Serves: notebooks 03 to 06.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mvlib import metrics, precisions
from mvlib.progress import progress
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cache, layers, runner, timing
from mvlib.tensorrt import plugins as plugin_libs
from mvlib.tensorrt.flavours import Flavour, select
from mvlib.tensorrt.shapes import Profile

ENGINES_TABLE = "engines.csv"
ENGINE_COLUMNS = ["notebook", "engine", "onnx", "flavour", "flavour_version", "target", "status", "messages",
                  "build_seconds", "engine_bytes", "network_layers", "layers_by_type", "plugin_layers",
                  "plugin_nodes_in_onnx", "compute_precision", "validity", "ran", "accuracy", "timing",
                  *timing.JIT_COLUMNS, "path"]
BUILT = ("built", "reused", "rebuilt")  # the statuses of an engines-table row that holds a usable engine


@dataclass(frozen=True)
class EngineSpec:
    """One engine a notebook builds: its name in the tables, ONNX file, plugin libraries and the check each plugin
    library passes before TensorRT loads it (plugins.load_plugins; e.g. mvlib.silu.build.check_abi)."""
    name: str
    onnx: Path
    plugins: tuple = ()
    check: Callable | None = None


def plugin_nodes_in(onnx_path: Path | str) -> int:
    """How many plugin-op nodes (plugins.PLUGIN_DOMAIN) the file holds."""
    return len(plugin_libs.plugin_nodes(onnx_path))


def rebuilt_line(notebook: str, engine: str, why: str) -> str:
    """The one plain line that says a cached engine was corrupt and was built again."""
    return f"{notebook}: engine {engine}: the cached engine could not be used ({why}); rebuilt"


def _row(spec: EngineSpec, eng: cache.Engine, base: dict) -> dict:
    """The engines-table row of one built, reused or rebuilt engine."""
    info = eng.info
    said = " | ".join(info["messages"])
    return {**base, "status": eng.status,
            "messages": (f"rebuilt: {eng.rebuilt}" + (f" | {said}" if said else "")) if eng.rebuilt else said,
            "build_seconds": info["build_seconds"], "engine_bytes": info["plan_bytes"],
            "network_layers": info["network_layers"],
            "layers_by_type": " ".join(f"{k}:{v}" for k, v in info["layers_by_type"].items()),
            "plugin_layers": info["plugin_layers"], "compute_precision": info.get("compute_precision"),
            "path": str(eng.plan)}


def _run_here(eng: cache.Engine, plugins: Sequence[Path | str], rebuild) -> tuple[cache.Engine, dict]:
    """(the engine, its columns) where it runs here: rebuilt where the runtime calls the cached plan INVALID for a
    reason a rebuild fixes, inspected if it was built elsewhere, the runtime's verdict, its JIT measured; else the
    engine and why it does not run."""
    try:
        eng = runner.usable(eng, rebuild)
    except StageSkipped as why:
        return eng, {"jit": f"skipped: {str(why).removeprefix('built, not run: ')}"}
    layers.ensure_inspected(eng)
    return eng, {"validity": eng.validity, **timing.jit(eng, plugins)}


def _built_row(notebook: str, spec: EngineSpec, base: dict, make) -> dict:
    """The engines-table row of one spec: built (or reused, or rebuilt) and, where it runs here, judged and timed;
    failed with the builder's words."""
    try:
        eng, ran = _run_here(make(""), spec.plugins, make)
    except cache.BuildFailed as err:
        return {**base, "status": "failed", "messages": " | ".join(err.messages) or str(err)}
    if eng.rebuilt:
        line = rebuilt_line(notebook, spec.name, eng.rebuilt)
        print(line)
        if sys.__stderr__ is not None and sys.__stderr__ is not sys.stderr:  # in a kernel: the driver's console
            print(line, file=sys.__stderr__, flush=True)
    return {**_row(spec, eng, base), **ran}


def build_all(notebook: str, specs: Sequence[EngineSpec], profile: Profile, trt_flavour: str | None = "auto",
              trt_target: str = "auto", workspace_gb: float = 4) -> pd.DataFrame:
    """Build (or reuse) every engine of a notebook; one engines-table row each, failures with the builder's words."""
    fl = select(trt_flavour)
    target = fl.resolve_target(trt_target)
    rows = []
    print(f"{len(specs)} engines with {fl.label} for {target}")
    for spec in progress(specs, f"engines ({fl.label}, {target})", unit="engine", lines=False):
        base = {"notebook": notebook, "engine": spec.name, "onnx": Path(spec.onnx).name, "flavour": fl.name,
                "flavour_version": fl.version, "target": target, "plugin_nodes_in_onnx": plugin_nodes_in(spec.onnx)
                if Path(spec.onnx).is_file() else None, "ran": False}
        if not Path(spec.onnx).is_file():
            rows.append({**base, "status": "skipped", "messages": f"{Path(spec.onnx).name} not found"})
            continue

        def make(why: str, spec=spec) -> cache.Engine:
            return cache.build_engine(spec.onnx, profile, fl, target, spec.plugins, workspace_gb, check=spec.check,
                                      force=why)
        rows.append(_built_row(notebook, spec, base, make))
    table = pd.DataFrame(rows).reindex(columns=ENGINE_COLUMNS)
    runs, why = fl.runs_here()
    for column in ("accuracy", "timing", "jit", "validity"):
        table[column] = table[column].astype(object)
    if not runs:
        table.loc[table["status"].isin(BUILT), ["accuracy", "timing"]] = f"skipped: {why}"
    return table


def require_built(table: pd.DataFrame) -> pd.DataFrame:
    """`table`, or an error listing every engine that failed or was skipped
    (a machine with a builder builds them all)."""
    bad = table[~table["status"].isin(BUILT)]
    if len(bad):
        lines = [f"{r.engine} ({r.onnx}): {r.status}: {str(r.messages)[:400]}" for r in bad.itertuples()]
        raise AssertionError("engine builds did not all succeed:\n  " + "\n  ".join(lines))
    return table


def plugin_layer_check(table: pd.DataFrame) -> pd.DataFrame:
    """Per engine: plugin layers in the parsed network against plugin nodes in its ONNX file;
    AssertionError if unequal."""
    check = table[table["status"].isin(BUILT)][["engine", "plugin_nodes_in_onnx", "plugin_layers"]].copy()
    check["matches"] = check["plugin_nodes_in_onnx"] == check["plugin_layers"]
    if not check["matches"].all():
        raise AssertionError(f"plugin layers differ from plugin nodes:\n{check[~check['matches']]}")
    return check


def read(run) -> pd.DataFrame:
    """The run's engines table as it stands (empty with its columns when none is written yet)."""
    return read_file(run.table(ENGINES_TABLE))


def read_file(path: Path) -> pd.DataFrame:
    """An engines table file as it stands (empty with its columns where it is not written yet)."""
    table = pd.read_csv(path, dtype={"notebook": str, "engine": str, "onnx": str}) if path.exists() \
        else pd.DataFrame(columns=ENGINE_COLUMNS)
    return table.reindex(columns=ENGINE_COLUMNS).astype({c: object for c in ("accuracy", "timing", "messages",
                                                                              "ran", "jit", "compute_precision",
                                                                              "validity")})


def record(run, table: pd.DataFrame) -> pd.DataFrame:
    """Put a notebook's engine rows into the run's engines table (replacing that notebook's earlier rows)."""
    old = read(run)
    if len(table):
        old = pd.concat([old[~old["notebook"].isin(table["notebook"])], table], ignore_index=True)
    run.save_table(old.reindex(columns=ENGINE_COLUMNS), ENGINES_TABLE)
    return old


def annotate(run, column: str, values: dict[str, str], ran: bool = False) -> pd.DataFrame:
    """Set `accuracy` or `timing` of engines by name in the run's engines table (`ran`: they really ran here)."""
    if column not in ("accuracy", "timing"):
        raise ValueError(f"column {column!r}: the engines table takes results in 'accuracy' or 'timing'")
    table = read(run)
    for engine, value in values.items():
        table.loc[table["engine"] == engine, column] = value
        if ran:
            table.loc[table["engine"] == engine, "ran"] = True
    run.save_table(table.reindex(columns=ENGINE_COLUMNS), ENGINES_TABLE)
    return table


def rebuilt_lines(results: Path) -> list[str]:
    """One plain line per engine of the engines table in a run's `results` folder that was rebuilt because its
    cached copy was corrupt."""
    table = read_file(results / ENGINES_TABLE)
    return [rebuilt_line(r.notebook, r.engine, str(r.messages).split(" | ")[0].removeprefix("rebuilt: "))
            for r in table[table["status"] == "rebuilt"].itertuples()]


def built_rows(engines: pd.DataFrame | None, stage: str = "engines") -> pd.DataFrame:
    """The rows of an engines table that hold a usable engine; StageSkipped when there are none."""
    built = engines[engines["status"].isin(BUILT)] if engines is not None else None
    if built is None or not len(built):
        raise StageSkipped(f"no engine was built (see the {stage} stage)")
    return built


def accuracy_verdicts(table: pd.DataFrame) -> dict[str, str]:
    """Per engine, its `accuracy` entry for the engines table, from an accuracy table's rows of that engine (an
    `engine` column, else `trt-<engine>` runners): passed or FAILED by the one criterion, with the metrics its
    precision's tolerance bounds (metrics.bounded; the worst-image cosine where the table names no precision)."""
    if "engine" in table:
        rows, names = table, table["engine"]
    else:
        rows = table[table["runner"].str.startswith("trt-")]
        names = rows["runner"].str[4:]
    passed = "passed" if "passed" in rows else "passes"
    verdicts = {}
    for engine, grp in rows.groupby(names):
        tol = precisions.get(grp["precision"].iloc[0]).tolerance if "precision" in grp else None
        verdicts[engine] = ("passed" if grp[passed].all() else "FAILED") + f" ({metrics.bounded(grp, tol)})"
    return verdicts


def int8_words(engine: str, summary) -> str:
    """What an INT8 engine's builder really made of it, in words ('' for an engine not named INT8)."""
    if "int8" not in engine or not isinstance(summary, str) or summary.startswith(("not reported", "no ")):
        return ""
    n = layers.int8_math(summary)
    return (f"the builder ran {n} convolutions/matmuls in INT8 ({summary})" if n else
            f"INT8 in name only: the builder ran no convolution or matmul in INT8 ({summary})")


def describe(table: pd.DataFrame) -> str:
    """What the builder did with each model, in Markdown, from the engines table (warnings quoted verbatim)."""
    lines = []
    for r in table.itertuples():
        head = f"- **{r.engine}** (`{r.onnx}`): "
        if r.status not in BUILT:
            lines.append(head + f"{r.status}: {r.messages}")
            continue
        said = [m for m in str(r.messages if isinstance(r.messages, str) else "").split(" | ") if m]
        lines.append(head + f"{r.status} with {Flavour(r.flavour, r.flavour_version).label} for {r.target}"
                     + (f" in {r.build_seconds:.1f} s" if r.status != "reused" else "")
                     + f", {r.engine_bytes / 2**20:.1f} MiB, {int(r.network_layers)} network layers"
                     + (f" ({int(r.plugin_layers)} plugin layers for {int(r.plugin_nodes_in_onnx)} plugin nodes)"
                        if r.plugin_nodes_in_onnx else "")
                     + (f"; compute precision: {r.compute_precision}" if isinstance(r.compute_precision, str) else "")
                     + ("; the builder said:" if said else "; no builder warnings."))
        lines += [f"    - `{m}`" for m in said]
        words = int8_words(str(r.engine), r.compute_precision)
        if words:
            lines.append(f"    - {words}")
        if isinstance(r.validity, str) and "SUBOPTIMAL" in r.validity:
            lines.append(f"    - runs, but {r.validity}")
        if isinstance(r.accuracy, str) and r.accuracy.startswith("skipped"):
            lines.append(f"    - not run: {r.accuracy.removeprefix('skipped: ')}")
    return "\n".join(lines)
