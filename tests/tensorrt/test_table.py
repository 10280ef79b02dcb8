"""The engines table and its prose (mvlib.tensorrt.table): one writer per column group, the JIT stage, INT8, the one
engine loop (`runners`)."""
from pathlib import Path

import pandas as pd
import pytest
import tensorrt_models as models

from mvlib import io, onnxmodel, paths, tiers
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cache, flavours, shapes, table, timing

HAS_BUILDER, BUILDER = flavours.builder_status()


class FakeRun:  # only the table paths of mvlib.run.Run
    def __init__(self, folder):
        self.folder = folder

    def table(self, name):
        return self.folder / name

    def save_table(self, frame, name):
        io.write_csv(self.folder / name, frame)


def test_engines_table_keeps_each_notebooks_rows(tmp_path):
    run = FakeRun(tmp_path)
    rows = lambda nb, names: pd.DataFrame([{"notebook": nb, "engine": n, "status": "built"} for n in names])  # noqa: E731
    table.record(run, rows("03", ["fp32", "fp16"]))
    table.record(run, rows("04", ["int8"]))
    table.record(run, rows("03", ["fp32", "fp16"]))  # a rerun of 03 replaces its rows, keeps 04's
    table.record_timing(run, {"int8": "timed: 2 batches"})
    saved = pd.read_csv(tmp_path / table.ENGINES_TABLE)
    assert list(saved.columns) == table.ENGINE_COLUMNS
    saved = saved.set_index("engine")
    assert sorted(saved.index) == ["fp16", "fp32", "int8"]
    assert saved.loc["int8", "timing"] == "timed: 2 batches" and saved.loc["int8", "ran"] == True  # noqa: E712
    with pytest.raises(ValueError, match="not timing columns"):
        table._write(run, "timing", {(None, "int8"): {"accuracy": "passed"}})


def _built(notebook, names, plan="a"):
    """Build-group rows as build_all returns them: TensorRT-RTX engines for sm86 (which no GPU here runs)."""
    return pd.DataFrame([{"notebook": notebook, "engine": n, "onnx": f"model.{n}.onnx", "flavour": "tensorrt_rtx",
                          "flavour_version": "1.7.1.116", "target": "sm86", "status": "built", "messages": "",
                          "build_seconds": 4.2, "engine_bytes": 2**21, "network_layers": 120,
                          "layers_by_type": "Convolution:40 Shuffle:80", "plugin_layers": 0, "plugin_nodes_in_onnx": 0,
                          "compute_precision": "conv: 40 FP16", "validity": None,
                          "path": f"/engines/model.{n}-{plan}/engine.plan"} for n in names]
                        ).reindex(columns=table.KEY + table.BUILD_COLUMNS)


def _changed(before, after) -> set[str]:
    """The columns whose cells differ between two reads of the engines table (same rows)."""
    a, b = before.set_index(table.KEY), after.set_index(table.KEY).loc[before.set_index(table.KEY).index]
    return {c for c in table.ENGINE_COLUMNS if c not in table.KEY
            and not ((a[c] == b[c]) | (a[c].isna() & b[c].isna())).all()}


def test_each_writer_changes_only_its_own_columns_and_a_rerun_keeps_the_others(tmp_path, monkeypatch):
    """One writer per column group: build (record), accuracy, JIT, timing; `ran` is derived from them. A rebuild
    of the same engine keeps the other groups; a build that made another engine clears that row's."""
    monkeypatch.setattr(flavours, "capability_here", lambda: "8.6")  # a GPU these engines run on
    monkeypatch.setattr(flavours.cudainfo, "driver_version", lambda: (13000, "test"))
    run = FakeRun(tmp_path)
    b03, b04 = _built("03_fp32_fp16", ["fp32", "fp16"]), _built("04_int8", ["int8"])
    table.record(run, b03)
    table.record(run, b04)
    steps = [("accuracy", lambda: table.record_accuracy(
                 run, b03, pd.DataFrame([{"runner": "trt-fp32", "batch": 1, "passed": True, "cosine_min": 0.99999}]),
                 "")),
             ("jit", lambda: table.record_jit(run, pd.DataFrame(
                 [{"notebook": "03_fp32_fp16", "engine": "fp32", "jit_batch": 16, "context_cold_ms": 812.5,
                   "first_inference_cold_ms": 840.1, "context_cached_ms": 95.2, "first_inference_cached_ms": 99.0,
                   "steady_ms": 2.1, "jit": "measured"}]), "", b03)),
             ("timing", lambda: table.record_timing(run, {"fp32": "timed: 3 batches in 06_benchmark.csv",
                                                          "int8": "skipped: no TensorRT runtime here"}))]
    for group, write in steps:
        before = table.read(run)
        write()
        assert _changed(before, table.read(run)) <= set(table.GROUPS[group]) | {"ran"}, group
    done = table.read(run).set_index("engine")
    assert done.loc["fp32", "accuracy"].startswith("passed") and done.loc["fp32", "jit"] == "measured"
    assert done.loc["fp16", "timing"] == "skipped: no stage of notebook 06 times this engine"
    assert pd.isna(done.loc["fp16", "accuracy"])  # it runs here and the stage ran: not checked, nothing said
    assert list(done["ran"]) == [True, False, False]  # fp32 ran (accuracy, JIT, timing); int8's timing was skipped
    # a rerun of 03's build stage (the same engines) changes only build columns; 04's row is untouched
    before = table.read(run)
    table.record(run, b03.assign(status="reused", build_seconds=None))
    assert _changed(before, table.read(run)) == {"status", "build_seconds"}
    # a rerun of 03's accuracy stage changes only accuracy (and ran)
    table.record_accuracy(run, b03, None, "the engine check needs notebook 01's reference outputs")
    again = table.read(run).set_index("engine")
    assert again.loc["fp32", "accuracy"] == "skipped: the engine check needs notebook 01's reference outputs"
    assert again.loc["fp32", "jit"] == "measured" and again.loc["fp32", "steady_ms"] == 2.1
    # a build that made another fp32 engine: its row's accuracy, JIT and timing described the old one
    table.record(run, _built("03_fp32_fp16", ["fp32", "fp16"], plan="b"))
    other = table.read(run).set_index("engine")
    assert other.loc["fp32", ["accuracy", "jit", "timing", "steady_ms"]].isna().all() and not other.loc["fp32", "ran"]
    assert other.loc["int8", "timing"] == "skipped: no TensorRT runtime here"


def test_engines_that_do_not_run_here_say_why_in_every_group(tmp_path):
    """Without a GPU (this machine): each writer's stage was skipped, and each built row says the flavour's reason."""
    if flavours.Flavour("tensorrt_rtx", "1.7.1.116").runs_here()[0]:
        pytest.skip("these engines run on this machine")
    run = FakeRun(tmp_path)
    b03 = _built("03_fp32_fp16", ["fp32"])
    table.record(run, pd.concat([b03, b03.assign(engine="gone", status="skipped", path=None)]))
    table.record_accuracy(run, b03, None, "no TensorRT runtime for this machine")
    table.record_jit(run, None, "no TensorRT runtime for this machine", b03, None)
    table.record_timing(run, {})
    row = table.read(run).set_index("engine").loc["fp32"]
    for column in ("accuracy", "timing", "jit"):
        assert row[column].startswith("skipped:") and "NVIDIA GPU" in row[column], column
    assert not row["ran"] and pd.isna(table.read(run).set_index("engine").loc["gone", "accuracy"])


def test_rebuilt_rows_become_console_lines(tmp_path):
    run = FakeRun(tmp_path)
    table.record(run, pd.DataFrame([{"notebook": "03_fp32_fp16", "engine": "fp32", "status": "rebuilt",
                                     "messages": "rebuilt: engine.plan is corrupt | WARNING: x"},
                                    {"notebook": "03_fp32_fp16", "engine": "fp16", "status": "reused"}]))
    assert table.rebuilt_lines(tmp_path) == [table.rebuilt_line("03_fp32_fp16", "fp32", "engine.plan is corrupt")]


def test_no_row_is_called_int8_that_the_builder_did_not_make_int8():
    assert table.int8_words("int8", "conv: 35 INT8; matmul: 50 INT8").startswith("the builder ran 85 ")
    words = table.int8_words("int8.all.max", "conv: 35 FP16 x INT8; matmul: 50 FP16")
    assert words.startswith("INT8 in name only") and "FP16 x INT8" in words
    assert table.int8_words("fp16", "conv: 35 FP16") == "" and table.int8_words("int8", float("nan")) == ""
    row = {"notebook": "04", "engine": "int8", "onnx": "model.int8.onnx", "flavour": "tensorrt_rtx",
           "flavour_version": "1.7.1.116", "target": "sm86", "status": "built", "messages": "", "build_seconds": 5.0,
           "engine_bytes": 2**21, "network_layers": 10, "plugin_nodes_in_onnx": 0, "plugin_layers": 0,
           "compute_precision": "conv: 3 FP32", "accuracy": "skipped: no GPU"}
    text = table.describe(pd.DataFrame([row]).reindex(columns=table.ENGINE_COLUMNS))
    assert "compute precision: conv: 3 FP32" in text and "INT8 in name only" in text


def test_the_jit_is_a_run_stage_of_its_own_in_every_notebook_that_builds_engines(tmp_path):
    """Notebooks 03, 04 and 05 each run `engines_jit` (measure_jit) after their build stages, so the manifest gives
    the build and the JIT their own seconds; without a GPU the stage is skipped (tier trt) and each built engine's
    JIT columns say why, nothing else of the table changes."""
    import ast
    import json

    from mvlib.run import Run
    for name in ("03_fp32_fp16", "04_int8", "05_silu_plugin"):
        nb = json.loads((paths.NOTEBOOKS / f"{name}.ipynb").read_text())
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
                         and not "".join(c["source"]).startswith("%%"))
        found = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call) and ast.unparse(n.func) == "run.stage"]
        calls = {n.args[0].value: ast.unparse(n.args[2]) for n in found if isinstance(n.args[0], ast.Constant)}
        assert calls.get("engines_jit") == "trt_table.measure_jit", name
        assert "timing.jit" not in code and "measure_jit" not in calls.get("engines", ""), name
    if tiers.detect() == "trt":
        return
    run = Run(tmp_path / "r", "03_fp32_fp16")
    engines = _built("03_fp32_fp16", ["fp32", "fp16"])
    table.record(run, engines)
    before = table.read(run)
    jit = run.stage("engines_jit", "trt", table.measure_jit, engines)
    assert jit is None
    table.record_jit(run, jit, run.skip_reason("engines_jit"), engines)
    after = table.read(run)
    assert after["jit"].str.startswith("skipped: ").all()
    assert after.drop(columns=table.GROUPS["jit"]).equals(before.drop(columns=table.GROUPS["jit"]))
    stage = io.read_json(run.manifest_path)["stages"]["03_fp32_fp16/engines_jit"]
    assert stage["status"] == "skipped" and stage["tier"] == "trt"


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
def test_build_all_only_builds_and_the_jit_is_a_stage_of_its_own(tmp_path, monkeypatch):
    """build_all's rows hold the build columns alone (no JIT, accuracy or timing: those stages write their own);
    measure_jit, the JIT stage, says for each built engine why it did not run where no GPU runs it."""
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    specs = [table.EngineSpec("int8", models.conv(tmp_path / "model.int8.onnx", int8=True)),
             table.EngineSpec("gone", tmp_path / "nothing.onnx")]
    rows = table.build_all("04_int8", specs, shapes.Profile(1, 2, 4), workspace_gb=1)
    assert list(rows.columns) == table.KEY + table.BUILD_COLUMNS
    built, gone = rows.iloc[0], rows.iloc[1]
    assert built.status == "built" and built.compute_precision == "conv: 1 INT8"
    assert gone.status == "skipped" and "not found" in gone.messages
    jit = table.measure_jit(rows)
    assert list(jit.columns) == table.KEY + timing.JIT_COLUMNS and list(jit.engine) == ["int8"]
    if not flavours.select().runs_here()[0]:
        assert jit.jit[0].startswith("skipped:") and "NVIDIA GPU" in jit.jit[0] and pd.isna(jit.context_cold_ms[0])
    text = table.describe(rows.reindex(columns=table.ENGINE_COLUMNS))
    assert "**int8**" in text and "the builder ran 1 convolutions/matmuls in INT8" in text and "not found" in text


def test_accuracy_verdicts_key_the_engines_table_by_engine_name():
    acc = pd.DataFrame([
        {"runner": "onnxrt-fp32", "batch": 1, "passed": True, "cosine_min": 1.0},
        {"runner": "trt-plugin_fp32", "batch": 1, "passed": True, "cosine_min": 0.9999991},
        {"runner": "trt-plugin_fp32", "batch": 4, "passed": False, "cosine_min": 0.998},
        {"runner": "trt-fp16", "batch": 1, "passed": True, "cosine_min": 0.99995}])
    assert table.accuracy_verdicts(acc) == {"plugin_fp32": "FAILED (cosine_min 0.998000)",
                                            "fp16": "passed (cosine_min 0.999950)"}


def test_plugin_layer_check_fails_on_a_missing_plugin_layer():
    row = {"status": "built", "plugin_nodes_in_onnx": 34}
    checked = pd.DataFrame([{**row, "engine": "plugin_fp32", "plugin_layers": 34},
                            {**row, "engine": "plugin_fp16", "plugin_layers": 33}])
    with pytest.raises(AssertionError, match="(?s)plugin layers differ.*plugin_fp16"):
        table.plugin_layer_check(checked)
    assert table.plugin_layer_check(checked.iloc[:1])["matches"].all()


def test_plugin_nodes_are_counted_by_tensorrts_plugin_domain(tmp_path):
    """Plugin nodes are those in TensorRT's plugin domain, whatever their op: the table knows no plugin's name."""
    import onnx
    from onnx import TensorProto, helper

    from mvlib.tensorrt import plugins
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 8]) for n in ("input", "t2"))
    nodes = [helper.make_node("MvSiLU", ["input"], ["t0"], name="a", domain=plugins.PLUGIN_DOMAIN),
             helper.make_node("Relu", ["t0"], ["t1"], name="b"),
             helper.make_node("SomeoneElsesOp", ["t1"], ["t2"], name="c", domain=plugins.PLUGIN_DOMAIN)]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(plugins.PLUGIN_DOMAIN, 1)]
    path = tmp_path / "p.onnx"
    onnx.save(onnxmodel.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets), str(path))
    assert table.plugin_nodes_in(path) == 2 and plugins.plugin_nodes(path) == ["a", "c"]
    assert table.plugin_nodes_in(models.conv(tmp_path / "m.onnx")) == 0


def test_writers_take_a_skipped_build_stage_without_failing(tmp_path):
    """A build stage that was skipped (None: notebook 05 where the plugin could not be built, as on the H100 without
    TensorRT's headers) leaves its writers nothing to write; once it failed notebook 05 with
    "'list' object has no attribute 'itertuples'"."""
    run = FakeRun(tmp_path)
    table.record(run, _built("03_fp32_fp16", ["fp32"]))
    assert table.record_accuracy(run, None, None, "the plugin was not built") == {}
    table.record_jit(run, None, "the plugin was not built", None, None)
    assert list(table.read(run)["engine"]) == ["fp32"]


# --- the one engine loop: a runner for each built engine -----------------------------------------------------
def test_runners_without_a_built_engine_skip_naming_the_stage():
    with pytest.raises(StageSkipped, match="see the plugin_engines stage"):
        table.runners(None, stage="plugin_engines")
    failed = pd.DataFrame([{"engine": "fp16", "status": "failed", "path": ""}])
    with pytest.raises(StageSkipped, match="no engine was built"):
        table.runners(failed)


@pytest.mark.skipif(not flavours.builder_status()[0], reason="no TensorRT builder here")
def test_runners_make_one_runner_per_built_engine_that_runs(tmp_path, monkeypatch):
    """A real engine (the installed builder): where it cannot run, the skip says why; its batches must fit."""
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    spec = table.EngineSpec("fp32", models.conv(tmp_path / "model.onnx"))
    engines = table.require_built(table.build_all("03_fp32_fp16", [spec], shapes.Profile(1, 2, 4), workspace_gb=1))
    if not flavours.select().runs_here()[0]:
        with pytest.raises(StageSkipped):  # the runtime's own reason (no GPU, or one it does not run on)
            table.runners(engines)
    (row, engine, runner), = table.runners(engines, runnable=lambda e: e, batches=(1, 4))
    assert row.engine == "fp32" and runner.name == "trt-fp32" and engine.profile.max == 4
    with pytest.raises(ValueError, match="outside the engine's optimization profile"):
        table.runners(engines, runnable=lambda e: e, batches=(8,))


# --- builds side by side (Builds): the serial path's rows, files and lines ----------------------------------------
def _children(before: frozenset = frozenset()) -> list[int]:
    """The pids of this process's live child processes (/proc: the test needs no psutil) not in `before`, the ones
    alive when the test began (make test's background smoke run is a child of pytest); multiprocessing's resource
    tracker, which an earlier test's spawned pool leaves for the session, is not counted."""
    import os
    kids = []
    for stat in __import__("pathlib").Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        pid = int(stat.parent.name)
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"resource_tracker" not in cmdline \
                and pid not in before:
            kids.append(pid)
    return kids


def _refused(path):
    """A valid ONNX file the builder refuses: one op no importer or plugin knows."""
    import onnx
    from onnx import TensorProto, helper
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 8]) for n in ("input", "y"))
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["input"], ["y"], name="n")], "g", [x], [y])
    onnx.save(onnxmodel.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _smoke_specs(tmp_path, xxs):
    """Three engines: the smoke model (mobilevit_xxs), a file the builder refuses between, and a small INT8 one."""
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(xxs[0].onnx.read_bytes())
    return [table.EngineSpec("fp32", onnx), table.EngineSpec("bad", _refused(tmp_path / "model.bad.onnx")),
            table.EngineSpec("int8", models.conv(tmp_path / "model.int8.onnx", int8=True))]


def _comparable(rows: pd.DataFrame) -> pd.DataFrame:
    """build_all's rows without what differs between two builds of the same engine: seconds and the cache root."""
    return rows.drop(columns=["build_seconds", "path"]).fillna("")


def _quiet_numbers(text: str) -> list[str]:
    """Printed lines with their numbers (seconds, counts) blanked."""
    import re
    return [re.sub(r"\d+(\.\d+)?", "N", ln) for ln in text.splitlines()]


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
def test_side_by_side_builds_give_the_serial_rows_files_and_lines(tmp_path, xxs, monkeypatch, capsys):
    """The smoke model's engines built one after another (jobs=1) and side by side (jobs=3), each into a cache of
    its own: the same rows in spec order (the refused file's with the builder's words, the others built), the
    same cache keys, byte-identical plans (TensorRT-RTX's builds are deterministic), the same printed lines; no
    build child is left running."""
    before = frozenset(_children())
    specs = _smoke_specs(tmp_path, xxs)
    got = {}
    for jobs in (1, 3):
        monkeypatch.setattr(paths, "ENGINES", tmp_path / f"engines{jobs}")
        capsys.readouterr()
        got[jobs] = table.build_all("03_fp32_fp16", specs, shapes.Profile(1, 2, 4), "tensorrt_rtx", "sm86", 1, jobs)
        got[jobs, "out"] = capsys.readouterr().out
        assert not _children(before) and not cache.LIVE
    serial, side = got[1], got[3]
    assert list(side.engine) == ["fp32", "bad", "int8"] and list(side.status) == ["built", "failed", "built"]
    assert "PARSER: In node 0 with name: n and operator: NoSuchOp" in side.messages[1], side.messages[1]
    pd.testing.assert_frame_equal(_comparable(serial), _comparable(side))
    for a, b in zip(serial.path, side.path, strict=True):
        if isinstance(a, str):
            assert Path(a).parent.name == Path(b).parent.name  # the same cache key
            assert io.sha256(a) == io.sha256(b), f"{Path(a).parent.name}: the plans differ"
    assert _quiet_numbers(got[1, "out"]) == _quiet_numbers(got[3, "out"])
    assert "built model-b" in got[3, "out"]  # cache.build's lines, printed by the notebook's thread in spec order


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
def test_int8_and_fp8_builds_overlap_and_a_failed_fp8_start_leaves_int8s(tmp_path, monkeypatch):
    """Notebook 04 starts INT8's and FP8's builds together: FP8's are under way before INT8's stage returns. An FP8
    start that cannot build (a target without FP8) raises in FP8's own stage, not at the start, and INT8's rows
    are whole."""
    before = frozenset(_children())
    from mvlib import fp8
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    int8 = [table.EngineSpec("int8", models.conv(tmp_path / "model.int8.onnx", int8=True))]
    fp8_specs = [table.EngineSpec("fp8", models.conv(tmp_path / "model.fp8.onnx", seed=1))]
    profile = shapes.Profile(1, 2, 4)
    builds = table.Builds("04_int8", int8, profile, "tensorrt_rtx", "sm86", 1, jobs=2)
    builds8 = fp8.start_engines("04_int8", fp8_specs, profile, "tensorrt_rtx", "sm89", 1)
    refused = fp8.start_engines("04_int8", fp8_specs, profile, "tensorrt_rtx", "sm86", 1)
    rows = builds.table()
    assert builds8.futures[0].running() or builds8.futures[0].done()  # started beside INT8's, not after
    assert list(rows.status) == ["built"]
    assert list(builds8.table().target) == ["sm89"] and not _children(before)
    with pytest.raises(ValueError, match="sm86"):
        refused.table()


@pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
def test_stop_all_ends_every_side_by_side_build(tmp_path, xxs, monkeypatch):
    """An interrupt while a notebook awaits its builds (stop_all): queued builds are cancelled and running build
    children killed; none is left."""
    before = frozenset(_children())
    import time
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    specs = _smoke_specs(tmp_path, xxs)
    builds = table.Builds("03_fp32_fp16", specs, shapes.Profile(1, 2, 4), "tensorrt_rtx", "sm86", 1, jobs=2)
    while not cache.LIVE and not builds.futures[0].done():  # a build child is running
        time.sleep(0.05)
    table.stop_all()
    assert all(f.done() for f in builds.futures.values())
    engine, err, _ = builds.futures[0].result()  # the smoke model's build (seconds long) was running: killed
    assert engine is None and "signal SIGKILL" in str(err), err
    assert not _children(before) and not cache.LIVE


def test_build_jobs_default_to_the_cores_this_process_may_use(monkeypatch):
    import os
    monkeypatch.delenv(table.JOBS_ENV, raising=False)
    assert table.build_jobs() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(table.JOBS_ENV, "3")
    assert table.build_jobs() == 3
    monkeypatch.setenv(table.JOBS_ENV, "0")
    with pytest.raises(ValueError, match="MVLIB_BUILD_JOBS=4"):
        table.build_jobs()
