"""`python -m mvlib.tensorrt build|jit|libdir|cache|wheel ...`: the command line of the TensorRT package.

Serves: notebooks 03 to 06 (the build and JIT children run through it) and `make lab` (libdir).
"""
import sys

USAGE = """usage: python -m mvlib.tensorrt COMMAND
  build SPEC.json RESULT.json    build one engine (the child process the study starts)
  jit SPEC.json RESULT.json      measure context creation and first inference of one engine (a child too)
  libdir [FLAVOUR]               the folder to put on LD_LIBRARY_PATH (TensorRT-RTX's parser dlopens it)
  cache [--prune]                the engine cache's size by entry; --prune removes stale entries the study made
  wheel                          the pip extra for this machine's driver (rtx-cu12 or rtx-cu13)"""


def main(argv: list[str]) -> int:
    """Dispatch one command; 2 with the usage for anything else."""
    cmd, rest = (argv[0], argv[1:]) if argv else ("", [])
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
