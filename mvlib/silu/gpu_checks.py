"""The SiLU kernel on the GPU: correctness against PyTorch, bandwidth against a device copy, and inside the model.
Serves notebook 05 (stages `kernel_check`, `bandwidth`, `swap_accuracy`, `swap_throughput`, figure
05_kernel_bandwidth.png); tests/silu/test_gpu_checks.py.

Every function here needs a CUDA GPU and the built kernel library (mvlib.silu.build); without a GPU each
raises StageSkipped with the reason, so notebook 05 records the stage as skipped.
"""
import copy
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mvlib import bench, env, figures, metrics, precisions
from mvlib.silu import torch_op
from mvlib.skips import StageSkipped

TOLERANCE = {"float32": 1e-6, "float16": 1e-3}  # relative error against torch.nn.functional.silu
CHECK_SIZES = (1, 7, 1023, 2**20 + 3, 2**26)
# (x offset, y offset) in elements from a 256-byte aligned allocation; "inplace" writes over x.
CHECK_LAYOUTS = ((0, 0), (1, 1), (1, 0), "inplace")
GUARD = 256  # poisoned elements before and after the output that must stay untouched
BANDWIDTH_SIZES = tuple(2**k for k in range(16, 29, 2))
IMPLS = {"mv_silu": "ours (mv_silu)", "torch_silu": "torch.nn.functional.silu",
         "copy": "device copy (cudaMemcpyAsync)", "mv_copy": "ours, no arithmetic (mv_copy_ex)"}
GOAL_FRACTION = 0.95  # of the copy's bandwidth, at GOAL_MIN_ELEMENTS and above
GOAL_MIN_ELEMENTS = 2**24


# --- correctness on the GPU ------------------------------------------------------------------------------
def _gpu() -> None:
    """StageSkipped unless PyTorch sees a CUDA GPU."""
    ok, why = env.cuda_status()
    if not ok:
        raise StageSkipped(why)


def _specials(dtype: torch.dtype) -> torch.Tensor:
    """Edge values: zeros, infinity, overflow of exp in both directions, tiny and large magnitudes."""
    vals = [0.0, -0.0, float("inf"), 1e4, -1e4, 88.0, -88.0, -90.0, -100.0, 20.0, -20.0, 1e-6, -1e-6, -17.0, 11.0]
    return torch.tensor(vals, dtype=dtype)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """|out - ref| / max(|ref|, smallest normal of the dtype), 0 where both are equal (infinities too), in float64."""
    tiny = torch.finfo(ref.dtype).tiny
    o, r = out.double(), ref.double()
    err = (o - r).abs() / r.abs().clamp_min(tiny)
    return torch.where((o == r) | (o.isnan() & r.isnan()), torch.zeros_like(err), err)


def check_case(n: int, dtype: str, layout=(0, 0), seed: int = 0) -> dict:
    """One kernel run against torch.nn.functional.silu: poisoned output fully written, guards intact, error."""
    _gpu()
    tdt = getattr(torch, dtype)
    gen = torch.Generator(device="cuda").manual_seed(seed * 7919 + n)
    inplace = layout == "inplace"
    x_off, y_off = (0, 0) if inplace else layout
    xbuf = (torch.randn(n + x_off + GUARD, device="cuda", generator=gen) * 4).to(tdt)
    x = xbuf[x_off:x_off + n]
    if n >= 64:
        x[:15] = _specials(tdt).cuda()
    ref = torch.nn.functional.silu(x)
    ref64 = torch.nn.functional.silu(x.double())
    if inplace:
        y, ybuf = x, None
        torch_op.silu(x, out=x)
    else:
        ybuf = torch.full((n + y_off + GUARD,), float("nan"), dtype=tdt, device="cuda")  # poison
        y = ybuf[y_off:y_off + n]
        torch_op.silu(x, out=y)
    torch.cuda.synchronize()
    written = not bool(y.isnan().any())
    guard = True if ybuf is None else bool(ybuf[:y_off].isnan().all() and ybuf[y_off + n:].isnan().all())
    err = float(relative_error(y, ref).max())
    finite = torch.isfinite(ref64) & (ref64.abs() > torch.finfo(tdt).tiny)
    finite[:15 if n >= 64 else 0] = False  # exp over/underflow edges: compared with torch, not with float64
    err64 = float(relative_error(y[finite], ref64[finite].to(tdt)).max()) if bool(finite.any()) else 0.0
    vector = inplace or (x.data_ptr() % 16 == y.data_ptr() % 16)
    return {"dtype": dtype, "n": n, "layout": "inplace" if inplace else f"x+{x_off} y+{y_off}",
            "config": "default",  # mv_silu's own launch configuration (silu_kernel.cu)
            "path": "16-byte vectors + scalar edges" if vector else "scalar (x, y misaligned to each other)",
            "all_written": written, "guards_intact": guard, "max_rel_err_vs_torch": err, "tolerance": TOLERANCE[dtype],
            "max_rel_err_vs_fp64_rounded": err64,
            "passed": written and guard and err <= TOLERANCE[dtype]}


def check_kernel(sizes: Iterable[int] = CHECK_SIZES, dtypes: Iterable[str] = ("float32", "float16"),
                 layouts: Iterable = CHECK_LAYOUTS, seed: int = 0) -> pd.DataFrame:
    """check_case over every size, dtype and layout; one row each."""
    _gpu()
    rows = [check_case(n, d, layout, seed) for d in dtypes for n in sizes for layout in layouts]
    torch.cuda.empty_cache()
    return pd.DataFrame(rows)


# --- bandwidth -------------------------------------------------------------------------------------------
def _l2_bytes() -> int:
    """The GPU's L2 size (50 MB on an H200), so timed buffers can be rotated out of it."""
    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 * 2**20))


def _launchers(dtype: str) -> dict[str, Callable]:
    """impl name -> launch(x, y) on the current stream, for every implementation compared."""
    lib, code = torch_op.kernel_library(), torch_op.DTYPE_CODES[dtype]

    def ours(fn):
        def launch(x, y):  # the _ex entry points with 0, 0, 0: mv_silu's default launch configuration
            stream = torch.cuda.current_stream().cuda_stream
            torch_op.check_status(fn(x.data_ptr(), y.data_ptr(), x.numel(), code, stream, 0, 0, 0), fn.__name__)
        return launch
    return {"mv_silu": ours(lib.mv_silu_ex), "torch_silu": lambda x, y: torch.ops.aten.silu.out(x, out=y),
            "copy": lambda x, y: y.copy_(x), "mv_copy": ours(lib.mv_copy_ex)}


def time_launch(launch: Callable, n: int, dtype: str, samples: int = 30, min_graph_ms: float = 2.0) -> np.ndarray:
    """Per-launch times (ms) of launch(x, y) over n elements: CUDA-graph replays timed with events.

    Buffer pairs rotate so the bytes of a launch were last touched at least 4 L2 sizes earlier (no
    launch is served from L2); one graph holds enough launches to last >= min_graph_ms, so launch
    gaps are those of a graph, not of Python.
    """
    tdt = getattr(torch, dtype)
    pair_bytes = 2 * n * tdt.itemsize
    sets = max(2, min(1024, math.ceil(4 * _l2_bytes() / pair_bytes)))
    xs = [torch.randn(n, device="cuda").to(tdt) for _ in range(sets)]
    ys = [torch.empty(n, device="cuda", dtype=tdt) for _ in range(sets)]
    est_ms = pair_bytes / 3e9 + 0.003  # ~3 TB/s plus a launch, to size the graph
    count = max(sets, math.ceil(min_graph_ms / est_ms))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for i in range(min(count, 2 * sets)):  # warm-up: module load, caches of the launch path
            launch(xs[i % sets], ys[i % sets])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for i in range(count):
            launch(xs[i % sets], ys[i % sets])
    graph.replay()
    torch.cuda.synchronize()
    times = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    current = torch.cuda.current_stream()  # replay() launches the graph on the current stream
    for _ in range(samples):
        start.record(current)
        graph.replay()
        end.record(current)
        end.synchronize()
        times.append(start.elapsed_time(end) / count)
    del graph, xs, ys
    torch.cuda.empty_cache()
    return np.asarray(times)


def bandwidth(sizes: Iterable[int] = BANDWIDTH_SIZES, dtypes: Iterable[str] = ("float32", "float16"),
              impls: Iterable[str] = tuple(IMPLS), samples: int = 30) -> pd.DataFrame:
    """GB/s (bytes read + written) of each implementation by size and dtype: median over graph replays."""
    _gpu()
    impls = tuple(impls)
    rows = []
    for dtype in dtypes:
        launchers = _launchers(dtype)
        for n in sizes:
            for impl in impls:
                t = time_launch(launchers[impl], n, dtype, samples)
                nbytes = 2 * n * getattr(torch, dtype).itemsize
                rows.append({"impl": impl, "label": IMPLS[impl], "dtype": dtype, "n": n, "bytes": nbytes,
                             "median_us": float(np.median(t) * 1e3), "p10_us": float(np.percentile(t, 10) * 1e3),
                             "p90_us": float(np.percentile(t, 90) * 1e3),
                             "gbps": nbytes / (np.median(t) * 1e-3) / 1e9, "samples": len(t)})
            print(f"{dtype} n=2^{int(math.log2(n))}: " + ", ".join(
                f"{r['impl']} {r['gbps']:.0f}" for r in rows[-len(impls):]) + " GB/s")
    table = pd.DataFrame(rows)
    copy_gbps = table[table["impl"] == "copy"].set_index(["dtype", "n"])["gbps"]
    table["fraction_of_copy"] = [r.gbps / copy_gbps.get((r.dtype, r.n), np.nan) for r in table.itertuples()]
    table["gpu"] = torch.cuda.get_device_name(0)
    return table


def bandwidth_goal(table: pd.DataFrame, fraction: float = GOAL_FRACTION,
                   min_n: int = GOAL_MIN_ELEMENTS) -> pd.DataFrame:
    """Per dtype: our kernel's worst fraction of the copy's bandwidth at >= min_n elements,
    and whether it meets the goal."""
    ours = table[(table["impl"] == "mv_silu") & (table["n"] >= min_n)]
    torch_rows = table[(table["impl"] == "torch_silu") & (table["n"] >= min_n)]
    rows = []
    for dtype, grp in ours.groupby("dtype"):
        worst = grp.loc[grp["fraction_of_copy"].idxmin()]
        rows.append({"dtype": dtype, "sizes": f">= 2^{int(math.log2(min_n))}",
                     "worst_fraction_of_copy": worst.fraction_of_copy, "at_n": int(worst.n),
                     "torch_worst_fraction_of_copy": torch_rows[torch_rows["dtype"] == dtype]["fraction_of_copy"].min(),
                     "goal": fraction, "met": bool(grp["fraction_of_copy"].min() >= fraction)})
    return pd.DataFrame(rows)


def bandwidth_figure(csv: Path | str):
    """Bandwidth against size, one panel per dtype, one line per implementation (from the saved table)."""
    table = pd.read_csv(csv)
    dtypes = list(dict.fromkeys(table["dtype"]))
    fig, axes = figures.new(1, len(dtypes), size=(6 * len(dtypes), 4.2), sharey=True, squeeze=False)
    for ax, dtype in zip(axes[0], dtypes, strict=True):
        sub = table[table["dtype"] == dtype]
        for impl, style in (("copy", "k--"), ("mv_copy", "k:"), ("torch_silu", "C1-s"), ("mv_silu", "C0-o")):
            rows = sub[sub["impl"] == impl].sort_values("n")
            if len(rows):
                ax.plot(rows["n"], rows["gbps"], style, label=IMPLS[impl], markersize=4)
        ax.set_xscale("log", base=2)
        ax.axvline(GOAL_MIN_ELEMENTS, color="0.8", lw=0.8)
        ax.set_title(f"SiLU, {dtype}")
        ax.set_xlabel("elements")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("GB/s (bytes read + written)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Elementwise bandwidth on {table['gpu'].iloc[0]}: median of CUDA-graph replays", fontsize=10)
    return fig


# --- the kernel inside the model ------------------------------------------------------------------------
def swap_accuracy(model: torch.nn.Module, img_size: int, dtypes: Iterable[str] = ("float32", "float16"),
                  batch: int = 8, seed: int = 0) -> pd.DataFrame:
    """Logits of the model with our kernel in place of nn.SiLU against the original, same dtype, same inputs."""
    _gpu()
    x = torch.from_numpy(metrics.random_images(batch, img_size, seed=seed)).cuda()
    rows = []
    ref32 = None
    for dtype in dtypes:
        tdt = getattr(torch, dtype)
        original = copy.deepcopy(model).to("cuda", tdt).eval()
        swapped = copy.deepcopy(original)
        replaced = torch_op.swap_silu(swapped)
        with torch.inference_mode():
            a = original(x.to(tdt)).float().cpu().numpy()
            b = swapped(x.to(tdt)).float().cpu().numpy()
        if dtype == "float32":
            ref32 = a
        rows.append({"dtype": dtype, "reference": f"original model, {dtype}", "silu_modules_replaced": replaced,
                     **metrics.compare(a, b)})
        if dtype != "float32" and ref32 is not None:
            rows.append({"dtype": dtype, "reference": "original model, float32", "silu_modules_replaced": replaced,
                         **metrics.compare(ref32, b)})
    return pd.DataFrame(rows)


def swap_throughput(model: torch.nn.Module, batches: Iterable[int], settings, dtypes: Iterable[str] = ("float16",),
                    modes: Iterable[str] = ("eager", "compile"), factory: Callable | None = None) -> pd.DataFrame:
    """img/s of the original model and of the swapped one (direct call, and through torch.ops in eager), per mode.

    Every row is timed as notebook 06's (bench.measure_all: warm-up, then `settings.repeats` windows that stop
    once the study's rule says the median is known, at `settings.seconds` at the latest). `factory` makes the
    backend (bench.pytorch_cuda; a test passes one that runs on the CPU)."""
    if factory is None:
        _gpu()
        factory = bench.pytorch_cuda
    variants = {"original (nn.SiLU)": None, "ours (MvSiLU)": "direct", "ours via torch.ops (MvSiLU)": "op"}
    frames = []
    for dtype in dtypes:
        for mode in modes:
            for label, dispatch in variants.items():
                if mode == "compile" and dispatch == "op":
                    continue  # compiled graphs always call the op: same as "direct"
                net = copy.deepcopy(model)
                if dispatch:
                    torch_op.swap_silu(net, dispatch)
                frame = bench.measure_all(factory, batches, settings, net,
                                          precision=precisions.of_torch_dtype(dtype).name,
                                          compile_mode="default" if mode == "compile" else None)
                frame.insert(0, "model", label)
                frame.insert(1, "mode", mode)
                frame.insert(2, "dtype", dtype)
                frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    base = table[table["model"] == "original (nn.SiLU)"].set_index(["dtype", "mode", "batch"])["throughput_ips"]
    table["vs_original"] = [r.throughput_ips / base.get((r.dtype, r.mode, r.batch), np.nan) for r in table.itertuples()]
    return table


