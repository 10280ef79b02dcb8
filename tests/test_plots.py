"""mvlib.plots: notebook 06's figures, drawn from the saved results tables."""
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from bench_tables import ladder_table, synthetic_table

from mvlib import bench, plots
from mvlib.run import Run


# figures from tables, saved the notebook's way ---------------------------------------------------------------
def _draw_all(run: Run, table: pd.DataFrame, ceilings: pd.DataFrame) -> list[Path]:
    """Save the tables, read them back, and draw every figure from them as the notebook does."""
    cost = pd.DataFrame([{"flops_per_image": 4e9, "params": 5_600_000, "input_elems": 196608, "output_elems": 1000,
                          "img_size": 256, "method": "synthetic"}])
    run.save_table(table, "06_benchmark.csv")
    run.save_table(bench.speedup_table(table), "06_speedup.csv")
    run.save_table(ceilings, "06_ceilings.csv")
    run.save_table(cost, "06_model_cost.csv")
    t = pd.read_csv(run.table("06_benchmark.csv"))
    return [run.save_figure(plots.throughput(t), "06_throughput.png"),
            run.save_figure(plots.latency_b1(t), "06_latency_b1.png"),
            run.save_figure(plots.speedup(pd.read_csv(run.table("06_speedup.csv"))), "06_speedup.png"),
            run.save_figure(plots.roofline(t, pd.read_csv(run.table("06_ceilings.csv")),
                                           pd.read_csv(run.table("06_model_cost.csv"))), "06_roofline.png")]


def test_latency_b1_bars_start_at_zero_on_a_linear_axis_and_carry_their_values():
    table = synthetic_table()
    table.loc[table.backend == "pytorch", "p99_ms"] *= 40  # a CPU tail of seconds
    fig = plots.latency_b1(table)
    fig.canvas.draw()
    assert len(fig.axes) == 2  # one panel per device: GPU milliseconds are not squeezed beside CPU ones
    cols = [c for c, _ in plots.PCT]
    for ax, device in zip(fig.axes, ("cpu", "cuda"), strict=True):
        assert ax.get_xscale() == "linear" and ax.get_xlim()[0] == 0
        d = table[(table.batch == 1) & (table.device == device)]
        values = d[cols].to_numpy().ravel()
        bars = [p for p in ax.patches if p.get_height() > 0]
        assert len(bars) == values.size and all(b.get_x() == 0 for b in bars)  # every bar starts at zero
        assert sorted(b.get_width() for b in bars) == pytest.approx(sorted(values))  # lengths are the values
        assert ax.get_xlim()[1] >= values.max()
        shown = [t.get_text() for t in ax.texts]
        assert sorted(float(t) for t in shown) == pytest.approx(sorted(values), rel=5e-3)  # each bar: its value
        assert not any("e+" in t for t in shown)  # plain numbers
    assert plots.latency_b1(table[table.batch > 1]).axes[0].texts[0].get_text() == "no batch-1 rows in this run"


@pytest.mark.parametrize("with_gpu", [True, False])
def test_figures_are_drawn_from_the_tables(tmp_path, with_gpu):
    table = synthetic_table()
    ceilings = [{"device": "cpu", "ceiling": "copy", "value": 20.0, "unit": "GB/s", "size": "", "method": "synthetic"},
                {"device": "cpu", "ceiling": "matmul_fp32", "value": 0.1, "unit": "TFLOP/s", "size": "",
                 "method": "synthetic"}]
    if with_gpu:
        ceilings += [{"device": "cuda", "ceiling": "copy", "value": 4300.0, "unit": "GB/s", "size": "",
                      "method": "synthetic"},
                     {"device": "cuda", "ceiling": "matmul_fp16", "value": 790.0, "unit": "TFLOP/s", "size": "",
                      "method": "synthetic"}]
    else:
        table = table[table.device == "cpu"]
    run = Run(tmp_path / "run", "06_benchmark")
    before = plt.get_fignums()
    for path in _draw_all(run, table, pd.DataFrame(ceilings)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert plt.get_fignums() == before  # figures.new figures: none left open in pyplot


# titles say what was measured -----------------------------------------------------------------------
def _titles(fig) -> str:
    return " | ".join([ax.get_title() for ax in fig.axes] + ([fig._suptitle.get_text()] if fig._suptitle else []))


def test_cpu_only_figures_do_not_claim_a_gpu():
    t = ladder_table()
    for fig in (plots.throughput(t), plots.latency_b1(t), plots.speedup(bench.speedup_table(t))):
        titles = _titles(fig)
        assert "GPU" not in titles and "transfers excluded" not in titles, titles
        assert "CPU only" in titles, titles
    assert "mobilevit_xxs" in _titles(plots.throughput(t))  # the model, where the table names it


def test_speedup_axis_is_labelled_across_the_bars():
    sp = bench.speedup_table(ladder_table())
    fig = plots.speedup(sp)
    fig.canvas.draw()
    assert len(fig.axes) == 1  # no empty GPU panel on a CPU-only run
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert len(labels) >= 3 and "1x" in labels and all(lab.endswith("x") for lab in labels), labels
    values = [float(lab[:-1]) for lab in labels]
    assert min(values) < 1 < max(values)  # the INT8 row is slower, ONNX Runtime FP32 faster


def test_mixed_run_titles_name_both_devices():
    t = ladder_table(("cpu", "cuda"))
    assert "GPU rows: transfers excluded" in _titles(plots.throughput(t))
    assert len(plots.speedup(bench.speedup_table(t)).axes) == 2
    assert plots.ratio_ticks(0.01, 100) == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert len(plots.ratio_ticks(0.8, 1.3)) >= 3
