"""Calibrating ahead: notebook 04's calibrations (ModelOpt INT8 and FP8, each method, the fixed policies) made in a
child process while notebooks 02 and 03 run, so that 04 finds every one made and starts judging at once.

Why: the calibrations are 04's longest stage (on an H100, 155 s of its 278 s), work on the CPU cores that needs
only the exported model and the calibration images, while 02 and 03 time nothing. The child calls what 04 calls
(`quant.calibrate_all` on `data.load`'s images, from the parameters 04 is given), so its files are `quantize`'s
own, under the same cache keys: 04 reuses them, byte for byte what it would have made. The child runs at normal
priority (it is on the run's path; compiling ahead is the child that yields), and the driver waits for it before 04
starts, so nothing calibrates twice or beside it. A calibration the child could not make is made (or fails) in 04
as before; the child's log says why. Only where there are cores to share (`MIN_CORES`); `MVLIB_CALIBRATE_AHEAD=0`
turns it off.

Serves: the driver (kernels.execute).
"""
import json
import os
import sys
from pathlib import Path

from mvlib.driver import ahead

NOTEBOOK = "04_int8"
# 04's parameters that decide its calibrations: the exported model and the calibration images
PARAMS = ("variant", "weights", "seed", "img_size", "opset", "calib_images", "eval_images", "image_dir")
MIN_CORES = 4  # on fewer, the child would take the cores 02 and 03 run on


def wanted(environ=os.environ, cores: int | None = None) -> bool:
    """Whether to calibrate ahead: at least MIN_CORES cores for this process, unless MVLIB_CALIBRATE_AHEAD=0."""
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    return cores >= MIN_CORES and environ.get("MVLIB_CALIBRATE_AHEAD", "1") != "0"


class CalibrateAhead(ahead.Child):
    """The calibrate-ahead child of one run: started after FIRST, waited for before 04, stopped on exit."""
    module = "mvlib.driver.calibrate"
    variable = "MVLIB_CALIBRATE"
    until = (NOTEBOOK,)
    did = "calibrated ahead"

    def __init__(self, params: dict | None, log: Path):
        super().__init__(log)
        self.params = params

    def payloads(self) -> list[dict]:
        """04's calibration parameters, for one process ([] when 04 is not in the run)."""
        return [{"params": self.params}] if self.params is not None else []

    def announce(self) -> str:
        """The start line."""
        return f"calibrating {NOTEBOOK}'s models ahead"

    def finished(self) -> dict:
        """Each model the child made or found (file, status, seconds), from the last line of its log."""
        return {"calibrations": calibrations(self.log)}


def calibrations(log: Path) -> list[dict]:
    """The calibration rows the child printed last into `log` ([] when it printed none: it failed before)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in reversed(lines):
        if line.startswith('{"calibrations"'):
            return json.loads(line)["calibrations"]
    return []


def plan(selected: list[Path], params: dict, run: Path, enabled: bool) -> CalibrateAhead:
    """The run's calibrate-ahead (nothing to do where not `enabled` or 04 is not selected)."""
    from mvlib.driver.params import defaults
    log = run / "logs" / "calibrate_ahead.log"
    if not enabled or NOTEBOOK not in [nb.stem for nb in selected]:
        return CalibrateAhead(None, log)
    values = defaults() | params  # the parameters 04 will see
    return CalibrateAhead({k: values[k] for k in PARAMS}, log)


def calibrate(params: dict) -> int:
    """In the child: 04's export, images and calibrations, as 04 makes them; 0 if every calibration was made."""
    from mvlib import data, export, quant
    exported, model = export.ensure_exported(params["variant"], str(params["weights"]), params["img_size"],
                                             params["opset"], params["seed"])
    images = data.load(model, params["img_size"], params["calib_images"], params["eval_images"], params["seed"],
                       params["image_dir"])
    table = quant.calibrate_all(exported, images.calib)
    print(table.to_string(), flush=True)
    print(json.dumps({"calibrations": table[["file", "status", "seconds"]].to_dict("records")}), flush=True)
    return 1 if (table["status"] == "failed").any() else 0


def main() -> int:
    """The child's entry: its parameters come in MVLIB_CALIBRATE (JSON: {'params', 'driver'})."""
    payload = json.loads(os.environ["MVLIB_CALIBRATE"])
    ahead.orphaned(payload["driver"])
    return calibrate(payload["params"])


if __name__ == "__main__":
    sys.exit(main())
