"""The driver in the test's own process, with papermill's execution replaced (a seam of ours, not TensorRT's).

Each fake notebook opens its Run as the real ones do, records the weights it would load, and may copy tables
into its run or fail; the driver around it (validation, folders, decisions, manifest, comparison, publish) is real.
"""
import os
from pathlib import Path

import papermill

from mvlib import io, model, study
from mvlib.run import Run


def fake_notebooks(monkeypatch, fail: str = "", tables: dict | None = None, interrupt: str = "") -> dict:
    """Replace notebook execution; the parameters each notebook got, by notebook stem.

    `fail`: the stem of a notebook that fails in a cell; `interrupt`: one where the user presses Ctrl-C;
    `tables`: {stem: [csv paths]} a notebook writes into its run's results (copies, e.g. of the committed tables).
    """
    got = {}

    def execute(nb, out, parameters, **kw):
        stem = Path(nb).stem
        got[stem] = dict(parameters) | {"MVLIB_PROGRESS": os.environ.get("MVLIB_PROGRESS")}
        run = Run(parameters["run_dir"], stem, params=dict(parameters))
        run.set("weights", model.random_info(parameters["seed"]) if parameters["weights"] == "random" else
                {"source": parameters["weights"]})
        for src in (tables or {}).get(stem, []):
            io.write_bytes(run.table(Path(src).name), Path(src).read_bytes())
        if stem == interrupt:
            raise KeyboardInterrupt
        if stem == fail:
            raise papermill.PapermillExecutionError(3, 3, "x = 1 / 0", "ZeroDivisionError", "division by zero", [])
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(study, "expose_tensorrt_libraries", lambda decision: None)  # keep this process's environment
    monkeypatch.setenv("MVLIB_PROGRESS", "")
    monkeypatch.delenv("MVLIB_PROGRESS")
    return got
