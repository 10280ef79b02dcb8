"""mvlib.io: the one file hash, the stable key digest and the one reuse-or-make cache."""
import hashlib
import json

import pytest

from mvlib import io


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
