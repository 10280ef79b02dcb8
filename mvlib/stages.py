"""Which notebook makes which artifact: the registry a skip's `needs` is resolved against (a leaf module).

A stage that cannot run because an input is missing raises `StageSkipped(reason, needs=(artifact, ...))` (or
`missing(path)` below, which writes the reason too); the driver asks `producer()` which notebook makes each
needed artifact, so a run that left that notebook out (`--only`) reports the skip as the selection's doing.
Artifacts are named by file name; notebooks by stem (notebooks/<stem>.ipynb), so a notebook is found by its
name and never by a number in code.

The notebooks' parameters are read one way, as papermill reads them (`parameters`).

Serves: the driver (`--only`, what a skip needs) and notebooks 01 to 06 (a missing input names its notebook).
"""
from pathlib import Path

from mvlib import paths, precisions
from mvlib.skips import StageSkipped

EXPORT, GRAPH, FP32_FP16, QUANTIZED, PLUGIN, BENCHMARK = (
    "01_export", "02_graph", "03_fp32_fp16", "04_int8", "05_silu_plugin", "06_benchmark")

# What other notebooks read, by the notebook that makes it: files of the model's folder (build/models/<key>/), of
# the plugin build (build/silu_plugin/) and tables of the run folder (results/). Each precision's ONNX file and its
# SiLU-plugin rewrite come from the table of precisions, so a new precision needs no line here.
PRODUCERS: dict[str, str] = {
    **{p.artifact: p.notebook for p in precisions.TABLE.values()},
    **{p.plugin_artifact: PLUGIN for p in precisions.TABLE.values() if p.plugin_artifact},
    "model.silu.onnx": GRAPH,  # notebook 05 makes it too, where 02 did not run
    "reference_inputs.json": EXPORT, "reference_outputs.json": EXPORT, "01_export_accuracy.csv": EXPORT,
    "03_accuracy.csv": FP32_FP16,
    "model.int8.json": QUANTIZED, "model.fp8.json": QUANTIZED,  # why that policy was chosen, or why none
    "04_int8_accuracy.csv": QUANTIZED, "04_int8_trt_accuracy.csv": QUANTIZED, "04_fp8_trt_accuracy.csv": QUANTIZED,
    "labelled images": QUANTIZED,  # the evaluation images with ImageNet labels that notebook 04 loads
    "onnxrt_reference_outputs.json": PLUGIN, "05_plugin_accuracy.csv": PLUGIN,
    "libmv_silu.so": PLUGIN, "libmv_silu_plugin.so": PLUGIN, "libmv_silu_plugin_dynamic.so": PLUGIN,
    "mv_silu_plugin_check": PLUGIN, "build_info.json": PLUGIN,
    "06_benchmark.csv": BENCHMARK, "06_accuracy.csv": BENCHMARK,
}


def producer(artifact: str | Path) -> str:
    """The stem of the notebook that makes `artifact` (a file name or path); ValueError naming the known ones."""
    name = Path(artifact).name if isinstance(artifact, Path) or "/" in str(artifact) else str(artifact)
    if name not in PRODUCERS:
        raise ValueError(f"no notebook is registered as making {name!r}: add it to mvlib.stages.PRODUCERS "
                         f"(known: {', '.join(sorted(PRODUCERS))})")
    return PRODUCERS[name]


def made_by(artifact: str | Path) -> str:
    """'notebook 04_int8 makes it': the clause a message about a missing input ends with."""
    return f"notebook {producer(artifact)} makes it"


def missing(artifact: str | Path, fix: str = "") -> StageSkipped:
    """The skip for a missing input: '<name> not found (notebook <stem> makes it)', needing that artifact."""
    name = Path(artifact).name
    return StageSkipped(f"{name} not found ({made_by(name)}{'; ' + fix if fix else ''})", needs=(name,))


def short(stem: str) -> str:
    """How a notebook is named in folder names and `--only`: its stem up to the first '_' ('01' for 01_export)."""
    return stem.split("_", 1)[0]


def all_notebooks() -> list[Path]:
    """Every notebook of the study, in the order they run: by file name (a new one is named to sort into place)."""
    return sorted(nb for nb in paths.NOTEBOOKS.glob("*.ipynb") if not nb.name.startswith("."))


def _notebook(notebook: str | Path) -> Path | None:
    """A notebook's file: `notebook` is a stem of notebooks/ or a path (None where there is no such notebook)."""
    path = notebook if isinstance(notebook, Path) else paths.NOTEBOOKS / f"{notebook}.ipynb"
    return path if path.is_file() else None


def parameters(notebook: str | Path) -> dict[str, dict] | None:
    """papermill's reading of a notebook's `parameters` cell: name -> {default (source text), help (the line's
    comment), ...}; `notebook` is a stem of notebooks/ or a path (None where there is no such notebook)."""
    path = _notebook(notebook)
    if path is None:
        return None
    import papermill  # here: slow to import, and only runs and the driver ask
    return papermill.inspect_notebook(str(path))


def parameter_names(notebook: str | Path) -> list[str] | None:
    """The names a notebook's `parameters` cell assigns, in order, read with `ast` (what `parameters` gives, without
    importing papermill and nbformat: seconds in every notebook's first cell); None where there is no notebook."""
    path = _notebook(notebook)
    if path is None:
        return None
    import ast
    import json
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    source = next(("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), "")
    names = [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign | ast.AnnAssign)
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]
    return list(dict.fromkeys(names))


def select(only: str = "") -> list[Path]:
    """The notebooks in order, or those `only` names by stem or short name ('01,02', '1,2', '01_export');
    ValueError naming the notebooks there are."""
    found = all_notebooks()
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    if not only:
        return found
    picked, unknown = set(), []
    for w in wanted:
        match = [nb for nb in found if w in (nb.stem, short(nb.stem)) or (w.isdigit() and short(nb.stem) == w.zfill(2))]
        picked.update(match) if match else unknown.append(w)
    if unknown or not wanted:
        raise ValueError(f"{', '.join(unknown) or 'nothing'} names no notebook; the notebooks are "
                         + ", ".join(nb.stem for nb in found))
    return [nb for nb in found if nb in picked]
