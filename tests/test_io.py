"""mvlib.io: the one file hash, the stable key digest and the one reuse-or-make cache."""
import hashlib
import json
import os
import stat
import threading

import pandas as pd
import pytest

from mvlib import figures, io


def test_sha256_is_the_hash_of_the_bytes_read_in_chunks(tmp_path):
    data = bytes(range(256)) * 9000  # over one 1 MiB chunk
    f = io.write_bytes(tmp_path / "f.bin", data)
    assert io.sha256(f) == hashlib.sha256(data).hexdigest()
    assert io.checksum(f, "md5") == hashlib.md5(data).hexdigest()


def test_digest_is_stable_and_order_free():
    assert io.digest({"a": 1, "b": [1, 2]}) == io.digest({"b": [1, 2], "a": 1})
    assert io.digest({"a": 1}) != io.digest({"a": 2})
    assert io.digest({"p": (1, 2)}) == io.digest({"p": [1, 2]})  # what JSON reads back compares equal


def _maker(calls, text="made"):
    def make(tmp):
        calls.append(tmp)
        tmp.write_text(text)
        return {"note": text}
    return make


def test_cached_makes_then_reuses_with_the_same_key(tmp_path, capsys):
    calls = []
    path, reused = io.cached(tmp_path / "m.onnx", {"seed": 1, "shape": (2, 3)}, _maker(calls), "test model")
    assert (path.read_text(), reused, len(calls)) == ("made", False, 1)
    assert calls[0] != path and not calls[0].exists()  # made into a temporary file, renamed onto the path
    assert io.stored_record(path) == {"note": "made"}
    path, reused = io.cached(tmp_path / "m.onnx", {"shape": [2, 3], "seed": 1}, _maker(calls), "test model")
    assert reused and len(calls) == 1
    assert "reusing" in capsys.readouterr().out.splitlines()[-1]


def test_cached_remakes_on_a_changed_key_or_changed_bytes(tmp_path):
    calls = []
    target = tmp_path / "m.bin"
    io.cached(target, {"seed": 1}, _maker(calls), "x")
    _, reused = io.cached(target, {"seed": 2}, _maker(calls, "two"), "x")
    assert not reused and target.read_text() == "two"
    target.write_text("edited by hand")
    _, reused = io.cached(target, {"seed": 2}, _maker(calls, "two"), "x")
    assert not reused and target.read_text() == "two" and len(calls) == 3


def test_cached_leaves_nothing_behind_when_make_fails(tmp_path):
    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("builder died")
    with pytest.raises(RuntimeError, match="builder died"):
        io.cached(tmp_path / "m.bin", {"seed": 1}, broken, "x")
    assert list(tmp_path.iterdir()) == []


def test_cached_never_reuses_a_file_whose_key_went_missing(tmp_path):
    calls = []
    target = tmp_path / "m.bin"
    io.cached(target, {"seed": 1}, _maker(calls), "x")
    io.key_path(target).unlink()
    _, reused = io.cached(target, {"seed": 1}, _maker(calls), "x")
    assert not reused and len(calls) == 2
    assert json.loads(io.key_path(target).read_text())["sha256"] == io.sha256(target)


# --- written files get an ordinary write's permissions; writes are atomic ------------------------------------
def _write_everything(folder) -> list:
    """One file through each mvlib.io writer."""
    fig, ax = figures.new(size=(2, 2))
    ax.plot([0, 1])
    return [io.write_bytes(folder / "a.bin", b"\0\1"), io.write_text(folder / "b.txt", "b"),
            io.write_json(folder / "c.json", {"c": 1}), io.write_csv(folder / "d.csv", pd.DataFrame({"d": [1]})),
            io.save_figure(fig, folder / "e.png")]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umasks_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        written = _write_everything(tmp_path)
        with open(tmp_path / "plain.txt", "w") as f:  # what an ordinary write gives
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json", "d.csv", "e.png", "plain.txt"]


def test_rewriting_a_private_file_makes_it_readable(tmp_path):
    """A private (0600) result becomes readable when a run writes it again: the umask decides, not the old mode."""
    target = tmp_path / "table.csv"
    target.write_text("old")
    target.chmod(0o600)
    old = os.umask(0o022)
    try:
        io.write_text(target, "new")
    finally:
        os.umask(old)
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) & 0o044 == 0o044


def test_atomic_writes_of_one_file_from_threads_do_not_collide(tmp_path):
    target = tmp_path / "t.txt"
    threads = [threading.Thread(target=io.write_text, args=(target, str(i) * 1000)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = target.read_text()
    assert len(text) == 1000 and len(set(text)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "table.csv"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
