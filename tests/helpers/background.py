"""The suite's background job (tests/conftest.py starts it at collection): the smoke run of the study, then, where
a selected test asks for it, the smoke run's notebooks again with every code cell twice in one kernel.

Both go on beside the fast tests, on the core they leave idle, instead of after them in the pytest process. The job
exits with the smoke run's code; the twice-run's outcome is `TWICE_RESULT` ({notebook: error}, seconds), which the
twice_run fixture reads (tests/test_notebooks.py). Run as `python background.py RUN [--twice]` with MVLIB_BUILD set
to the smoke build.
"""
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import smoke

from mvlib import io, paths, stages

TWICE_DIR = smoke.BUILD / "twice"  # the doubled notebooks, their outputs and their run folder
TWICE_RESULT = TWICE_DIR / "result.json"
# Notebooks 03 and 04 re-run every cell at the cost of their whole smoke run again (AutoCast, ModelOpt, judging:
# together about as long as the rest of the suite's smoke run), which would take `make test` past its 20 minutes;
# their rerun hazards are the static check's (test_a_cell_run_again_does_not_read_its_own_result), which found
# both of theirs (03 cell 9, 04 cells 10 and 12).
TWICE = [nb.stem for nb in stages.all_notebooks() if stages.short(nb.stem) not in ("03", "04")]


def doubled(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook with each code cell run twice in a row: a copy follows it, untagged. The `parameters` cell's copy
    goes before it, as papermill puts the injected parameters right after the tagged cell."""
    cells = []
    for cell in notebook.cells:
        again = nbformat.v4.new_code_cell(cell.source)
        again["id"] = f"{cell.get('id', len(cells))}-again"
        tagged = "parameters" in cell.get("metadata", {}).get("tags", [])
        cells += ([again, cell] if tagged else [cell, again]) if cell.cell_type == "code" else [cell]
    return nbformat.v4.new_notebook(cells=cells, metadata=notebook.metadata)


def twice(smoke_run: Path, work: Path = TWICE_DIR) -> dict:
    """The smoke run's notebooks executed again in order, one kernel each, every code cell twice in a row, with the
    smoke run's parameters and build folder (its models and engines are reused) into `work`/run; written to
    `work`/result.json as {"errors": {notebook: error}, "seconds": {notebook: s}}."""
    import papermill
    shutil.rmtree(work, ignore_errors=True)  # the last session's: this one's must be made now
    work.mkdir(parents=True)
    run, errors, seconds = work / "run", {}, {}
    for name in TWICE:
        executed = nbformat.read(smoke_run / "notebooks" / f"{name}.ipynb", as_version=4)
        params = dict(executed.metadata.papermill.parameters) | {"run_dir": str(run)}
        source = work / f"{name}.ipynb"
        nbformat.write(doubled(nbformat.read(paths.NOTEBOOKS / f"{name}.ipynb", as_version=4)), source)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(str(source), str(work / f"{name}.out.ipynb"), parameters=params,
                                       cwd=str(paths.NOTEBOOKS), kernel_name="python3", progress_bar=False,
                                       execution_timeout=900)
        except Exception as err:  # a cell that fails the second time, a dead kernel
            errors[name] = f"{type(err).__name__}: {err}"[-3000:]
        seconds[name] = round(time.perf_counter() - start)
    result = {"errors": errors, "seconds": seconds}
    io.write_json(work / TWICE_RESULT.name, result)  # atomic: the fixture never reads half a file
    print(f"every cell twice, seconds per notebook: {seconds}", flush=True)
    return result


def main(argv: list[str]) -> int:
    """The smoke run into `argv[0]`; then the twice-run if `--twice` is given and the smoke run completed."""
    run = Path(argv[0])
    code = subprocess.call([sys.executable, "-m", "mvlib.study", "--profile", "smoke", "--tier", "cpu",
                            "--run-dir", str(run)], cwd=paths.ROOT)  # never publishes: that takes --publish
    if code == 0 and "--twice" in argv[1:]:
        twice(run)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
