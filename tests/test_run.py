"""mvlib.run: a notebook's run context: stage outcomes recorded with what a skipped stage needed."""
import pytest
from driver_fakes import RTX_REFUSES, fake_h100_with_both_flavours

from mvlib import io, tiers
from mvlib.run import Run
from mvlib.skips import StageSkipped
from mvlib.tensorrt import flavours


def test_run_records_what_a_skipped_stage_needed(tmp_path):
    run = Run(tmp_path / "r", "06_benchmark")

    def needs_int8():
        raise StageSkipped("no INT8 model", needs="model.int8.onnx")
    run.stage("explicit", "cpu", needs_int8)
    run.stage("unrelated", "cpu", lambda: (_ for _ in ()).throw(StageSkipped("nothing to do")))
    stages = io.read_json(run.manifest_path)["stages"]
    assert stages["06_benchmark/explicit"] | {"needs": ["model.int8.onnx"], "status": "skipped",
                                              "reason": "no INT8 model"} == stages["06_benchmark/explicit"]
    assert "needs" not in stages["06_benchmark/unrelated"]


def test_run_records_the_parameters_cell_from_globals(tmp_path):
    names = {"variant": "mobilevit_xs", "batch_max": 8, "run_dir": "x", "pd": object(), "not_a_param": 3}
    run = Run(tmp_path / "r", "01_export", params=names)
    recorded = io.read_json(run.manifest_path)["params"]["01_export"]
    assert recorded == {"variant": "mobilevit_xs", "batch_max": 8}  # declared names only, run_dir left out


def test_a_missing_builder_is_recorded_as_such(tmp_path):
    run = Run(tmp_path / "r", "99_test")

    def no_builder():
        raise flavours.NoBuilder("no TensorRT builder: TensorRT-RTX not installed")
    assert run.stage("engines", "build", no_builder) is None
    entry = io.read_json(run.manifest_path)["stages"]["99_test/engines"]
    assert entry["tier"] == "build" and entry["status"] == "skipped" and entry["no_builder"] is True


def test_run_records_ok_skipped_failed(tmp_path):
    run = Run(tmp_path / "r", "99_test", params={"x": 1})
    assert run.stage("fine", "cpu", lambda a: a + 1, 1) == 2

    def skip():
        raise StageSkipped("no images")
    assert run.stage("skips", "cpu", skip) is None
    with pytest.raises(ZeroDivisionError):
        run.stage("breaks", "cpu", lambda: 1 / 0)
    stages = io.read_json(run.manifest_path)["stages"]
    assert stages["99_test/fine"]["status"] == "ok"
    assert stages["99_test/skips"] == {"tier": "cpu", "status": "skipped", "reason": "no images"}
    assert stages["99_test/breaks"]["status"] == "failed" and "ZeroDivisionError" in stages["99_test/breaks"]["reason"]


@pytest.mark.skipif(tiers.detect() != "cpu", reason="checks the skip path of a CPU-only machine")
def test_gpu_stage_is_skipped_with_reason_on_cpu(tmp_path):
    run = Run(tmp_path / "r", "99_test")
    assert run.stage("kernel", "gpu", lambda: pytest.fail("must not run")) is None
    entry = io.read_json(run.manifest_path)["stages"]["99_test/kernel"]
    assert entry["status"] == "skipped" and entry["reason"]


def test_run_records_weights_as_the_driver_decided(tmp_path):
    from mvlib import model
    plain = Run(tmp_path / "a", "99_test")
    plain.set("weights", model.random_info(0))
    assert "fallback_reason" not in io.read_json(plain.manifest_path)["weights"]
    decided = {"requested": "auto", "chosen": "random", "fallback": True, "reason": "hub down",
               "label": model.random_info(0, "hub down")["label"]}
    io.write_json(tmp_path / "b" / "manifest.json", {"run": {"weights": decided}, "stages": {}, "params": {}})
    run = Run(tmp_path / "b", "99_test")
    run.set("weights", model.random_info(0))
    assert io.read_json(run.manifest_path)["weights"] == model.random_info(0, "hub down")


def test_a_notebooks_tier_follows_its_tensorrt_flavour(tmp_path, monkeypatch):
    """On a GPU only full TensorRT runs, a notebook given trt_flavour tensorrt_rtx is tier gpu and skips trt stages
    saying why; without the parameter it follows the driver's decision in the manifest, else 'auto'."""
    fake_h100_with_both_flavours(monkeypatch)
    try:
        rtx = Run(tmp_path / "rtx", "06_benchmark", params={"trt_flavour": "tensorrt_rtx"})
        assert rtx.tier == "gpu" and rtx.stage("engine_timing", "trt", lambda: 1) is None
        assert rtx.skip_reason("engine_timing").endswith(RTX_REFUSES)
        assert Run(tmp_path / "rtx", "01_export").tier == "gpu"  # no parameter: the manifest's (here: 06's) choice
        io.write_json(tmp_path / "drv" / "manifest.json", {"run": {"tensorrt": {"trt_flavour": "tensorrt_rtx"}},
                                                          "params": {}, "stages": {}})
        assert Run(tmp_path / "drv", "01_export").tier == "gpu"
        assert Run(tmp_path / "auto", "06_benchmark", params={"trt_flavour": "auto"}).tier == "trt"
    finally:
        for cached in (tiers.detect, tiers.runtime_status):
            cached.cache_clear()


def test_a_notebook_run_alone_with_another_configuration_starts_a_fresh_folder(tmp_path, capsys):
    """papermill or nbconvert into one folder (build/runs/latest by default): 02 with another variant than the 01
    there says so, sets that run aside as <folder>.previous and starts afresh; the same configuration joins it."""
    latest = tmp_path / "latest"
    Run(latest, "01_export", params={"variant": "mobilevit_xxs", "weights": "random", "img_size": 256})
    Run(latest, "02_graph", params={"variant": "mobilevit_xxs", "weights": "random", "img_size": 256})
    assert sorted(io.read_json(latest / "manifest.json")["params"]) == ["01_export", "02_graph"]
    capsys.readouterr()
    Run(latest, "02_graph", params={"variant": "mobilevit_s", "weights": "random", "img_size": 256})
    out = capsys.readouterr().out
    assert "held a run of another configuration: variant='mobilevit_s' (01_export ran with 'mobilevit_xxs')" in out
    assert f"that run is now {tmp_path / 'latest.previous'}" in out
    assert list(io.read_json(latest / "manifest.json")["params"]) == ["02_graph"]
    assert sorted(io.read_json(tmp_path / "latest.previous" / "manifest.json")["params"]) == ["01_export",
                                                                                             "02_graph"]


def test_weights_auto_and_the_drivers_random_share_one_export(xxs, capsys):
    """Offline, weights='auto' falls back to the seeded random weights the driver hands its notebooks ('random'):
    the same export, reused, not made again under another key."""
    from mvlib import export
    exported, _ = export.ensure_exported("mobilevit_xxs", "auto", 256, 17, seed=0)
    assert exported.onnx == xxs[0].onnx and exported.weights.get("fallback_reason")
    assert f"reusing {exported.onnx}" in capsys.readouterr().out
