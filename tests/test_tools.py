"""The evidence tools in tools/: the stage table of two runs, the window agreement table (on the CPU row)."""
import importlib.util
import json
import subprocess
import sys

import pytest

from mvlib import paths


def _tool(name: str):
    """Import tools/<name>.py (tools/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", paths.ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest(total: float, books: dict, stages: dict) -> dict:
    """A hand-written manifest: the driver's timing and the stages' records."""
    return {"timing": {"total_s": total, "notebooks_s": books},
            "stages": {name: ({"status": "ok", "seconds": s} if s is not None else
                              {"status": "skipped", "reason": "no GPU"}) for name, s in stages.items()}}


BEFORE = _manifest(100.0, {"01_export": 20.0, "04_int8": 70.0},
                   {"01_export/export": 5.0, "01_export/verify_onnxrt": 10.0, "04_int8/calibrations": 50.0,
                    "04_int8/images": 8.0, "04_int8/gone": 2.0})
AFTER = _manifest(60.0, {"01_export": 18.0, "04_int8": 35.0, "06_benchmark": 4.0},
                  {"01_export/export": 5.0, "01_export/verify_onnxrt": 9.0, "04_int8/calibrations": 20.0,
                   "04_int8/images": 8.5, "06_benchmark/cpu": None})


def test_stage_table_sorts_by_the_before_seconds_and_totals(tmp_path):
    st = _tool("stage_table")
    (tmp_path / "before").mkdir()
    (tmp_path / "before" / "manifest.json").write_text(json.dumps(BEFORE))
    (tmp_path / "after.json").write_text(json.dumps(AFTER))
    table = st.rows(st.load(tmp_path / "before"), st.load(tmp_path / "after.json"))
    assert [r["name"] for r in table] == [
        "04_int8", "04_int8/calibrations", "04_int8/images", "04_int8/gone",
        "01_export", "01_export/verify_onnxrt", "01_export/export",
        "06_benchmark", "06_benchmark/cpu", "all stages", "run (timing.total_s)"]
    by = {r["name"]: r for r in table}
    assert (by["04_int8/gone"]["after_s"], by["06_benchmark/cpu"]["after_s"]) == (None, None)
    assert (by["all stages"]["before_s"], by["all stages"]["after_s"]) == (75.0, 42.5)
    assert (by["run (timing.total_s)"]["before_s"], by["run (timing.total_s)"]["after_s"]) == (100.0, 60.0)
    md = st.markdown(table).splitlines()
    assert md[0].startswith("| notebook / stage | before s | after s |") and len(md) == 2 + len(table)
    assert "| **04_int8** | 70.0 | 35.0 | -35.0 | -50 % |" in md
    assert "| &nbsp;&nbsp;calibrations | 50.0 | 20.0 | -30.0 | -60 % |" in md
    assert "| &nbsp;&nbsp;gone | 2.0 | - | - | - |" in md
    assert md[-1] == "| **run (timing.total_s)** | 100.0 | 60.0 | -40.0 | -40 % |"


def test_stage_table_command_prints_the_table_or_one_line_why_not(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(BEFORE))
    (tmp_path / "b.json").write_text(json.dumps(AFTER))
    tool = str(paths.ROOT / "tools" / "stage_table.py")
    ok = subprocess.run([sys.executable, tool, str(tmp_path / "a.json"), str(tmp_path / "b.json")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "| **01_export** | 20.0 | 18.0 | -2.0 | -10 % |" in ok.stdout
    bad = subprocess.run([sys.executable, tool, str(tmp_path / "a.json"), str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "cannot read a manifest" in bad.stderr


@pytest.mark.parametrize("value", [True, "3", None])
def test_stage_table_reads_only_numbers_as_seconds(value):
    st = _tool("stage_table")
    assert st.stage_seconds({"stages": {"01_export/x": {"seconds": value}}}) == {"01_export/x": None}
