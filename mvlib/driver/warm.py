"""Kernels started ahead: the next notebook's kernel starts, and imports what that notebook imports, while the
notebook before it runs; papermill then runs the notebook in that kernel as in one it started itself.

Why: a notebook's kernel takes about 3 s to start and its import cell 4 to 5 s (PyTorch, timm, onnx, pandas),
about 45 s of a 190 s smoke run on 2 cores, spent with one core busy. The warm-up runs the notebook's own
top-level import statements, and the question every notebook's first cell asks (PRIMERS), inside a function
(so it binds no name a cell could use before importing it), silently (no execution count: the notebook's cells
are still numbered from 1), and logs what it prints to the notebook's kernel log. A warm-up that fails, or a
kernel that died, is shut down and papermill starts a kernel of its own: the notebook's import cell then says
what failed, where a reader looks for it. A notebook that times anything (ahead.TIMED) warms no kernel during
it, so no timed window shares the machine with a warm-up. `MVLIB_WARM_KERNELS=0` turns it off.

Serves: the driver (kernels.execute).
"""
import ast
import datetime
import importlib.metadata
import json
import os
import queue
import re
import time
from pathlib import Path

from mvlib import paths
from mvlib.driver.ahead import TIMED

ENV = "MVLIB_WARM_KERNELS"
# What nbclient adds to the command of the kernels it starts: IPython keeps its history in memory, so the study
# writes no history database into the user's ~/.ipython.
HISTORY = "--HistoryManager.hist_file=:memory:"
POLL_S = 1.0  # how often a wait for the warm-up checks that the kernel still lives


# nbclient makes a client for a kernel it did not start from 0.6.6 (jupyter/nbclient#241; before, a notebook given
# one failed); jupyter_client 8 starts kernels through jupyter_core's run_sync, as this module does.
NEEDS = {"nbclient": (0, 6, 6), "jupyter_client": (8, 0, 0)}


def release(version: str) -> tuple[int, ...]:
    """(0, 6, 6) for '0.6.6' (a pre-release's suffix dropped: '8.0.0rc1' is (8, 0, 0))."""
    return tuple(int(re.match(r"\d*", part).group() or 0) for part in version.split(".")[:3])


def too_old(version=importlib.metadata.version) -> str:
    """Which of NEEDS is older than warm kernels need ('' if none)."""
    old = [f"{name} {version(name)}" for name, least in NEEDS.items() if release(version(name)) < least]
    return ", ".join(old)


def wanted(environ=os.environ) -> bool:
    """Whether to warm kernels ahead: unless MVLIB_WARM_KERNELS=0, or nbclient or jupyter_client is too old."""
    return environ.get(ENV, "1") != "0" and not too_old()


def warms_during(stem: str) -> bool:
    """Whether the next notebook's kernel may warm up while notebook `stem` runs (not during a timed one)."""
    return stem not in TIMED


def imports(nb: Path) -> list[str]:
    """The top-level import statements of a notebook's code cells, in order (cells of magics are left out)."""
    found = []
    for cell in json.loads(Path(nb).read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:  # %%bash, a line magic: IPython's syntax, not Python's
            continue
        found += [ast.unparse(node) for node in tree.body
                  if isinstance(node, ast.Import) or isinstance(node, ast.ImportFrom) and node.module != "__future__"]
    return found


# Run after the notebook's imports: what every notebook's first cell asks (Run -> tiers.detect), which imports PyTorch
# (2 s) where the notebook's own imports do not; its answer is cached for the kernel's life, as it would be there.
PRIMERS = ["from mvlib import env", "env.cuda_status()"]


def warm_code(statements: list[str]) -> str:
    """The warm-up: the import statements, then PRIMERS, run inside a function, which binds no name in the
    notebook's namespace."""
    body = "".join(f"    {s}\n" for s in [*statements, *PRIMERS])
    return f"def _mvlib_warm_up():\n{body}\n\n_mvlib_warm_up()\ndel _mvlib_warm_up\n"


class Warm:
    """One notebook's kernel, started now with `manager_class` (kernels.kernel_manager: the run's environment and
    log) and sent the notebook's imports; `adopting()` waits for them and hands the kernel to papermill."""

    def __init__(self, nb: Path, manager_class, log: Path):
        from jupyter_core.utils import run_sync
        code = warm_code(imports(nb))  # before the kernel starts: a notebook that cannot be read starts none
        self.log, self.adopted, self.kc = log, False, None
        self.began = datetime.datetime.now(datetime.timezone.utc)  # the kernel's reply is dated in UTC
        self.km = manager_class(kernel_name="python3")
        run_sync(self.km.start_kernel)(extra_arguments=[HISTORY], cwd=str(paths.NOTEBOOKS))
        try:
            self.kc = self.km.blocking_client()
            self.kc.start_channels(stdin=False, hb=False, control=False)
            self.msg_id = self.kc.execute(code, silent=True, store_history=False)
        except BaseException:
            self.close()
            raise

    def alive(self) -> bool:
        """Whether the kernel process still runs."""
        from jupyter_core.utils import run_sync
        return bool(run_sync(self.km.is_alive)())

    def reply(self, timeout: float) -> dict | None:
        """The warm-up's execute_reply message, or None: the kernel died, or no reply within `timeout` s."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            try:
                msg = self.kc.get_shell_msg(timeout=POLL_S)
            except queue.Empty:
                if not self.alive():
                    return None
                continue
            if msg["parent_header"].get("msg_id") == self.msg_id:
                return msg
        return None

    def printed(self) -> str:
        """What the warm-up wrote to stdout and stderr (warnings of the imports), from the iopub messages so far."""
        text = []
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                return "".join(text)
            if msg["parent_header"].get("msg_id") == self.msg_id and msg["msg_type"] == "stream":
                text.append(msg["content"].get("text", ""))

    def note(self, text: str) -> None:
        """Append `text` to the notebook's kernel log; a full disk names that file (the driver says it in one line)."""
        try:
            with open(self.log, "a") as out:
                out.write(text)
        except OSError as err:
            if err.filename is None:  # a failed write() names no file
                err.filename = str(self.log)
            raise

    def adopting(self, timeout: float):
        """A kernel manager class for papermill that hands it this kernel once its imports are done (nbclient
        then starts none, and shuts this one down when the notebook ends, as its own); None where the warm-up
        failed or the kernel died, after shutting it down, so that papermill starts a kernel of its own."""
        msg = self.reply(timeout)
        content = msg["content"] if msg else None
        took = f" in {(msg['header']['date'] - self.began).total_seconds():.1f} s" if msg else ""
        self.note(self.printed() + f"[mvlib] kernel warmed ahead{took}: {(content or {}).get('status', 'no reply')}\n")
        self.kc.stop_channels()
        if not content or content.get("status") != "ok":
            self.close()
            return None
        self.adopted = True
        km = self.km

        class Adopting(type(km)):
            def __new__(cls, *args, **kwargs):  # nbclient "creates" its kernel manager: this one, started already
                return km
        return Adopting

    def close(self) -> None:
        """Shut the kernel down if it still runs: one nobody took (an interrupted or failed run), or one papermill
        took but failed before it ran a cell (papermill shuts down the kernels it ran, and then this does nothing).
        Safe to call again."""
        from jupyter_core.utils import run_sync
        if self.kc is not None and self.kc.channels_running:
            self.kc.stop_channels()
        if self.adopted and not self.km.has_kernel:
            return
        try:
            if self.km.has_kernel and self.alive():
                run_sync(self.km.shutdown_kernel)(now=True)
        finally:
            run_sync(self.km.cleanup_resources)()
