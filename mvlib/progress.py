"""Progress for long loops: a bar where someone watches, a readable log where nobody does.

    for item in progress(items, "calibration"):
        ...

How it shows depends on where the loop runs (MVLIB_PROGRESS overrides: bar, lines or off):

- JupyterLab (an IPython kernel with ipywidgets): tqdm's widget bar in the cell's output.
- A terminal: tqdm's text bar on stderr.
- Anything else, and the batch driver (`python -m mvlib.study` sets MVLIB_PROGRESS=lines for its
  papermill kernels): no bar, whose carriage returns would fill the log; instead one plain line
  `<desc>: k/n (elapsed s)` about every tenth of the loop, or nothing where the loop prints its own
  line per step (`lines=False`).

Serves: notebooks 03 to 06 (engine builds, calibration, sensitivity, benchmark loops) and the driver's logs.
"""
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
MODES = ("bar", "lines", "off")
ENV = "MVLIB_PROGRESS"
LINES_PER_LOOP = 10  # at most about this many plain lines per loop in a batch log


def _in_kernel() -> bool:
    """Whether this runs inside an IPython kernel (a notebook), not a terminal IPython or plain Python."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _widgets() -> bool:
    """Whether ipywidgets can draw tqdm's notebook bar (without it tqdm warns 'IProgress not found')."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def mode() -> str:
    """How progress shows here: 'bar', 'lines' or 'off' (MVLIB_PROGRESS, else from the surroundings)."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted:
        if wanted not in MODES:
            raise ValueError(f"{ENV}={wanted!r}: use one of {', '.join(MODES)}")
        return wanted
    if _in_kernel():
        return "bar"
    stream = sys.stderr
    return "bar" if stream is not None and hasattr(stream, "isatty") and stream.isatty() else "lines"


def _bar(iterable: Iterable[T], desc: str, total: int | None, unit: str):
    """tqdm's notebook bar in a kernel with ipywidgets, its text bar elsewhere."""
    if _in_kernel() and _widgets():
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=True, dynamic_ncols=True)


def _lines(iterable: Iterable[T], desc: str, total: int | None, out=None) -> Iterator[T]:
    """One plain line about every tenth of the loop (every step of a short one), and one at the end."""
    out = out or sys.stdout
    every = max(1, math.ceil(total / LINES_PER_LOOP)) if total else 1
    start, k = time.perf_counter(), 0
    for k, item in enumerate(iterable, 1):
        yield item
        if k % every == 0 or k == total:
            print(f"{desc}: {k}/{total if total else '?'} ({time.perf_counter() - start:.0f} s)", file=out, flush=True)
    if total is None or k != total:  # an unsized or cut-short loop still says where it stopped
        print(f"{desc}: {k} done ({time.perf_counter() - start:.0f} s)", file=out, flush=True)


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             lines: bool = True) -> Iterable[T]:
    """`iterable`, with progress shown the way `mode()` says.

    `lines=False` is for loops that already print a line per step: in a batch log they get no extra lines.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    how = mode()
    if how == "bar":
        return _bar(iterable, desc, total, unit)
    if how == "lines" and lines:
        return _lines(iterable, desc, total)
    return iterable
