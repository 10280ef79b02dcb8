"""mvlib.run: a notebook's run context: stage outcomes recorded with what a skipped stage needed."""
from mvlib import io
from mvlib.run import Run
from mvlib.skips import StageSkipped


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
