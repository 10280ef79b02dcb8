"""The engine cache (mvlib.tensorrt.cache) with the real builder: keys, reuse, superseded entries, corrupt engines.

TensorRT-RTX from PyPI builds here on the CPU, ahead of time; small real ONNX models keep each build to seconds.
"""
import onnx
import pandas as pd
import pytest
import tensorrt_models as models

from mvlib import onnxmodel, paths
from mvlib.tensorrt import cache, flavours, shapes, table

HAS_BUILDER, BUILDER = flavours.builder_status()
needs_builder = pytest.mark.skipif(not HAS_BUILDER, reason=f"no TensorRT builder: {BUILDER}")
PROFILE = shapes.Profile(1, 2, 4)


@pytest.fixture
def engines_dir(tmp_path, monkeypatch):
    """An empty engine cache for one test."""
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    return paths.ENGINES


@pytest.fixture(scope="module")
def flavour():
    """The flavour the study picks here (auto)."""
    if not HAS_BUILDER:
        pytest.skip(f"no TensorRT builder: {BUILDER}")
    return flavours.select()


def test_engine_key_changes_with_everything_an_engine_depends_on(tmp_path):
    onnx_path = models.conv(tmp_path / "model.onnx")
    rtx = flavours.Flavour("tensorrt_rtx", "1.7.1.116")

    def key(path=onnx_path, profile=PROFILE, fl=rtx, target="sm86", ws=4.0):
        return cache.engine_key(path, cache.key_parts(path, profile, fl, target, (), ws))

    base = key()
    assert base == key() and base.startswith("model-b1_2_4-sm86-tensorrt_rtx-")
    (tmp_path / "other").mkdir()
    other = models.conv(tmp_path / "other" / "model.onnx", doc="one byte of difference is a different engine")
    variants = [key(path=other), key(profile=shapes.Profile(1, 8, 32)), key(target="sm89"), key(ws=2.0),
                key(fl=flavours.Flavour("tensorrt_rtx", "1.8.0")), key(fl=flavours.Flavour("tensorrt", "10.16.0"))]
    assert len({base, *variants}) == len(variants) + 1


def test_a_missing_onnx_file_names_the_notebook_that_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.int8.onnx does not exist; run notebook 04_int8 first"):
        cache.build_engine(tmp_path / "model.int8.onnx", PROFILE, flavours.Flavour("tensorrt_rtx", "1.7"), "sm86")


def test_missing_plugin_names_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="silu_plugin"):
        cache.key_parts(models.conv(tmp_path / "m.onnx"), PROFILE, flavours.Flavour("tensorrt_rtx", "1.7"), "sm86",
                        [tmp_path / "libmissing.so"])


@needs_builder
def test_a_rerun_with_nothing_changed_builds_nothing(tmp_path, flavour, engines_dir, capsys):
    """The second build of the same inputs reuses the engine and adds nothing to the cache."""
    onnx_path = models.conv(tmp_path / "model.onnx")
    first = cache.build_engine(onnx_path, PROFILE, flavour, workspace_gb=1)
    assert first.status == "built" and cache.has_plan_header(first.plan, flavour.name)
    info = first.info
    assert info["profile"] == [1, 2, 4] and info["workspace_gb"] == 1.0 and info["strongly_typed"] is True
    assert info["tf32"] is False and info["profiling_verbosity"] == "DETAILED" and info["compute_precision"]
    before = sorted(p.name for p in engines_dir.iterdir())
    again = cache.build_engine(onnx_path, PROFILE, flavour, workspace_gb=1)
    assert again.status == "reused" and again.plan == first.plan and "reusing engine" in capsys.readouterr().out
    assert sorted(p.name for p in engines_dir.iterdir()) == before


@needs_builder
def test_a_new_engine_removes_only_the_entries_it_supersedes(tmp_path, flavour, engines_dir, capsys):
    """Same ONNX file/profile/target/flavour, new bytes: the old entry goes; nothing else does."""
    onnx_path = models.conv(tmp_path / "model.onnx")
    old = cache.build_engine(onnx_path, PROFILE, flavour, workspace_gb=1)
    (tmp_path / "variant").mkdir()
    twin = models.conv(tmp_path / "variant" / "model.onnx", seed=1)
    other_variant = cache.build_engine(twin, PROFILE, flavour, workspace_gb=1)  # same stem, another ONNX file
    foreign = engines_dir / (old.dir.name.rsplit("-", 1)[0] + "-0000000000000000")
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not the study's: no build.json")
    models.conv(onnx_path, doc="the model changed")
    new = cache.build_engine(onnx_path, PROFILE, flavour, workspace_gb=1)
    assert new.status == "built" and new.dir != old.dir
    assert not old.dir.exists() and f"removed {old.dir.name}" in capsys.readouterr().out
    assert other_variant.dir.exists() and foreign.exists() and new.dir.exists()


@needs_builder
def test_the_cache_report_and_prune(tmp_path, flavour, engines_dir):
    """`python -m mvlib.tensorrt cache` sizes every entry; --prune removes stale entries the study made."""
    gone = cache.build_engine(models.conv(tmp_path / "gone.onnx"), PROFILE, flavour, workspace_gb=1)
    kept = cache.build_engine(models.conv(tmp_path / "kept.onnx"), PROFILE, flavour, workspace_gb=1)
    (tmp_path / "gone.onnx").unlink()
    (engines_dir / "someone-elses").mkdir()
    text = cache.report()
    assert f"{gone.dir.name}  {tmp_path.name}/gone.onnx  [gone.onnx is gone]" in text and "MiB" in text
    assert ": 3 entries," in text.splitlines()[0]
    assert "someone-elses  [no build record" in text
    assert f"{kept.dir.name}  {tmp_path.name}/kept.onnx" in text  # the export folder names the variant
    pruned = cache.report(prune=True)
    assert "removed (gone.onnx is gone)" in pruned and "freed" in pruned
    assert ": 2 entries," in pruned.splitlines()[0] and "(1 removed," in pruned  # counts what remains
    assert not gone.dir.exists() and kept.dir.exists() and (engines_dir / "someone-elses").exists()


@needs_builder
@pytest.mark.parametrize("damage", ["truncate", "flip", "no_record", "bad_record", "no_layers"])
def test_a_corrupt_engine_is_rebuilt_and_the_table_and_console_say_so(tmp_path, flavour, engines_dir, capsys,
                                                                        damage):
    """Status `rebuilt`, the reason in messages, and one plain line on the console."""
    onnx_path = models.conv(tmp_path / "model.onnx")
    first = cache.build_engine(onnx_path, PROFILE, flavour, workspace_gb=1)
    plan, out = first.plan, first.dir
    if damage == "truncate":
        plan.write_bytes(plan.read_bytes()[:50])
    elif damage == "flip":
        data = bytearray(plan.read_bytes())
        data[1000] ^= 0xFF
        plan.write_bytes(bytes(data))
    elif damage == "no_record":
        (out / cache.BUILD_INFO).unlink()
    elif damage == "bad_record":
        (out / cache.BUILD_INFO).write_text("{ half a record")
    else:
        (out / cache.LAYERS).unlink()
    problem = cache.cache_problem(out)
    assert problem and problem != "not built yet"
    with pytest.raises(RuntimeError, match="cannot be used"):
        cache.load(plan)
    capsys.readouterr()
    rows = table.build_all("03_fp32_fp16", [table.EngineSpec("fp32", onnx_path)], PROFILE, flavour.name,
                           workspace_gb=1)
    printed = capsys.readouterr().out
    row = rows.iloc[0]
    assert row.status == "rebuilt" and row.messages.startswith(f"rebuilt: {problem}")
    assert table.rebuilt_line("03_fp32_fp16", "fp32", problem) in printed.splitlines()
    assert cache.cache_problem(out) is None and cache.has_plan_header(row.path, flavour.name)
    table.require_built(rows)  # a rebuilt engine is a usable one


@needs_builder
def test_a_model_the_parser_refuses_fails_with_its_words(tmp_path, flavour, engines_dir):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 8, 8])
    node = helper.make_node("NoSuchOpAnywhere", ["input"], ["logits"], domain="nowhere")
    model = onnxmodel.make_model(helper.make_graph([node], "g", [x], [y]),
                                 opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("nowhere", 1)])
    bad = tmp_path / "model.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(cache.BuildFailed) as err:
        cache.build_engine(bad, shapes.Profile(1, 1, 2), flavour)
    assert any(m.startswith("PARSER:") and "NoSuchOpAnywhere" in m for m in err.value.messages)
    rows = table.build_all("test", [table.EngineSpec("bad", bad)], shapes.Profile(1, 1, 2), flavour.name)
    assert rows["status"].tolist() == ["failed"] and "NoSuchOpAnywhere" in rows["messages"].iloc[0]
    with pytest.raises(AssertionError, match="bad"):
        table.require_built(rows)
    assert not any((p / cache.BUILD_INFO).exists() for p in engines_dir.iterdir() if p.is_dir())


def test_cache_command_line(tmp_path, monkeypatch):
    from mvlib.tensorrt import __main__ as cli
    monkeypatch.setattr(paths, "ENGINES", tmp_path)
    assert cli.main(["cache"]) == 0 and cli.main(["nonsense"]) == 2


@needs_builder
def test_a_build_that_hangs_fails_that_engine_not_the_notebook(tmp_path, flavour, engines_dir, monkeypatch):
    """A builder child that outlives its time is killed; build_all records the engine as failed and goes on."""
    monkeypatch.setattr(cache, "BUILD_TIMEOUT_S", 0.001)
    with pytest.raises(cache.BuildFailed, match="did not finish within"):
        cache.build_engine(models.conv(tmp_path / "model.onnx"), PROFILE, flavour, "sm86", workspace_gb=1)
    assert not any(engines_dir.glob("*/" + cache.BUILD_INFO))


def test_engine_key_has_the_wheels_cuda_major_and_full_tensorrts_gpu_model(tmp_path, monkeypatch):
    """An RTX plan of the cu13 wheel is INVALID under the cu12 wheel: the CUDA major is in the key. Full TensorRT
    times tactics on its GPU: an A10's plan is not an A40's (same sm86); RTX builds for the compute capability."""
    onnx_path = models.conv(tmp_path / "model.onnx")
    wheel, gpu = [("tensorrt-rtx-cu13", 13)], ["NVIDIA A10"]
    monkeypatch.setattr(flavours.Flavour, "wheel", lambda self: wheel[0])
    monkeypatch.setattr(cache.env, "gpu_info", lambda: {"gpu": gpu[0]})

    def key(fl):
        return cache.engine_key(onnx_path, cache.key_parts(onnx_path, PROFILE, fl, "sm86"))

    rtx, full = flavours.Flavour("tensorrt_rtx", "1.7.1.116"), flavours.Flavour("tensorrt", "10.16.0")
    rtx13, full_a10 = key(rtx), key(full)
    assert cache.key_parts(onnx_path, PROFILE, rtx, "sm86")["cuda_major"] == 13
    wheel[0] = ("tensorrt-rtx-cu12", 12)
    assert key(rtx) != rtx13
    wheel[0] = ("tensorrt-rtx-cu13", 13)
    gpu[0] = "NVIDIA A40"
    assert key(full) != full_a10 and key(rtx) == rtx13
    assert cache.key_parts(onnx_path, PROFILE, full, "sm86")["gpu"] == "NVIDIA A40"


def _runs_here(monkeypatch, verdicts):
    """A GPU the support matrix takes (8.6), the runtime's verdicts in order, and no inspection or JIT (the engine
    cannot really run here): what build_all and the JIT stage do with the verdicts is the subject."""
    from mvlib.tensorrt import layers, runner, timing
    for mod in (flavours, runner):
        monkeypatch.setattr(mod, "capability_here", lambda: "8.6")
    monkeypatch.setattr(runner.cudainfo, "driver_version", lambda: (13000, "test"))
    answers = iter(verdicts)
    monkeypatch.setattr(runner, "plan_validity", lambda fl, plan: next(answers))
    monkeypatch.setattr(layers, "ensure_inspected", lambda eng: True)
    monkeypatch.setattr(timing, "jit", lambda eng, plugins: {"jit": "measured"})


@needs_builder
def test_an_invalid_cached_plan_is_rebuilt_and_a_suboptimal_one_says_so(tmp_path, flavour, engines_dir,
                                                                         monkeypatch, capsys):
    """RTX's docs: an INVALID plan is rebuilt (here: VERSION_MISMATCH), not left "built, not run"; the rebuilt
    engine is the row, status rebuilt with the runtime's words. A SUBOPTIMAL verdict runs, and the row says it."""
    if not flavour.rtx:
        pytest.skip("the runtime's verdict on a plan is TensorRT-RTX's (get_engine_validity)")
    onnx_path = models.conv(tmp_path / "model.onnx")
    spec = [table.EngineSpec("fp32", onnx_path)]
    first = table.build_all("03_fp32_fp16", spec, PROFILE, flavour.name, "sm86", workspace_gb=1).iloc[0]
    assert first.status == "built" and pd.isna(first.validity)  # no GPU here: not judged
    built_bytes = (engines_dir / first.path.split("/")[-2] / cache.BUILD_INFO).read_text()
    invalid = (False, "TensorRT-RTX 1.7.1.116 says the engine is INVALID: VERSION_MISMATCH (built by another "
                      "TensorRT-RTX version: rebuild it)", True)
    _runs_here(monkeypatch, [invalid, (True, "", False), (True, "", False)])  # the build judges twice, the JIT once
    row = table.build_all("03_fp32_fp16", spec, PROFILE, flavour.name, "sm86", workspace_gb=1).iloc[0]
    assert row.status == "rebuilt" and row.messages.startswith(f"rebuilt: {invalid[1]}")
    assert row.validity == "VALID" and row.path == first.path
    assert table.measure_jit(pd.DataFrame([row])).jit[0] == "measured"  # the JIT stage, after the build
    assert (engines_dir / first.path.split("/")[-2] / cache.BUILD_INFO).read_text() != built_bytes
    assert "03_fp32_fp16: engine fp32: the cached engine could not be used" in capsys.readouterr().out
    subopt = "TensorRT-RTX 1.7.1.116 says the engine is SUBOPTIMAL: no diagnostic given"
    _runs_here(monkeypatch, [(True, subopt, False)])
    rows = table.build_all("03_fp32_fp16", spec, PROFILE, flavour.name, "sm86", workspace_gb=1)
    assert rows.iloc[0].status == "reused" and rows.iloc[0].validity == subopt
    assert subopt in table.describe(rows)
