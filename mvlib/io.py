"""Atomic writes: a run that dies half-way never leaves a file a later run would trust.

Written files get the permissions an ordinary `open(path, "w")` gives a new file (0666 less the umask:
0644 under the usual umask 022), not `tempfile.mkstemp`'s 0600, so results, figures, engines and
executed notebooks stay readable to other users, a web server or a container volume.

Serves: notebooks 01 to 06 and the driver: every file the study writes goes through it.
"""
import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

NEW_FILE_MODE = 0o666  # what open() asks for; the kernel takes the umask off


def _create_beside(path: Path) -> Path:
    """Create a new, empty, uniquely named file beside `path` with an ordinary open's permissions."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The file that lands on `path` is a new file with the umask's permissions (as `open()` would make it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_beside(path)
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


# --- hashes and the one reuse-or-make cache ---------------------------------------------------------------------
def checksum(path: os.PathLike | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in chunks (another algorithm only where a publisher gives one, e.g. MD5)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256(path: os.PathLike | str) -> str:
    """SHA-256 of a file's bytes: the study's one file hash."""
    return checksum(path, "sha256")


def digest(obj: Any) -> str:
    """SHA-256 of a JSON-able key, stable across runs (keys sorted; paths and other objects as str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def key_path(path: os.PathLike | str) -> Path:
    """Where `cached` keeps the key of what made `path`: `<path>.key.json` beside it."""
    return Path(f"{path}.key.json")


def _normal(key: dict) -> Any:
    """The key as it reads back from JSON (tuples become lists, paths strings), so a stored key compares equal."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def stored_record(path: os.PathLike | str) -> dict | None:
    """What `make` returned when `cached` made `path` (None when it returned nothing or there is no key)."""
    try:
        return read_json(key_path(path)).get("record")
    except (OSError, ValueError, AttributeError):
        return None


def cached(path: os.PathLike | str, key: dict, make: Callable[[Path], Any], what: str) -> tuple[Path, bool]:
    """Reuse `path` if the key stored beside it matches `key` and its bytes are the ones recorded, else make it.

    `make(tmp)` writes the file into a temporary path beside `path`; it is renamed onto `path` only when `make`
    returns, and the key (with the file's SHA-256 and whatever dict `make` returned, see `stored_record`) is
    written last, so a half-made file is never reused. Returns (path, reused) and prints one line saying which.
    """
    path, meta = Path(path), key_path(path)
    want = _normal(key)
    try:
        saved = read_json(meta)
        if path.is_file() and saved.get("key") == want and saved.get("sha256") == sha256(path):
            print(f"reusing {path} ({what}: same {', '.join(sorted(want))})")
            return path, True
    except (OSError, ValueError, AttributeError):
        pass
    meta.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        made = make(tmp)
    entry = {"key": want, "sha256": sha256(path)}
    if isinstance(made, dict):
        entry["record"] = made
    write_json(meta, entry)
    print(f"made {path} ({what})")
    return path, False
