"""Atomic writes: a run that dies half-way never leaves a file a later run would trust."""
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: os.PathLike | str, data: bytes) -> Path:
    """Write bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: os.PathLike | str, text: str) -> Path:
    """Write text atomically."""
    return write_bytes(path, text.encode())


def write_json(path: os.PathLike | str, obj: Any) -> Path:
    """Write JSON atomically, keys sorted so diffs between runs stay readable."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: os.PathLike | str) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def write_csv(path: os.PathLike | str, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def save_figure(fig, path: os.PathLike | str, dpi: int = 130) -> Path:
    """Save a matplotlib figure atomically (PNG by the path's suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)
