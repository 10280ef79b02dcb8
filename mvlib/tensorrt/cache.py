"""The engine cache: keys, build records, the parent side of a build, superseded entries and a size report.

An engine lives in `build/engines/<onnx stem>-b<min>_<opt>_<max>-<target>-<flavour>-<digest>/` beside its build
record (`build.json`, written last: a folder without one is never trusted) and its layer information. The digest
is of everything the engine depends on: the ONNX file's bytes, flavour and version, target, profile, workspace,
the build recipe, and each plugin library's `plugins.library_digest` (what the loader maps: the library file
itself changes on every nvcc build, its code does not). So a
rerun with nothing changed reuses every engine, and a changed input builds a new one; writing it removes the
entries it supersedes (same ONNX file, profile, target and flavour), but only folders holding our build.json.
Each build runs in a child process (`mvlib.tensorrt.child`), so a builder crash fails one engine, not the kernel.

Serves: notebooks 03 to 06 (every engine is built or reused here).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mvlib import env, io, paths, stages
from mvlib.tensorrt import plugins as plugin_libs
from mvlib.tensorrt.flavours import Flavour, select
from mvlib.tensorrt.shapes import Profile, onnx_input

RECIPE = 4  # bump when the build settings or records change, so older engines are not reused
PLAN = "engine.plan"
BUILD_INFO = "build.json"
LAYERS = "layers.json"
TIMING_DIR = "timing"
BUILD_TIMEOUT_S = 3600  # one engine's build; MobileViT's take seconds to minutes
PLAN_MAGIC = {"tensorrt": b"ftrt", "tensorrt_rtx": b"vtrt"}  # the first bytes of a serialized plan, per flavour
RECORDED = ("layers_by_type", "network_layers", "plugin_layers", "profiling_verbosity", "strongly_typed", "tf32",
            "inspected", "compute_precision")  # what the child reports that the build record keeps


LIVE: set[subprocess.Popen] = set()  # the build children running now, from any thread (run_child)
_LIVE_LOCK = threading.Lock()


class BuildFailed(RuntimeError):
    """The builder refused a model; `messages` holds what it said, verbatim."""

    def __init__(self, what: str, messages: list[str]):
        super().__init__(what + (":\n  " + "\n  ".join(messages[-20:]) if messages else ""))
        self.messages = messages



def has_plan_header(path: Path | str, flavour: str) -> bool:
    """Whether a file starts like a serialized plan of that flavour."""
    with open(path, "rb") as f:
        return f.read(4) == PLAN_MAGIC[flavour]


def key_parts(onnx_path: Path | str, profile: Profile, fl: Flavour, target: str, plugins: Sequence[Path | str] = (),
              workspace_gb: float = 4) -> dict:
    """Everything an engine depends on: ONNX bytes, flavour and version, the wheel's CUDA major, target (and for
    full TensorRT the GPU model), profile, plugins, workspace, recipe.

    The CUDA major: an RTX plan records the CUDA runtime that built it, and one built by the cu13 wheel is INVALID
    under the cu12 wheel. The GPU model: full TensorRT times tactics on the GPU it builds on, and warns that a plan
    used on another model of the same compute capability (an A10's on an A40) "is likely to affect performance or
    even cause errors"; RTX builds for a compute capability, whatever the GPU."""
    name, shape = onnx_input(onnx_path)
    wheel = fl.wheel()
    return {"onnx_sha256": io.sha256(onnx_path), "flavour": fl.name, "flavour_version": fl.version,
            "cuda_major": wheel[1] if wheel else None, "target": target,
            **({} if fl.rtx else {"gpu": env.gpu_info().get("gpu")}),
            "input": name, "shape": list(shape), "profile": profile.as_list(), "workspace_gb": float(workspace_gb),
            "plugins_digest": [plugin_libs.library_digest(p) for p in plugin_libs.check_plugins(plugins)],
            "recipe": RECIPE}


def family(onnx_path: Path | str, parts: dict) -> str:
    """The readable part of a cache folder's name: ONNX stem, profile, target and flavour."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(onnx_path).stem)
    return f"{stem}-b{'_'.join(map(str, parts['profile']))}-{parts['target']}-{parts['flavour']}"


def engine_key(onnx_path: Path | str, parts: dict) -> str:
    """The cache folder name: readable prefix plus a hash of the key parts (a stale engine never matches)."""
    return f"{family(onnx_path, parts)}-{io.digest(parts)[:16]}"


def timing_cache_path(fl: Flavour, target: str) -> Path:
    """The tactic timing cache of one GPU and flavour version (shared by every engine built there)."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", env.gpu_info().get("gpu") or "no-gpu").strip("-")
    return paths.ENGINES / TIMING_DIR / f"{gpu}_{target}_{fl.name}{fl.version}.cache"


@dataclass
class Engine:
    """A built (or reused) engine: its plan, build record and layer information."""
    plan: Path
    info: dict
    reused: bool = False
    rebuilt: str = ""  # why a cached engine in the same folder could not be used and was built again
    validity: str = ""  # the runtime's verdict where it ran: VALID, SUBOPTIMAL: <why>, or the support matrix's

    @property
    def dir(self) -> Path:
        """The engine's cache folder."""
        return self.plan.parent

    @property
    def profile(self) -> Profile:
        """The optimization profile it was built with."""
        return Profile(*self.info["profile"])

    @property
    def flavour(self) -> Flavour:
        """The flavour that built it."""
        return Flavour(self.info["flavour"], self.info["flavour_version"])

    @property
    def status(self) -> str:
        """built, reused or rebuilt (a corrupt cached engine built again): its engines-table status."""
        return "rebuilt" if self.rebuilt else "reused" if self.reused else "built"

    def layers(self) -> dict:
        """The saved layer information (network layers always; engine inspector output where it ran)."""
        return io.read_json(self.dir / LAYERS)


def cache_problem(engine_dir: Path | str) -> str | None:
    """Why the engine cached in `engine_dir` cannot be trusted (None when it can)."""
    d = Path(engine_dir)
    plan, meta = d / PLAN, d / BUILD_INFO
    if not plan.exists() and not meta.exists():
        return "not built yet"
    try:
        info = io.read_json(meta)
        recorded = (info["plan_sha256"], info["plan_bytes"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its build record {meta} is missing or unreadable ({type(err).__name__})"
    if not plan.is_file():
        return f"{plan} is missing"
    if plan.stat().st_size != recorded[1] or io.sha256(plan) != recorded[0]:
        return f"{plan} is corrupt (size or SHA-256 differs from what the builder wrote)"
    try:
        io.read_json(d / LAYERS)
    except (OSError, ValueError) as err:
        return f"its layer information {d / LAYERS} is missing or unreadable ({type(err).__name__})"
    return None


def load(engine_path: Path | str) -> Engine:
    """A cached engine by its plan path, or an error saying why it cannot be used."""
    plan = Path(engine_path)
    problem = cache_problem(plan.parent)
    if problem is not None:
        raise RuntimeError(f"engine {plan} cannot be used: {problem}; build_engine() rebuilds it")
    return Engine(plan, io.read_json(plan.parent / BUILD_INFO), reused=True)


def build_engine(onnx_path: Path | str, profile: Profile, fl: Flavour | None = None, target: str = "auto",
                 plugins: Sequence[Path | str] = (), workspace_gb: float = 4,
                 check: plugin_libs.Check | None = None, force: str = "", say: Callable[[str], None] = print) -> Engine:
    """Build a strongly typed engine for `onnx_path`, or reuse a valid cached one;
    BuildFailed with the builder's words. `force`: why a cached engine must be built again although its files
    are whole (the runtime called its plan INVALID: runner.usable).

    `check` runs on each plugin library before TensorRT loads it, here and wherever the engine is loaded later
    (its build record names it). `say` prints its lines (table.Builds collects a side-by-side build's, to print
    them in spec order)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        maker = stages.PRODUCERS.get(onnx_path.name, "that writes it")
        raise FileNotFoundError(f"ONNX file {onnx_path} does not exist; run notebook {maker} first")
    if workspace_gb <= 0:
        raise ValueError(f"workspace_gb={workspace_gb}: give the builder a positive workspace, e.g. 4")
    fl = fl or select()
    target = fl.resolve_target(target)
    parts = key_parts(onnx_path, profile, fl, target, plugins, workspace_gb)
    out = paths.ENGINES / engine_key(onnx_path, parts)
    with io.lock(out.with_name(f".{out.name}.lock"), f"building {out.name}"):  # one build of an entry at a time
        return _reuse_or_build(onnx_path, out, parts, fl, plugins, check, force, say)


def _reuse_or_build(onnx_path: Path, out: Path, parts: dict, fl: Flavour, plugins, check, force: str,
                    say: Callable[[str], None] = print) -> Engine:
    """The engine in cache entry `out` if valid, else built there (the caller holds the entry's lock)."""
    problem = cache_problem(out) or force or None
    if problem is None:
        say(f"reusing engine {out.name}")
        return Engine(out / PLAN, io.read_json(out / BUILD_INFO), reused=True)
    if problem != "not built yet":
        say(f"engine {out.name}: the cached engine cannot be used ({problem}); rebuilding it")
    recorded = {**parts, **({"plugin_check": plugin_libs.check_name(check)} if check is not None else {})}
    engine = build(onnx_path, out, recorded, fl, plugin_libs.check_plugins(plugins), say)
    engine.rebuilt = "" if problem == "not built yet" else problem
    for old in superseded(out):
        shutil.rmtree(old, ignore_errors=True)
        say(f"removed {old.name} from the engine cache: superseded by {out.name}")
    return engine


def build(onnx_path: Path, out: Path, parts: dict, fl: Flavour, plugins: list[str],
          say: Callable[[str], None] = print) -> Engine:
    """Build in a child process; write plan, layer information and build record atomically (record last)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / BUILD_INFO).unlink(missing_ok=True)  # from here on the old plan is not trusted
    # The child is told the input and whether the engine runs here (this process knows both already), so that it
    # imports neither onnx nor PyTorch: they were 3 s of a 7 s build of mobilevit_xxs, on each of 20 builds.
    spec = {"onnx": str(onnx_path), "flavour": fl.name,
            **{k: parts[k] for k in ("target", "profile", "workspace_gb", "input", "shape")},
            "runs_here": list(fl.runs_here()), "plugins": plugins, "plugin_check": parts.get("plugin_check"),
            "out": str(out),
            "timing_cache": str(timing_cache_path(fl, parts["target"])) if fl.timing_cache else None}
    with io.atomic_path(out / "spec.json") as spec_path, io.atomic_path(out / "result.json") as result_path:
        spec_path.write_text(json.dumps(spec))
        start = time.perf_counter()
        try:
            proc = run_child([sys.executable, "-m", "mvlib.tensorrt", "build", str(spec_path), str(result_path)],
                             child_env(fl))
        except subprocess.TimeoutExpired as err:  # one engine fails; build_all records it and goes on
            said = output_tail(err.stderr, 8)
            raise BuildFailed(f"{fl.label} could not build {onnx_path.name} for {parts['target']}: the builder "
                              f"did not finish within {BUILD_TIMEOUT_S:g} s and was stopped", said) from None
        seconds = time.perf_counter() - start
        result = json.loads(result_path.read_text()) if result_path.stat().st_size else {}
    messages = result.get("messages", [])
    if proc.returncode != 0 or not result.get("ok"):
        died = ("the builder refused it" if result else
                f"the builder process died ({exit_text(proc.returncode)}) before it could report")
        tail = output_tail(proc.stderr, 8) if not messages else []
        raise BuildFailed(f"{fl.label} could not build {onnx_path.name} for {parts['target']}: {died}",
                          messages + tail)
    plan = out / PLAN
    io.write_json(out / BUILD_INFO, {**parts, "onnx": str(onnx_path.resolve()), "plugins": spec["plugins"],
                                     "build_seconds": round(seconds, 2), "messages": messages,
                                     **{k: result.get(k) for k in RECORDED},
                                     "plan_bytes": plan.stat().st_size, "plan_sha256": io.sha256(plan)})
    say(f"built {out.name} with {fl.label} for {parts['target']} in {seconds:.1f} s"
          + (f" ({len(messages)} builder messages)" if messages else ""))
    return Engine(plan, io.read_json(out / BUILD_INFO))


def run_child(cmd: list[str], environ: dict) -> subprocess.CompletedProcess:
    """subprocess.run of a build child (output captured, BUILD_TIMEOUT_S), listed in LIVE while it runs, so that
    stop_builds can end the side-by-side builds of a notebook that was interrupted."""
    with subprocess.Popen(cmd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        with _LIVE_LOCK:
            LIVE.add(proc)
        try:
            out, err = proc.communicate(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            exc.stdout, exc.stderr = proc.communicate()
            raise
        except BaseException:  # an interrupt: the child goes with the build that started it
            proc.kill()
            raise
        finally:
            with _LIVE_LOCK:
                LIVE.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stop_builds() -> int:
    """Kill every build child running now (their builds fail with 'signal SIGKILL'); how many there were."""
    with _LIVE_LOCK:
        running = list(LIVE)
    for proc in running:
        proc.kill()
    return len(running)


def child_env(fl: Flavour) -> dict:
    """The environment of a child the study starts (build, jit): the flavour's library path, and this process as
    the parent it dies with (mvlib.tensorrt.__main__.die_with_parent; set here, never inherited, since the driver's
    own pid is not a kernel's)."""
    return {**plugin_libs.library_env(fl), "MVLIB_PARENT_PID": str(os.getpid())}


def output_text(out: bytes | str | None) -> str:
    """A child's captured output as text (a TimeoutExpired holds bytes even under text=True)."""
    return out.decode(errors="replace") if isinstance(out, bytes) else out or ""


def output_tail(out: bytes | str | None, lines: int) -> list[str]:
    """The last `lines` non-blank lines of a child's captured output."""
    return [ln for ln in output_text(out).splitlines() if ln.strip()][-lines:]


def exit_text(code: int) -> str:
    """'exit 3' or 'signal SIGABRT' for a child's return code."""
    if code < 0:
        import signal
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def update_record(engine: Engine, **fields) -> Engine:
    """Add fields to an engine's build record (atomically), e.g. after inspecting it where it runs."""
    engine.info = {**engine.info, **fields}
    io.write_json(engine.dir / BUILD_INFO, engine.info)
    return engine


# --- what the study made, and what it may remove ------------------------------------------------------------
def entries(root: Path | None = None) -> list[tuple[Path, dict | None]]:
    """Every folder of the engine cache with its build record (None where it has none: not ours, or broken)."""
    root = Path(root or paths.ENGINES)
    out = []
    for d in sorted(p for p in root.glob("*") if p.is_dir() and p.name != TIMING_DIR):
        try:
            out.append((d, io.read_json(d / BUILD_INFO)))
        except (OSError, ValueError):
            out.append((d, None))
    return out


def _same_family(a: dict, b: dict) -> bool:
    """Whether two build records are of the same ONNX file, profile, target and flavour."""
    return all(a.get(k) == b.get(k) for k in ("onnx", "profile", "target", "flavour"))


def superseded(new: Path) -> list[Path]:
    """Folders the engine just written in `new` replaces: our build record, same ONNX file/profile/target/flavour."""
    info = io.read_json(new / BUILD_INFO)
    prefix = new.name.rsplit("-", 1)[0] + "-"
    return [d for d, rec in entries(new.parent)
            if d != new and d.name.startswith(prefix) and rec is not None and _same_family(rec, info)]


def stale(info: dict) -> str:
    """Why an entry can no longer be reused ('' if it can): its ONNX file is gone or has other bytes now."""
    onnx = Path(info.get("onnx", ""))
    if not onnx.is_file():
        return f"{onnx.name} is gone"
    if io.sha256(onnx) != info.get("onnx_sha256"):
        return f"{onnx.name} has changed"
    return ""


def _size(d: Path) -> int:
    """Bytes of the files under `d`."""
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


# The files the study writes into an engine's folder (build, child, layers, JIT children, runtime caches) and
# io.atomic_path's temporary names for them ('.spec.json.1a2b3c4d.tmp.json'), which an interrupted build leaves.
OURS = re.compile(r"(engine\.plan|build\.json|layers\.json|spec\.json|result\.json|jit_spec\.json|jit\.json"
                  r"|runtime-[A-Za-z0-9.-]+\.cache)")
LEFTOVER = re.compile(r"\.(" + OURS.pattern + r")\.[0-9a-f]{8}\.tmp(\.\w+)?")
KEYED = re.compile(r".+-[0-9a-f]{16}")  # engine_key's folder names


def leftovers(d: Path, info: dict | None) -> list[Path]:
    """What an interrupted build or measurement left in engine folder `d`: its temporary files and, in a folder
    without a build record, the whole folder, but only where every file in it is one the study writes (OURS,
    LEFTOVER) and the folder has our key's name; [] for anything else (not ours: left alone)."""
    files = list(d.iterdir())
    temps = [f for f in files if f.is_file() and LEFTOVER.fullmatch(f.name)]
    if info is not None:
        return temps
    ours = all(f.is_file() and (OURS.fullmatch(f.name) or LEFTOVER.fullmatch(f.name)) for f in files)
    return [d] if ours and KEYED.fullmatch(d.name) else []


def what_of(info: dict | None) -> str:
    """'mobilevit_xxs_random-seed0_s256_op17/model.int8.onnx': the export folder (variant, weights, size, opset)
    and ONNX file an entry was built from, from its build record ('' without one)."""
    onnx = Path(str((info or {}).get("onnx", "")))
    return f"{onnx.parent.name}/{onnx.name}" if info and onnx.name else ""


def report(prune: bool = False, root: Path | None = None) -> str:
    """The engine cache by entry (MiB, what it was built from, and stale or not); `prune` removes the stale
    entries we made and what interrupted builds left (`leftovers`). The header counts what remains."""
    lines, total, freed, removed = [], 0, 0, 0
    for d, info in entries(root):
        size = _size(d)
        left = leftovers(d, info)
        why = ("interrupted: no build record, only the study's files" if left == [d] else
               "no build record: not the study's (left alone)" if info is None else stale(info))
        if prune and (left == [d] or (info is not None and why)):
            shutil.rmtree(d, ignore_errors=True)
            freed, removed, why = freed + size, removed + 1, f"removed ({why})"
        else:
            if prune and left:  # an entry in use keeps its files; only the temporary ones go
                freed += sum(f.stat().st_size for f in left)
                for f in left:
                    f.unlink(missing_ok=True)
                why = "; ".join(w for w in (why, f"{len(left)} temporary files removed") if w)
            total += _size(d)
        lines.append(f"{size / 2**20:9.1f} MiB  {d.name}" + (f"  {what_of(info)}" if info else "")
                     + (f"  [{why}]" if why else ""))
    root = Path(root or paths.ENGINES)
    head = f"engine cache {root}: {len(lines) - removed} entries, {total / 2**20:.1f} MiB"
    return "\n".join([head + (f" ({removed} removed, {freed / 2**20:.1f} MiB freed)" if prune else ""), *lines])
