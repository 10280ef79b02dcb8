"""What the driver's input check refuses before any work (issue 26, rows 6 and 7): a weights file that is no
PyTorch checkpoint, a checkpoint of another variant, and a variant the study does not run end to end. Each through
`python -m mvlib.study`, as a user meets it: exit 2, the reason once, no notebook started."""
import subprocess
import sys

import pytest
import torch

from mvlib import model, paths
from mvlib.driver import params


def _study(tmp_path, *args) -> subprocess.CompletedProcess:
    """The driver on the smoke profile into a fresh folder of tmp_path, with `args`."""
    return subprocess.run([sys.executable, "-m", "mvlib.study", "--profile", "smoke", "--tier", "cpu",
                           "--run-dir", str(tmp_path / "run"), *args],
                          cwd=paths.ROOT, capture_output=True, text=True, timeout=600)


def _refused_once(proc, words: str) -> str:
    """The one line naming `words` in a refusal of the driver (exit 2, no notebook started, nothing written)."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "-->" not in proc.stdout  # no notebook started
    lines = [ln for ln in out.splitlines() if words in ln]
    assert len(lines) == 1, out  # said once, not once per layer that saw it
    assert "weights_only" not in out and "Traceback" not in out  # never a hint to unpickle an untrusted file
    return lines[0]


def test_a_file_of_random_bytes_is_refused_as_no_checkpoint(tmp_path):
    junk = tmp_path / "weights.pth"
    junk.write_bytes(bytes(range(256)) * 64)
    _refused_once(_study(tmp_path, "-p", "weights", str(junk)), "not a PyTorch checkpoint")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_another_variant_is_refused_naming_its_variant(tmp_path):
    ckpt = tmp_path / "xxs.pth"
    torch.save(model.load_model("mobilevit_xxs", "random")[0].state_dict(), ckpt)
    line = _refused_once(_study(tmp_path, "-p", "variant", "mobilevit_s", "-p", "weights", str(ckpt)),
                         "a checkpoint of mobilevit_xxs")
    assert "not mobilevit_s" in line
    assert not (tmp_path / "run").exists()


def test_mobilevit_v2_is_refused_before_any_work(tmp_path):
    """v2 failed in notebook 04 after minutes; now the input check says so at once, and the help no longer offers it."""
    line = _refused_once(_study(tmp_path, "-p", "variant", "mobilevitv2_050", "-p", "weights", "random"),
                         "mobilevitv2_050")
    assert "not supported" in line and "mobilevit_xxs" in line
    assert "mobilevitv2" not in params.table()["variant"].meaning
    assert not any(v.startswith("mobilevitv2") for v in model.variants())


def test_a_checkpoint_that_matches_no_mobilevit_says_what_differs(tmp_path):
    ckpt = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, ckpt)
    with pytest.raises(ValueError, match="not a checkpoint of mobilevit_xxs nor of another MobileViT"):
        model.resolve_weights("mobilevit_xxs", str(ckpt))


def test_a_run_folder_nobody_can_write_is_one_line_not_a_traceback(tmp_path):
    """A folder no process can create (under /proc): the lock beside it fails, said in one line with the fix."""
    line = _refused_once(_study(tmp_path, "--run-dir", "/proc/mvlib-no-such-run"), "cannot write beside")
    assert "/proc/mvlib-no-such-run" in line and "--run-dir" in line


@pytest.mark.parametrize("value", ["-5", "0", "abc"])
def test_a_timeout_that_is_no_positive_number_of_seconds_is_refused(tmp_path, value):
    """--timeout -5 once ran the notebooks with no limit at all; now argparse refuses it, naming the option."""
    proc = _study(tmp_path, "--timeout", value)
    assert proc.returncode == 2 and "-->" not in proc.stdout
    assert "--timeout" in proc.stderr and "positive number of seconds" in proc.stderr
