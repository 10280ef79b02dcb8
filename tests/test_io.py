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


# --- locks: two studies at once ----------------------------------------------------------------------------------
def test_a_lock_held_by_another_process_is_busy_naming_it_and_free_once_it_dies(tmp_path):
    """wait=False refuses at once, naming the holder's PID and job; the lock of a killed holder blocks nobody."""
    import subprocess
    import sys
    path = tmp_path / ".run.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"from mvlib import io; import time\n"
                               f"with io.lock({str(path)!r}, 'building run'):\n    print('held', flush=True)\n"
                               "    time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(io.Busy) as busy, io.lock(path, "a second run", wait=False):
            pass
        assert busy.value.holder == f"pid {holder.pid}: building run"
    finally:
        holder.kill()  # SIGKILL: nothing of the holder's runs, the kernel drops its lock
        holder.wait()
    with io.lock(path, "a second run", wait=False):
        assert path.read_text() == f"pid {os.getpid()}: a second run\n"
    assert path.read_text() == ""  # released: nobody named as holding it


def test_a_waiting_lock_goes_on_once_the_holder_lets_go(tmp_path):
    """wait=True blocks while another holder has the lock (a thread here: each lock is its own open file)."""
    path, order = tmp_path / ".entry.lock", []
    held, release = threading.Event(), threading.Event()

    def first():
        with io.lock(path, "first"):
            held.set()
            release.wait(60)
            order.append("first done")
    t = threading.Thread(target=first)
    t.start()
    held.wait(60)
    def second():
        with io.lock(path, "second"):
            order.append("second in")
    waiter = threading.Thread(target=second)
    waiter.start()
    waiter.join(0.5)
    assert order == [] and waiter.is_alive()  # still waiting: not in before the holder let go
    release.set()
    t.join(60)
    waiter.join(60)
    assert order == ["first done", "second in"]


def test_two_builds_of_one_engine_at_once_build_it_once(tmp_path, monkeypatch):
    """Two runs asking for the same engine at once (threads here; processes lock the same way): one builds it with
    the real builder, the other waits for the entry's lock and reuses what it built."""
    import tensorrt_models as models

    from mvlib import paths
    from mvlib.tensorrt import cache, flavours, shapes
    ok, why = flavours.builder_status()
    if not ok:
        pytest.skip(f"no TensorRT builder: {why}")
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    onnx_path = models.conv(tmp_path / "model.onnx")
    got = []

    def build():
        got.append(cache.build_engine(onnx_path, shapes.Profile(1, 2, 4), flavours.select(), workspace_gb=1))
    builders = [threading.Thread(target=build) for _ in range(2)]
    for t in builders:
        t.start()
    for t in builders:
        t.join(600)
    assert sorted(e.status for e in got) == ["built", "reused"] and got[0].plan == got[1].plan
