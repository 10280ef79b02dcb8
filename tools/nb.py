"""Write a notebook from a list of (kind, source) cells: no outputs, one `parameters` cell.

An authoring helper with no command line, never part of a run. From the repository root:
    import sys; sys.path.insert(0, "tools"); import nb
    nb.write("notebooks/07_new.ipynb", [("md", "# 07 · ..."), ("code", "# parameters")])
"""
import nbformat


def write(path: str, cells: list[tuple[str, str]]) -> None:
    """Write cells as a clean notebook; a code cell whose source starts with '# parameters' is tagged."""
    nb = nbformat.v4.new_notebook()
    # what `ipykernel install` registers: JupyterLab marks a notebook with another kernelspec unsaved on opening
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            cell = nbformat.v4.new_code_cell(src)
            if src.startswith("# parameters"):
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
        cell["id"] = f"c{i:02d}"
    nbformat.validate(nb)
    nbformat.write(nb, path)
