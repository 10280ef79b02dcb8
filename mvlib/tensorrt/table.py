"""The engines table (results/engines.csv: one row per engine of the run) and the prose notebooks show from it.

Rows are keyed by (`notebook`, `engine`). Each group of columns has one writer, which changes only its own columns
(tests/tensorrt/test_table.py checks it), so a rerun of one stage leaves the others' columns as they were:

- build (`BUILD_COLUMNS`: the builder's words, `compute_precision`, the runtime's `validity`, `path`): `record`,
  from the build stages of 03, 04 and 05 (`build_all`, through glue.record_engines); it owns the rows. `Builds`
  runs TensorRT-RTX's builds side by side and gives the rows and printed lines of one after another.
- accuracy (`accuracy`): `record_accuracy`, from the engine accuracy stages of 03, 04 and 05.
- jit (`JIT_COLUMNS`: TensorRT-RTX's JIT, timing.jit): `record_jit`, from the `engines_jit` stage of 03, 04 and 05
  (`measure_jit`: a stage of its own, so the manifest gives the build and the JIT their own seconds).
- timing (`timing`: how notebook 06 timed each engine): `record_timing`, from the `tensorrt_*` stages of 06.

`ran` is no group's: every save derives it from the others (an accuracy verdict, a JIT measured, a timing done
here), so a row is never reported as run unless it ran here. `record` keeps a row's other groups while its engine
(`path`) is the same and clears them when the build made another one. `compute_precision` is what the builder said
the convolutions and matmuls got; an "int8" engine whose builder made none INT8 says so.

Serves: notebooks 03 to 06.
"""
from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
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
KEY = ["notebook", "engine"]
BUILD_COLUMNS = ["onnx", "flavour", "flavour_version", "target", "status", "messages", "build_seconds",
                 "engine_bytes", "network_layers", "layers_by_type", "plugin_layers", "plugin_nodes_in_onnx",
                 "compute_precision", "validity", "path"]
GROUPS = {"build": BUILD_COLUMNS, "accuracy": ["accuracy"], "jit": timing.JIT_COLUMNS, "timing": ["timing"]}
ENGINE_COLUMNS = ["notebook", "engine", "onnx", "flavour", "flavour_version", "target", "status", "messages",
                  "build_seconds", "engine_bytes", "network_layers", "layers_by_type", "plugin_layers",
                  "plugin_nodes_in_onnx", "compute_precision", "validity", "ran", "accuracy", "timing",
                  *timing.JIT_COLUMNS, "path"]
TEXT_COLUMNS = ("accuracy", "timing", "messages", "ran", "jit", "compute_precision", "validity")
# what each group's text starts with where the engine really ran here (`ran` is derived from these)
RAN_WORDS = {"accuracy": ("passed", "FAILED"), "jit": ("measured",), "timing": ("timed",)}
BUILT = ("built", "reused", "rebuilt")  # the statuses of an engines-table row that holds a usable engine
JOBS_ENV = "MVLIB_BUILD_JOBS"  # how many engine builds may run side by side (build_jobs)
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_STARTED: weakref.WeakSet = weakref.WeakSet()  # the Builds whose side-by-side builds may still run (stop_all)


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


def _run_here(eng: cache.Engine, rebuild) -> tuple[cache.Engine, dict]:
    """(the engine, its columns) where it runs here: rebuilt where the runtime calls the cached plan INVALID for a
    reason a rebuild fixes, inspected if it was built elsewhere, the runtime's verdict; else the engine as built
    (the JIT stage says why it does not run)."""
    try:
        eng = runner.usable(eng, rebuild)
    except StageSkipped:
        return eng, {}
    layers.ensure_inspected(eng)
    return eng, {"validity": eng.validity}


def _built_row(notebook: str, spec: EngineSpec, base: dict, make, first=None) -> dict:
    """The engines-table row of one spec: built (or reused, or rebuilt) and, where it runs here, judged;
    failed with the builder's words. `first`: the engine a side-by-side build made (Builds), else make("")."""
    try:
        eng, ran = _run_here(first() if first else make(""), make)
    except cache.BuildFailed as err:
        return {**base, "status": "failed", "messages": " | ".join(err.messages) or str(err)}
    if eng.rebuilt:
        line = rebuilt_line(notebook, spec.name, eng.rebuilt)
        print(line)
        if sys.__stderr__ is not None and sys.__stderr__ is not sys.stderr:  # in a kernel: the driver's console
            print(line, file=sys.__stderr__, flush=True)
    return {**_row(spec, eng, base), **ran}


def build_jobs() -> int:
    """How many engine builds run side by side: MVLIB_BUILD_JOBS, else the cores this process may use (one
    TensorRT-RTX build keeps one core busy: 3.3 s of CPU in a 3.6 s build of mobilevit_xxs alone, 2026-12-08)."""
    wanted = os.environ.get(JOBS_ENV, "").strip()
    if not wanted:
        return len(os.sched_getaffinity(0))
    if not wanted.isdigit() or int(wanted) < 1:
        raise ValueError(f"{JOBS_ENV}={wanted!r}: give how many engine builds may run at once, e.g. {JOBS_ENV}=4")
    return int(wanted)


def _pool(jobs: int) -> ThreadPoolExecutor:
    """The threads that wait on side-by-side build children, one pool per size for the whole process, so two
    notebooks' Builds started together (04's INT8 and FP8) share `jobs` builds between them, first come first."""
    with _POOLS_LOCK:
        if jobs not in _POOLS:
            _POOLS[jobs] = ThreadPoolExecutor(jobs, thread_name_prefix="engine-build")
        return _POOLS[jobs]


class Builds:
    """A notebook's engine builds, started at once; `table()` waits for them in spec order and gives build_all's
    rows. With TensorRT-RTX (which builds ahead of time, on the CPU) up to `jobs` (build_jobs) build children run
    side by side, each in a thread of its own here; full TensorRT times tactics on the GPU, so its builds run one
    after another, in `table()`. What stops the start (no builder, a bad target) is raised by `table()`, inside
    the stage that awaits it."""

    def __init__(self, notebook: str, specs: Sequence[EngineSpec], profile: Profile, trt_flavour: str | None = "auto",
                 trt_target: str = "auto", workspace_gb: float = 4, jobs: int | None = None, error=None):
        self.notebook, self.specs, self.profile, self.workspace_gb = notebook, list(specs), profile, workspace_gb
        self.error, self.futures = error, {}
        if error is not None:
            return
        try:
            self.fl = select(trt_flavour)
            self.target = self.fl.resolve_target(trt_target)
            jobs = jobs or build_jobs()
        except Exception as err:  # raised where the stage awaits these builds
            self.error = err
            return
        if jobs > 1 and self.fl.rtx:
            pool = _pool(jobs)
            self.futures = {i: pool.submit(self._side_by_side, spec) for i, spec in enumerate(self.specs)
                            if Path(spec.onnx).is_file()}
            _STARTED.add(self)

    def _make(self, spec: EngineSpec, why: str = "", say=print) -> cache.Engine:
        """Build (or reuse) one spec's engine (cache.build_engine); `why`: force a rebuild."""
        return cache.build_engine(spec.onnx, self.profile, self.fl, self.target, spec.plugins, self.workspace_gb,
                                  check=spec.check, force=why, say=say)

    def _side_by_side(self, spec: EngineSpec) -> tuple:
        """(engine or None, error or None, the lines the build said) of one spec, in a pool thread."""
        said: list[str] = []
        try:
            return self._make(spec, "", said.append), None, said
        except Exception as err:  # given to table(), which says it in spec order
            return None, err, said

    def _awaited(self, i: int) -> cache.Engine:
        """Spec `i`'s side-by-side build, awaited: its lines printed, its error raised."""
        eng, err, said = self.futures[i].result()
        for line in said:
            print(line)
        if err is not None:
            raise err
        return eng

    def table(self) -> pd.DataFrame:
        """build_all's rows, in spec order; an interrupt stops every side-by-side build (stop_all)."""
        if self.error is not None:
            raise self.error
        print(f"{len(self.specs)} engines with {self.fl.label} for {self.target}")
        rows = []
        try:
            for i, spec in enumerate(progress(self.specs, f"engines ({self.fl.label}, {self.target})", unit="engine",
                                              lines=False)):
                rows.append(self._spec_row(i, spec))
        except BaseException:
            stop_all()
            raise
        finally:
            _STARTED.discard(self)
        return pd.DataFrame(rows).reindex(columns=KEY + BUILD_COLUMNS).astype({"validity": object})

    def _spec_row(self, i: int, spec: EngineSpec) -> dict:
        """The row of spec `i`: skipped where its ONNX file is missing, else built (here or side by side)."""
        onnx = Path(spec.onnx)
        base = {"notebook": self.notebook, "engine": spec.name, "onnx": onnx.name, "flavour": self.fl.name,
                "flavour_version": self.fl.version, "target": self.target,
                "plugin_nodes_in_onnx": plugin_nodes_in(onnx) if onnx.is_file() else None}
        if not onnx.is_file():
            return {**base, "status": "skipped", "messages": f"{onnx.name} not found"}
        return _built_row(self.notebook, spec, base, lambda why: self._make(spec, why),
                          (lambda: self._awaited(i)) if i in self.futures else None)

    def stop(self) -> None:
        """Cancel the builds not started yet."""
        for fut in self.futures.values():
            fut.cancel()


def stop_all() -> None:
    """Stop every side-by-side build of this process: queued ones cancelled, running children killed, and back
    only when none is left."""
    started = list(_STARTED)
    for builds in started:
        builds.stop()
    running = [f for b in started for f in b.futures.values() if not f.done()]
    while running:
        cache.stop_builds()
        running = list(wait(running, timeout=0.5).not_done)


def build_all(notebook: str, specs: Sequence[EngineSpec], profile: Profile, trt_flavour: str | None = "auto",
              trt_target: str = "auto", workspace_gb: float = 4, jobs: int | None = None) -> pd.DataFrame:
    """Build (or reuse) every engine of a notebook; one engines-table row each (the build columns), failures with
    the builder's words. It only builds: the JIT (measure_jit), accuracy and timing are stages of their own.
    `jobs`: builds side by side (Builds; default build_jobs())."""
    return Builds(notebook, specs, profile, trt_flavour, trt_target, workspace_gb, jobs).table()


def measure_jit(*tables: pd.DataFrame | None) -> pd.DataFrame:
    """The JIT stage (`engines_jit`): the JIT columns (timing.jit) of every built engine of a notebook's build stages
    (their tables; None: skipped) that runs here, keyed by (notebook, engine); one that does not run here says why.
    StageSkipped when none was built."""
    rows = []
    built = built_rows(_joined(tables))
    for r in progress(list(built.itertuples()), "JIT", unit="engine", lines=False):
        eng = cache.load(r.path)
        try:
            runner.runnable(eng)
        except StageSkipped as why:
            cells = {"jit": f"skipped: {str(why).removeprefix('built, not run: ')}"}
        else:
            cells = timing.jit(eng, eng.info.get("plugins", ()))
        rows.append({"notebook": r.notebook, "engine": r.engine, **cells})
    return pd.DataFrame(rows).reindex(columns=KEY + timing.JIT_COLUMNS)


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
    return table.reindex(columns=ENGINE_COLUMNS).astype({c: object for c in TEXT_COLUMNS})


def _save(run, table: pd.DataFrame) -> pd.DataFrame:
    """Write the engines table, `ran` derived from the groups that run engines (RAN_WORDS)."""
    ran = pd.Series(False, index=table.index)
    for column, words in RAN_WORDS.items():
        ran |= table[column].map(lambda v, words=words: isinstance(v, str) and v.startswith(words))
    table = table.reindex(columns=ENGINE_COLUMNS).assign(ran=ran)
    run.save_table(table, ENGINES_TABLE)
    return table


def _keys(frame: pd.DataFrame) -> dict:
    """Each row's (notebook, engine) key, by the row's index."""
    return dict(zip(frame.index, zip(frame["notebook"], frame["engine"], strict=True), strict=True))


def record(run, table: pd.DataFrame) -> pd.DataFrame:
    """The build group's writer: a notebook's engine rows (build_all's) become that notebook's rows of the run's
    engines table (its earlier rows replaced). A row keeps the other groups' columns while its engine (`path`) is
    the one they describe."""
    old = read(run)
    if not len(table):
        return _save(run, old)
    new = table.reindex(columns=ENGINE_COLUMNS).astype({c: object for c in TEXT_COLUMNS})
    others = [c for c in ENGINE_COLUMNS if c not in KEY + BUILD_COLUMNS + ["ran"]]
    before = {key: i for i, key in _keys(old).items()}
    for i, key in _keys(new).items():
        j = before.get(key)
        if j is not None and pd.notna(new.at[i, "path"]) and old.at[j, "path"] == new.at[i, "path"]:
            new.loc[i, others] = old.loc[j, others].to_numpy()
    kept = old[~old["notebook"].isin(new["notebook"])]
    return _save(run, pd.concat([kept, new], ignore_index=True) if len(kept) else new)


def _write(run, group: str, values: dict[tuple[str | None, str], dict]) -> pd.DataFrame:
    """Set one group's columns of the rows named in `values` ({(notebook or None: any, engine): {column: value}})
    and nothing else."""
    table = read(run)
    for (notebook, engine), cells in values.items():
        stray = set(cells) - set(GROUPS[group])
        if stray:
            raise ValueError(f"{sorted(stray)} are not {group} columns of the engines table ({GROUPS[group]})")
        at = (table["engine"] == engine) & ((table["notebook"] == notebook) if notebook is not None else True)
        for column, value in cells.items():
            table.loc[at, column] = value
    return _save(run, table)


def not_run_here(row) -> str:
    """Why an engines-table row's engine does not run on this machine, by its flavour ('' where it may)."""
    runs, why = Flavour(row.flavour, row.flavour_version).runs_here()
    return "" if runs else why


def _results(engines: pd.DataFrame | None, done: dict[str, str], why: str) -> dict[tuple[str, str], str]:
    """Per built row of `engines`, keyed (notebook, engine): its entry in `done` (by engine name), else
    'skipped: <why>' (its flavour's reason where it does not run here, else the stage's `why`); nothing where
    neither gives a reason."""
    out = {}
    if engines is None:  # the build stages were skipped: no engine to say anything of
        return out
    for r in engines[engines["status"].isin(BUILT)].itertuples():
        reason = "" if r.engine in done else (not_run_here(r) or why)
        if r.engine in done or reason:
            out[(r.notebook, r.engine)] = done.get(r.engine, f"skipped: {reason}")
    return out


def record_accuracy(run, engines: pd.DataFrame | None, measured: pd.DataFrame | None, why: str = "") -> dict:
    """The accuracy group's writer: each built engine of `engines` (a build stage's rows) gets its verdict from
    the accuracy table `measured` (accuracy_verdicts), else why it was not checked; what was written."""
    values = _results(engines, accuracy_verdicts(measured) if measured is not None else {}, why)
    _write(run, "accuracy", {key: {"accuracy": v} for key, v in values.items()})
    return values


def record_jit(run, measured: pd.DataFrame | None, why: str, *tables: pd.DataFrame | None) -> pd.DataFrame:
    """The JIT group's writer: the JIT stage's rows (measure_jit), or for each built engine of the build stages'
    `tables` why none was measured (its flavour's reason, else the stage's skip reason `why`)."""
    engines = _joined(tables)
    rows = {(r["notebook"], r["engine"]): {c: (None if pd.isna(r[c]) else r[c]) for c in timing.JIT_COLUMNS}
            for r in (measured.to_dict("records") if measured is not None else [])}
    left = None if engines is None else engines[[key not in rows for key in _keys(engines).values()]]
    blank = dict.fromkeys(timing.JIT_COLUMNS)
    return _write(run, "jit", {**rows, **{key: {**blank, "jit": v} for key, v in _results(left, {}, why).items()}})


def _joined(tables) -> pd.DataFrame | None:
    """The rows of several build stages' tables (None: that stage was skipped); None when all were."""
    built = [t for t in tables if t is not None]
    return pd.concat(built, ignore_index=True) if built else None


def record_timing(run, values: dict[str, str], why: str = "no stage of notebook 06 times this engine") \
        -> pd.DataFrame:
    """The timing group's writer (notebook 06): how its timing of each engine named in `values` went; every other
    built engine of the table gets why it was not timed."""
    return _write(run, "timing", {key: {"timing": v} for key, v in _results(read(run), values, why).items()})


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


def runners(engines: pd.DataFrame | None, runnable: Callable | None = None, plugins: Sequence = (),
            batches: Sequence[int] = (), stage: str = "engines") -> list[tuple]:
    """(row, engine, runner `trt-<engine>`) for every built engine of an engines table: the one engine loop.

    StageSkipped when no engine was built (naming `stage`) or one cannot run here: `runnable(engine)` returns the
    engine or raises it (default runner.runnable; FP8 engines: mvlib.fp8.runnable). Every batch of `batches` must
    fit each engine's profile; `plugins` are the plugin libraries the engines need."""
    runnable = runnable or runner.runnable
    out = []
    for r in built_rows(engines, stage).itertuples():
        engine = runnable(cache.load(r.path))
        for b in batches:
            engine.profile.check(b)
        out.append((r, engine, runner.runner(engine, f"trt-{r.engine}", plugins)))
    return out


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
    for r in table.reindex(columns=ENGINE_COLUMNS).itertuples():  # a build stage's rows too (build columns only)
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
        skipped = isinstance(r.accuracy, str) and r.accuracy.startswith("skipped")
        why = r.accuracy.removeprefix("skipped: ") if skipped else not_run_here(r)
        if why:
            lines.append(f"    - not run: {why}")
    return "\n".join(lines)
