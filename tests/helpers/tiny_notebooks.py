"""Tiny notebooks of code cells, for the tests that run the driver's kernels on them."""
from pathlib import Path

import nbformat


def notebook(path: Path, *cells: str) -> Path:
    """A notebook of code cells, the first tagged `parameters`."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, str(path))
    return path
