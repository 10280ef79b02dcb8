"""`python -m mvlib.tensorrt build|jit|libdir|cache|wheel ...`: the command line of the TensorRT package.

Serves: notebooks 03 to 06 (the build and JIT children run through it) and `make lab` (libdir).
"""
import ctypes
import os
import signal
import sys

PARENT_ENV = "MVLIB_PARENT_PID"  # set by the study for the children it starts (cache.build, timing.jit_env)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

USAGE = """usage: python -m mvlib.tensorrt COMMAND
  build SPEC.json RESULT.json    build one engine (the child process the study starts)
  jit SPEC.json RESULT.json      measure context creation and first inference of one engine (a child too)
  libdir [FLAVOUR]               the folder to put on LD_LIBRARY_PATH (TensorRT-RTX's parser dlopens it)
  cache [--prune]                the engine cache's size by entry; --prune removes stale entries the study made
  wheel                          the pip extra for this machine's driver (rtx-cu12 or rtx-cu13)"""


def die_with_parent(environ=os.environ) -> None:
    """A child the study started (build, jit) dies with it: Linux sends it SIGKILL when its parent dies (prctl
    PR_SET_PDEATHSIG), and a parent already gone before that call ends it at once. So a `kill -9` of the driver
    or the kernel never leaves a build running on its own."""
    parent = environ.get(PARENT_ENV)
    if not parent:
        return  # started by hand: nobody to die with
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's timeout still bounds the child
        return
    if os.getppid() != int(parent):
        print(f"mvlib.tensorrt: the process that started this one ({parent}) is gone; stopping", file=sys.stderr)
        os._exit(1)


def main(argv: list[str]) -> int:
    """Dispatch one command; 2 with the usage for anything else."""
    cmd, rest = (argv[0], argv[1:]) if argv else ("", [])
    if cmd in ("build", "jit"):
        die_with_parent()
    if cmd == "build" and len(rest) == 2:
        from mvlib.tensorrt import child
        return child.main(rest[0], rest[1])
    if cmd == "jit" and len(rest) == 2:
        from mvlib.tensorrt import timing
        return timing.jit_child(rest[0], rest[1])
    if cmd == "libdir" and len(rest) <= 1:
        from mvlib.tensorrt import flavours, plugins
        chosen = flavours.decide(rest[0] if rest else "auto")["trt_flavour"]  # the run's own decision
        print((plugins.unversioned_dir(flavours.select(chosen)) if chosen else None) or "")
        return 0
    if cmd == "cache" and rest in ([], ["--prune"]):
        from mvlib.tensorrt import cache
        print(cache.report(prune=bool(rest)))
        return 0
    if cmd == "wheel" and not rest:
        from mvlib.tensorrt import cudainfo
        return cudainfo.main(["extra"])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
