"""mvlib.driver.verdicts: what a manifest says: stages that fail its tier, skips the selection or the machine caused."""
from mvlib import io, tiers
from mvlib.driver import verdicts
from mvlib.run import Run
from mvlib.skips import StageSkipped


def test_stage_problems_follow_the_expected_tier():
    manifest = {"stages": {
        "01/a": {"tier": "cpu", "status": "ok", "reason": ""},
        "03/engine": {"tier": "trt", "status": "skipped", "reason": "TensorRT not installed"},
        "05/kernel": {"tier": "gpu", "status": "skipped", "reason": "no CUDA GPU"},
    }}
    assert verdicts.stage_problems(manifest, "cpu") == []
    assert [p.split(":")[0] for p in verdicts.stage_problems(manifest, "gpu")] == ["05/kernel"]
    assert len(verdicts.stage_problems(manifest, "trt")) == 2
    manifest["stages"]["01/a"]["status"] = "failed"
    assert verdicts.stage_problems(manifest, "cpu")[0].startswith("01/a: failed")


def test_engine_builds_fail_the_run_on_a_machine_with_a_builder_whatever_its_tier():
    manifest = {"stages": {
        "03/engines": {"tier": "build", "status": "skipped", "reason": "no TensorRT builder", "no_builder": True},
        "05/plugin_engines": {"tier": "build", "status": "skipped", "reason": "the TensorRT plugin was not built"},
        "04/engines": {"tier": "build", "status": "ok", "reason": ""},
    }}
    for tier in ("cpu", "gpu", "trt"):
        assert [p.split(":")[0] for p in verdicts.stage_problems(manifest, tier)] == ["05/plugin_engines"]
    manifest["stages"]["04/engines"]["status"] = "failed"
    assert len(verdicts.stage_problems(manifest, "cpu")) == 2


def test_an_fp8_stage_skipped_on_a_gpu_without_fp8_does_not_fail_the_gpu_tier(tmp_path, monkeypatch):
    """An 8.6 GPU reaches the gpu tier but has no FP8 tensor cores: its FP8 skip is the hardware's, not a problem."""
    from mvlib import fp8
    monkeypatch.setattr(tiers, "missing_for", lambda tier, *trt: "")  # a machine that reaches every tier
    run = Run(tmp_path / "r", "99_test")

    def fp8_row():
        ok, why = fp8.has_fp8("8.6")
        raise fp8.NoFP8(f"FP8 PyTorch row: {why}")
    assert run.stage("torch_fp8", "gpu", fp8_row) is None
    manifest = io.read_json(run.manifest_path)
    entry = manifest["stages"]["99_test/torch_fp8"]
    assert entry["status"] == "skipped" and entry["no_fp8_hardware"] is True and "no_builder" not in entry
    assert "8.6 has no FP8 tensor cores" in entry["reason"]
    assert verdicts.stage_problems(manifest, "gpu") == verdicts.stage_problems(manifest, "trt") == []
    del entry["no_fp8_hardware"]  # any other skip of a gpu stage on a gpu-tier run still fails it
    assert [p.split(":")[0] for p in verdicts.stage_problems(manifest, "gpu")] == ["99_test/torch_fp8"]


INT8_REASON = "model.int8.onnx not found in /b/models/x (notebook 04_int8 makes it)"


def _selection_manifest(notebooks: list[str]) -> dict:
    return {"run": {"notebooks": notebooks}, "stages": {
        "06_benchmark/pytorch_cpu": {"tier": "cpu", "status": "ok", "reason": ""},
        "06_benchmark/onnxruntime_cpu_int8": {"tier": "cpu", "status": "skipped", "reason": INT8_REASON,
                                              "needs": ["model.int8.onnx"]},
        "06_benchmark/tensorrt_fp32": {"tier": "trt", "status": "skipped", "reason": "TensorRT not installed"},
        "05_silu_plugin/kernel_check": {"tier": "gpu", "status": "skipped", "reason": "no CUDA GPU"},
    }}


def test_only_reports_skips_of_left_out_inputs_as_such():
    m = _selection_manifest(["01_export.ipynb", "02_graph.ipynb", "06_benchmark.ipynb"])
    assert verdicts.stage_problems(m, "cpu") == []
    (skip,) = verdicts.selection_skips(m)
    assert skip.startswith("06_benchmark/onnxruntime_cpu_int8") and "input made by 04, not selected" in skip
    line = next(x for x in verdicts.summary(m).splitlines() if "onnxruntime_cpu_int8" in x)
    assert "04" in line and "not selected" in line and "model.int8.onnx" in line  # the cause, then the reason
    # other skips still count where the tier demands them
    assert [p.split(":")[0] for p in verdicts.stage_problems(m, "trt")] == ["05_silu_plugin/kernel_check",
                                                                       "06_benchmark/tensorrt_fp32"]


def test_the_same_skip_with_its_maker_selected_is_a_tier_failure():
    m = _selection_manifest(["01_export.ipynb", "04_int8.ipynb", "06_benchmark.ipynb"])
    assert [p.split(":")[0] for p in verdicts.stage_problems(m, "cpu")] == ["06_benchmark/onnxruntime_cpu_int8"]
    assert verdicts.selection_skips(m) == []
    m = _selection_manifest([])
    del m["run"]  # no selection recorded: every notebook counts as run
    assert len(verdicts.stage_problems(m, "cpu")) == 1


def test_a_skip_is_attributed_by_its_needs_never_by_its_text():
    m = _selection_manifest(["06_benchmark.ipynb"])
    del m["stages"]["06_benchmark/onnxruntime_cpu_int8"]["needs"]  # the reason still names notebook 04
    assert len(verdicts.stage_problems(m, "cpu")) == 1 and verdicts.selection_skips(m) == []
    m = _selection_manifest(["06_benchmark.ipynb"])
    m["stages"]["06_benchmark/onnxruntime_cpu_int8"]["needs"] = ["04"]  # a manifest from before needs named files
    assert verdicts.stage_problems(m, "cpu") == [] and len(verdicts.selection_skips(m)) == 1


class NoNvcc(StageSkipped):
    """How a stage says nvcc is missing (mvlib.silu.build.NoCompiler carries the same mark)."""
    no_compiler = True


def test_a_missing_nvcc_is_the_machines_lack_not_a_missing_builder(tmp_path):
    """Without nvcc the plugin cannot be compiled: its build stages are skipped as the machine's lack, recorded as
    no_compiler (not no_builder), and do not fail a run that reached its tier."""
    run = Run(tmp_path / "r", "05_silu_plugin")

    def plugin_engines():
        raise NoNvcc("nvcc not found: the SiLU plugin cannot be compiled on this machine (install the CUDA toolkit)")
    run.stage("plugin_engines", tiers.BUILDER, plugin_engines)
    run.stage("build", "cpu", plugin_engines)
    manifest = io.read_json(run.manifest_path)
    entry = manifest["stages"]["05_silu_plugin/plugin_engines"]
    assert entry["no_compiler"] is True and "no_builder" not in entry
    assert verdicts.stage_problems(manifest, "cpu") == []
    for stage in manifest["stages"].values():
        del stage["no_compiler"]  # the same skips without the mark: a build stage and a cpu stage that failed
    assert len(verdicts.stage_problems(manifest, "cpu")) == 2


def test_the_time_line_names_the_waits_for_the_children():
    """The run's total holds the waits for the children, which no notebook's seconds do: the line says them."""
    timing = {"total_s": 680.1, "notebooks_s": {"01_export": 13.1, "04_int8": 128.1},
              "calibrate_ahead": {"waited_s": 103.6}, "compile_ahead": {"waited_s": 0.0}}
    assert verdicts.timing_lines({"timing": timing}) == \
        "time: 680 s in all (01 13 s, 04 128 s; waited 104 s for calibrating ahead)"
    assert verdicts.timing_lines({"timing": {"total_s": 5}}) == "time: 5 s in all"
