"""mvlib.progress: bars where someone watches, a few plain lines in a batch log."""
import pytest

from mvlib import progress


def test_progress_in_a_batch_log_is_a_few_plain_lines(monkeypatch, capsys):
    monkeypatch.setenv("MVLIB_PROGRESS", "lines")
    assert list(progress.progress(range(25), "sensitivity")) == list(range(25))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert 3 <= len(lines) <= progress.LINES_PER_LOOP + 1 and "\r" not in out
    assert lines[-1].startswith("sensitivity") and "25/25" in lines[-1]
    assert list(progress.progress(range(3), "measure", lines=False)) == [0, 1, 2]
    assert capsys.readouterr().out == ""  # loops that print their own line per step get nothing extra
    assert list(progress.progress(iter(range(2)), "unsized")) == [0, 1]
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("unsized") and "2" in last


def test_progress_modes(monkeypatch, capsys):
    monkeypatch.setenv("MVLIB_PROGRESS", "off")
    assert list(progress.progress(range(3), "x")) == [0, 1, 2] and capsys.readouterr().out == ""
    monkeypatch.setenv("MVLIB_PROGRESS", "bar")
    bar = progress.progress(range(3), "x")
    assert type(bar).__module__.startswith("tqdm") and list(bar) == [0, 1, 2]
    monkeypatch.setenv("MVLIB_PROGRESS", "loud")
    with pytest.raises(ValueError, match="bar, lines, off"):
        progress.mode()
    monkeypatch.delenv("MVLIB_PROGRESS")
    assert progress.mode() == "lines"  # pytest captures stderr: no terminal, no kernel
