"""Atomic writes: a run that dies half-way never leaves a file a later run would trust.

Written files get the permissions an ordinary `open(path, "w")` gives a new file (0666 less the umask:
0644 under the usual umask 022), not `tempfile.mkstemp`'s 0600, so results, figures, engines and
executed notebooks stay readable to other users, a web server or a container volume.

Serves: notebooks 01 to 06 and the driver: every file the study writes goes through it.
"""
import contextlib
import errno
import fcntl
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
    except OSError as err:
        if err.filename is None:  # a failed write() names no file: name the one being written (a full disk)
            err.filename = str(path)
        raise
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


# --- full disks --------------------------------------------------------------------------------------------------
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(err: BaseException) -> bool:
    """Whether `err` is a write refused for lack of space (a full disk or an exhausted quota)."""
    return isinstance(err, OSError) and err.errno in DISK_FULL


def mount_point(path: os.PathLike | str) -> Path:
    """The mount point of the file system that holds `path` (or would, for a path not made yet)."""
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def disk_line(err: OSError, what: str = "") -> str:
    """'no space left on /mnt/small (0 MiB free of 1 MiB) while writing <file>': a full disk in one line."""
    where = Path(err.filename) if err.filename else Path.cwd()
    mount = mount_point(where)
    try:
        import shutil
        usage = shutil.disk_usage(mount)
        free = f" ({usage.free / 2**20:.0f} MiB free of {usage.total / 2**20:.0f} MiB)"
    except OSError:
        free = ""
    cause = "no space left" if err.errno == errno.ENOSPC else "disk quota exceeded"
    return f"{cause} on {mount}{free} while writing {err.filename or what or 'a file'}"


# --- locks -------------------------------------------------------------------------------------------------------
class Busy(Exception):
    """Another process holds a lock; `holder` is what it wrote into the lock file (its PID and what it does)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def lock(path: os.PathLike | str, what: str = "", wait: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on the file `path` for the block: wait for it, or (wait=False) raise Busy at once.

    An flock(2) lock dies with the process holding it, so a lock left by a killed process never blocks anyone.
    The holder writes 'pid <PID>: <what>' into the file itself (not write-then-rename: the lock is on that inode)
    and empties it on release; the file stays, as removing it would let two processes lock two different files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, NEW_FILE_MODE)  # not inherited by children (O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(path, os.pread(fd, 4096, 0).decode(errors="replace").strip()) from None
        with contextlib.suppress(OSError):  # the note is for people; a full disk must not cost the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
