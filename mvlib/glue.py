"""Notebook glue written once: the blocks notebooks 01 to 06 would otherwise each repeat.

`export` is every notebook's first stage (the exported model, made or reused, and the weights in the manifest);
`record_engines` is what notebooks 03, 04 and 05 do with the engines their build stages return.

Serves: notebooks 01 to 06 (export); 03, 04 and 05 (record_engines).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mvlib import export as export_mod
from mvlib.tensorrt import table as engines_table

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from mvlib.run import Run


def export(run: Run, variant: str, weights: str, img_size: int, opset: int,
           seed: int) -> tuple[export_mod.Exported, torch.nn.Module]:
    """The run's exported model (made or reused) and the PyTorch model; the manifest records the weights used."""
    exported, model = run.stage("export", "cpu", export_mod.ensure_exported, variant, weights, img_size, opset, seed)
    run.set("weights", exported.weights)
    return exported, model


def record_engines(run: Run, *tables: pd.DataFrame | None) -> pd.DataFrame | None:
    """The engines of a notebook's build stages (None: skipped) as one record of the engines table, shown, and
    required to be built; None when every build stage was skipped.

    One record, because it replaces all of this notebook's rows of the engines table.
    """
    import pandas as pd
    from IPython.display import Markdown, display
    built = [t for t in tables if t is not None]
    if not built:
        return None
    engines = pd.concat(built, ignore_index=True)
    engines_table.record(run, engines)
    display(Markdown(engines_table.describe(engines)))
    engines_table.require_built(engines)
    return engines
