"""mvlib.silu.gpu_checks: on a real GPU the kernel against torch.nn.functional.silu (sizes, alignments, poisoned
outputs) and the bandwidth table; on any machine the decisions drawn from such tables (the goal, the error
measure), the figure's convention, and the skip without a GPU."""
import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from mvlib import env
from mvlib.silu import build, gpu_checks
from mvlib.skips import StageSkipped

CUDA_OK, CUDA_WHY = env.cuda_status()
needs_gpu = pytest.mark.skipif(not CUDA_OK or env.nvcc_path() is None,
                               reason=CUDA_WHY if not CUDA_OK else "nvcc not found: the kernel cannot be built")


def _bandwidth_table(ours_fraction: float, seed: int = 0) -> pd.DataFrame:
    """A bandwidth table as an H200 gives it: copy near 4 TB/s from 2^24 elements on, ours at a fraction of it."""
    rng = np.random.default_rng(seed)
    rows = []
    for dtype, size in (("float32", 4), ("float16", 2)):
        for n in gpu_checks.BANDWIDTH_SIZES:
            copy = 4000.0 * min(1.0, n * size / 2**26) * rng.uniform(0.98, 1.0)
            for impl, gbps in (("copy", copy), ("mv_copy", copy * 0.99), ("torch_silu", copy * 0.93),
                               ("mv_silu", copy * ours_fraction)):
                rows.append({"impl": impl, "label": gpu_checks.IMPLS[impl], "dtype": dtype, "n": n,
                             "bytes": 2 * n * size, "gbps": gbps, "fraction_of_copy": gbps / copy,
                             "gpu": "NVIDIA H200"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fraction, met", [(0.97, True), (0.90, False)])
def test_bandwidth_goal_takes_the_worst_size_from_16_mi_elements_on(fraction, met):
    table = _bandwidth_table(fraction)
    small = (table["impl"] == "mv_silu") & (table["n"] < gpu_checks.GOAL_MIN_ELEMENTS)
    table.loc[small, "fraction_of_copy"] = 0.5  # small sizes are launch-bound and do not count
    goal = gpu_checks.bandwidth_goal(table).set_index("dtype")
    assert set(goal.index) == {"float32", "float16"} and (goal["met"] == met).all()
    assert np.allclose(goal["worst_fraction_of_copy"], fraction)
    assert np.allclose(goal["torch_worst_fraction_of_copy"], 0.93)
    assert (goal["at_n"] >= gpu_checks.GOAL_MIN_ELEMENTS).all() and set(goal["sizes"]) == {">= 2^24"}


def test_bandwidth_figure_is_a_pyplot_free_figure_with_a_panel_per_dtype(tmp_path):
    csv = tmp_path / "05_kernel_bandwidth.csv"
    _bandwidth_table(0.97).to_csv(csv, index=False)
    before = plt.get_fignums()
    fig = gpu_checks.bandwidth_figure(csv)
    assert isinstance(fig, Figure) and plt.get_fignums() == before  # nothing left open in pyplot's list
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["SiLU, float32", "SiLU, float16"]
    assert [len(ax.get_lines()) for ax in axes] == [5, 5]  # four implementations and the goal's size line
    assert "NVIDIA H200" in fig._suptitle.get_text()
    fig.savefig(tmp_path / "f.png")  # the Agg canvas it was made on renders it


def test_relative_error_floors_the_reference_and_ignores_equal_infinities():
    tiny = torch.finfo(torch.float32).tiny
    ref = torch.tensor([0.0, 1.0, float("inf"), -2.0, 0.0])
    out = torch.tensor([0.0, 1.0 + 2**-20, float("inf"), -2.0, 4 * tiny])
    err = gpu_checks.relative_error(out, ref)
    assert err.dtype == torch.float64 and err[0] == 0 and err[2] == 0 and err[3] == 0
    assert float(err[1]) == 2**-20
    assert math.isclose(float(err[4]), 4.0)  # |ref| floored at the smallest normal number, not divided by 0


@pytest.mark.skipif(CUDA_OK, reason="checks the behaviour on a machine without a GPU")
def test_every_gpu_check_skips_with_the_reason_without_a_gpu():
    for fn, args in ((gpu_checks.check_kernel, ()), (gpu_checks.bandwidth, ()),
                     (gpu_checks.swap_accuracy, (torch.nn.SiLU(), 64)),
                     (gpu_checks.swap_throughput, (None, [1], None))):
        with pytest.raises(StageSkipped, match=re.escape(CUDA_WHY)):
            fn(*args)


def test_swap_throughput_times_every_model_and_mode_with_the_studys_stop_rule():
    """Each (dtype, mode, model) is one bench.measure_all, windows stopped by the settings' rule and capped by
    bench_seconds as notebook 06's rows; the table keeps its columns. A CPU backend stands in for the GPU's."""
    from mvlib import bench, bench_windows
    from mvlib.silu import torch_op
    calls = []

    def factory(settings, net, precision, compile_mode):
        silu = sorted({type(m).__name__ + (f"({m.dispatch})" if hasattr(m, "dispatch") else "")
                       for m in net.modules() if isinstance(m, (torch.nn.SiLU, torch_op.MvSiLU))})
        calls.append((silu, precision, compile_mode, settings))
        return bench.Backend("fake", "cpu", precision, "fake", lambda b: (lambda: sum(range(2000))), "perf_counter")

    lenient = bench_windows.StopRule(max_noise_pct=1e6, max_drift_pct=1e6, min_s=0.02)  # settled at its first check
    s = bench.Settings(seconds=2.0, repeats=2, warmup_s=0.0, rule=lenient)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.SiLU(), torch.nn.Flatten())
    table = gpu_checks.swap_throughput(net, [1, 4], s, factory=factory)
    assert [c[:3] for c in calls] == [(["SiLU"], "fp16", None), (["MvSiLU(direct)"], "fp16", None),
                                      (["MvSiLU(op)"], "fp16", None), (["SiLU"], "fp16", "default"),
                                      (["MvSiLU(direct)"], "fp16", "default")]
    assert all(c[3] is s for c in calls) and [type(m) for m in net] == [torch.nn.Conv2d, torch.nn.SiLU,
                                                                         torch.nn.Flatten]  # swapped copies only
    assert list(table.columns) == ["model", "mode", "dtype", *bench.COLUMNS, "vs_original"] and len(table) == 10
    assert (table.window == s.describe_window() + "; 2 of 2 stopped early").all()
    assert (table.wall_s < s.seconds).all()  # two windows of a 2 s cap each: both stopped early
    original = table[table.model == "original (nn.SiLU)"]
    assert (original.vs_original == 1.0).all() and table.vs_original.notna().all()


# --- on a GPU ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built_kernel():
    """The kernel library built for this machine (build.sh into the test build folder)."""
    if not CUDA_OK or env.nvcc_path() is None:
        pytest.skip(CUDA_WHY if not CUDA_OK else "nvcc not found")
    return build.build()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("layout", gpu_checks.CHECK_LAYOUTS,
                         ids=lambda v: v if isinstance(v, str) else f"x{v[0]}y{v[1]}")
@pytest.mark.parametrize("n", gpu_checks.CHECK_SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernel_matches_torch(built_kernel, dtype, n, layout):
    row = gpu_checks.check_case(n, dtype, layout, seed=1)
    assert row["all_written"], f"elements left unwritten (NaN poison survived): {row}"
    assert row["guards_intact"], f"wrote outside the output: {row}"
    assert row["max_rel_err_vs_torch"] <= gpu_checks.TOLERANCE[dtype], row


@pytest.mark.gpu
@needs_gpu
def test_fresh_inputs_each_seed_and_no_cross_talk(built_kernel):
    # Two different inputs through the same buffers: the second result depends on the second input only.
    a = gpu_checks.check_case(4097, "float32", (1, 1), seed=2)
    b = gpu_checks.check_case(4097, "float32", (1, 1), seed=3)
    assert a["passed"] and b["passed"]


@pytest.mark.gpu
@needs_gpu
def test_bandwidth_table_has_every_impl(built_kernel):
    table = gpu_checks.bandwidth(sizes=(2**20,), dtypes=("float16",), samples=5)
    assert set(table["impl"]) == set(gpu_checks.IMPLS)
    assert (table["gbps"] > 0).all() and table["fraction_of_copy"].notna().all()
