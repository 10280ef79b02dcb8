"""Executing the selected notebooks with papermill: kernels that log to the run, what failed in which cell.

Serves: the driver (each notebook of a run goes through it).
"""
import argparse
import os
import re
import signal
import sys
import time
from pathlib import Path

from mvlib import io, paths
from mvlib.driver import ahead, calibrate, warm
from mvlib.driver.params import declared

_KERNELS: list = []  # kernel managers of this process's notebooks, to stop their kernels on Ctrl-C
WARM_UP_LIMIT_S = 600  # the longest a notebook waits for its warm kernel's imports (without --timeout)


def kernel_manager(log: Path):
    """A kernel manager class whose kernels run in the driver's environment (its interpreter: `kernel_command`; the
    build folder and this checkout: `paths.child_environment`) and write their own output (not the notebook's) into
    `log`.

    A kernel's process writes warnings of its own to its stderr (ipykernel's "running over TCP without
    encryption", "KeyboardInterrupt caught in kernel" when it is shut down mid-message, ONNX Runtime's C++ log
    with colour codes): the run's log keeps them, the console stays for what a user needs.
    """
    from jupyter_client.manager import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            env = paths.child_environment(kw.get("env"))
            with open(log, "ab") as out:  # the kernel holds its own copy of the descriptor
                await super()._async_launch_kernel(kernel_command(kernel_cmd),
                                                   **(kw | {"stdout": out, "stderr": out, "env": env}))
            _KERNELS.append(self)
    return LoggedKernelManager


def kernel_command(cmd: list[str]) -> list[str]:
    """The `python3` kernelspec's command run by the driver's own interpreter: a kernelspec of that name from
    another environment (installed for the system or the user, which Jupyter finds before this one's) would run
    the notebooks with other packages than the ones the manifest records, or without mvlib."""
    if len(cmd) >= 3 and cmd[1] == "-m" and cmd[2] in ("ipykernel_launcher", "ipykernel"):
        return [sys.executable, *cmd[1:]]
    return list(cmd)


def _process(km):
    """The process of a kernel manager's kernel (None before it starts or once it is cleaned up)."""
    return getattr(getattr(km, "provisioner", None), "process", None)


def log_of(run: Path, nb: Path) -> Path:
    """The log a notebook's kernel writes into (kernel_manager)."""
    return run / "logs" / f"{nb.stem}.log"


def stop_kernels() -> None:
    """Kill what the run's kernels still run (each kernel leads a process group of its own), once interrupted, and
    the shared blocks a calibration so killed leaves."""
    while _KERNELS:
        proc = _process(_KERNELS.pop())
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    from mvlib import calib_speed
    calib_speed.sweep()  # only blocks of processes that no longer run


def cell_failure(executed: Path, err: Exception) -> dict:
    """What failed in an executed notebook: the cell, its first line, and its own error text (a script's stderr)."""
    import nbformat
    if hasattr(err, "ename"):  # papermill's error for a cell that raised: its count, source and exception
        report = {"cell": err.exec_count, "source": (err.source or "").splitlines()[0] if err.source else "",
                  "error": f"{err.ename}: {err.evalue}"}
    else:  # a dead kernel, a timeout
        report = {"cell": None, "source": "", "error": f"{type(err).__name__}: {err}".strip()}
    try:
        nb = nbformat.read(str(executed), as_version=4)
    except (OSError, ValueError):
        return report
    for cell in nb.cells:
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if not errors:
            continue
        stderr = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream"
                         and o.get("name") == "stderr")
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        evalue = str(errors[0].get("evalue", ""))
        # %%bash: "Command 'b'<the whole cell as bytes>'' returned non-zero exit status 2." says only the status
        status = re.search(r"returned non-zero exit status (\d+)", evalue)
        own = (f"the cell's script exited with status {status.group(1)}" if status and evalue.startswith("Command")
               else f"{errors[0].get('ename')}: {evalue}")
        report = {"cell": cell.get("execution_count"), "source": cell.source.splitlines()[0] if cell.source else "",
                  "error": "\n".join(lines[-12:] + [f"({own})" if lines else own])}
        break
    return report


def partial_of(executed: Path) -> Path:
    """Where papermill writes an executed notebook while it runs: a hidden name beside the notebook's own."""
    return executed.with_name(f".{executed.stem}.partial{executed.suffix}")


def settle(partial: Path, executed: Path) -> None:
    """Give the notebook papermill wrote its own name if it is a whole notebook; remove it if it is not.

    Papermill rewrites its output after every cell, so a full disk can cut it short: a truncated notebook never
    takes the name of an executed one (write then rename, as every file of a run).
    """
    import nbformat
    try:
        nbformat.read(str(partial), as_version=4)
    except Exception:  # absent, or cut short: not valid JSON, not a notebook
        partial.unlink(missing_ok=True)
        return
    os.replace(partial, executed)


def papermill_into(nb: Path, executed: Path, **kw) -> None:
    """papermill.execute_notebook into a partial file, renamed to `executed` once whole (also when a cell failed)."""
    import papermill
    partial = partial_of(executed)
    try:
        papermill.execute_notebook(str(nb), str(partial), **kw)
    finally:
        settle(partial, executed)


def execute(selected: list[Path], params: dict, run: Path, args: argparse.Namespace, state: dict,
            compile_ahead: bool = False, calibrate_ahead: bool = False) -> list[dict]:
    """Run the selected notebooks with papermill; a report per notebook that failed (stops at the first unless
    --keep-going). `state` says which notebook is running (for an interruption) and, under `seconds`, how long
    each one took. A full disk is raised, not a notebook's failure: the driver says it in one line.

    With `compile_ahead`, the timed notebooks' torch.compile configurations compile in a child meanwhile
    (mvlib.driver.ahead); with `calibrate_ahead`, notebook 04's calibrations are made in another
    (mvlib.driver.calibrate). `state['compile_ahead']` and `state['calibrate_ahead']` say how long each took and
    was waited for."""
    with ahead.plan(selected, params, run, compile_ahead) as compiling, \
            calibrate.plan(selected, params, run, calibrate_ahead) as calib:
        state["compile_ahead"], state["calibrate_ahead"] = compiling.state, calib.state
        return _execute(selected, params, run, args, state, [compiling, calib])


def _execute(selected: list[Path], params: dict, run: Path, args: argparse.Namespace, state: dict,
             children: list[ahead.Child]) -> list[dict]:
    """execute's loop; the next notebook's kernel warms up during each one that times nothing (mvlib.driver.warm)."""
    failed: list[dict] = []
    warmed = taken = None
    try:
        for i, nb in enumerate(selected):
            for child in children:
                child.before(nb.stem)
            state.update(notebook=nb.stem, start=time.perf_counter())  # a wait for its warm kernel is its time
            manager = kernel_manager(log_of(run, nb))
            if warmed is not None:  # its imports are done by now, as a rule; else this waits for them
                taken, warmed = warmed, None
                manager = taken.adopting(args.timeout or WARM_UP_LIMIT_S) or manager
            if warm.wanted() and warm.warms_during(nb.stem) and i + 1 < len(selected):
                warmed = _warm(selected[i + 1], run)
            try:
                report = _run_one(nb, params, run, args, state, manager)
            finally:
                if taken is not None:  # papermill shut it down, unless it failed before running a cell
                    taken.close()
                    taken = None
            if report is not None:
                failed.append(report)
                if not args.keep_going:
                    return failed
    finally:
        for left in (warmed, taken):
            if left is not None:
                left.close()
    state["notebook"] = None
    return failed


def _warm(nb: Path, run: Path):
    """Notebook `nb`'s kernel warming up (mvlib.driver.warm), or None where it could not start: papermill then
    starts the notebook's kernel itself, as without warming (a full disk is raised: the driver says it)."""
    log = log_of(run, nb)
    try:
        return warm.Warm(nb, kernel_manager(log), log)
    except Exception as err:
        if io.disk_full(err):
            raise
        print(f"    {nb.stem}'s kernel was not warmed ahead ({type(err).__name__}: {err}); papermill starts it",
              file=sys.stderr)
        return None


def _run_one(nb: Path, params: dict, run: Path, args: argparse.Namespace, state: dict, manager) -> dict | None:
    """One notebook through papermill with kernel manager class `manager` (its time counted from `state['start']`);
    the failure's report, None if it ran."""
    wanted = declared(nb)
    nb_params = {k: v for k, v in params.items() if k in wanted}
    nb_params["run_dir"] = str(run)
    print(f"--> {nb.name} ({', '.join(f'{k}={v}' for k, v in sorted(nb_params.items()) if k != 'run_dir')})")
    executed, log = run / "notebooks" / nb.name, log_of(run, nb)
    _forget_ended()
    try:
        papermill_into(nb, executed, parameters=nb_params, cwd=str(paths.NOTEBOOKS), kernel_name="python3",
                       execution_timeout=args.timeout, progress_bar=False, kernel_manager_class=manager)
    except Exception as err:  # a cell's error, a dead kernel, a timeout: the run failed in this notebook
        if io.disk_full(err):
            raise
        took(state, nb.stem)
        report = {"notebook": nb.stem} | cell_failure(executed, err)
        where = f" in cell [{report['cell']}] `{report['source']}`" if report["cell"] is not None else ""
        print(f"study: {nb.name} failed{where}:\n    " + report["error"].replace("\n", "\n    ")
              + f"\n  executed notebook: {executed}\n  kernel log: {log}", file=sys.stderr)
        return report
    print(f"    done in {took(state, nb.stem):.0f} s")
    return None


def _forget_ended() -> None:
    """Drop the kernels that have ended (papermill shut the previous notebook's down) from those stop_kernels kills."""
    _KERNELS[:] = [km for km in _KERNELS if _process(km) is not None and _process(km).poll() is None]


def took(state: dict, stem: str) -> float:
    """Record the wall seconds of the notebook that just ended in `state['seconds']`; those seconds."""
    seconds = time.perf_counter() - state["start"]
    state.setdefault("seconds", {})[stem] = round(seconds, 1)
    return seconds


def record_failures(manifest: dict, failures: list[dict]) -> None:
    """A failed stage for each notebook that failed outside its stages (a `%%bash` cell, say), with the error."""
    for f in failures:
        own = [k for k, st in manifest.get("stages", {}).items()
               if k.startswith(f["notebook"] + "/") and st["status"] == "failed"]
        if not own:
            manifest.setdefault("stages", {})[f"{f['notebook']}/cell_{f['cell']}"] = {
                "tier": "cpu", "status": "failed", "reason": f["error"].splitlines()[0] if f["error"] else "",
                "error": f["error"], "cell": f["cell"], "source": f["source"]}
