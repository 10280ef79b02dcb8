"""Every GPU-bound row of notebook 06 timed two ways in one process: the study's stop rule (bench_windows.StopRule,
capped by `bench_seconds`) against the old fixed window of exactly `bench_seconds`, interleaved on the same warm
launch (bench.agreement); a CSV and a markdown table of the median launch times, their difference and whether the
two agree within 2 % (issue 29). `--cpu`: notebook 06's CPU rows instead, at its `cpu_batches`.

Run it on the GPU machine (a CPU-only machine is told so, exit 2, unless `--cpu`). The ONNX and TensorRT rows need
the study's ONNX files (notebooks 01 to 05 of a run); rows that cannot run there are listed with the reason:

    python tools/window_agreement.py --seconds 3 --out build/window_agreement
    python tools/window_agreement.py --rows pytorch_cuda_fp32 torch_compile_fp16 --batches 1 32
    python tools/window_agreement.py --max-drift 1.5     # a candidate rule against the same fixed windows
    python tools/window_agreement.py --cpu --profile smoke --seconds 3    # the CPU rows, on any machine
"""
import argparse
import dataclasses
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mvlib import bench  # noqa: E402

# The table's columns: the row (notebook 06's stage), the batch, then fixed window against stop rule.
COLUMNS = ["row", "batch", "fixed_median_ms", "rule_median_ms", "median_diff_pct", "fixed_samples", "rule_samples",
           "fixed_ips", "rule_ips", "throughput_diff_pct", "fixed_wall_s", "rule_wall_s", "rule_stopped_early",
           "within_2pct", "not_timed"]
HEADERS = {"row": "row", "batch": "batch", "fixed_median_ms": "fixed median ms",
           "rule_median_ms": "stop-rule median ms",
           "median_diff_pct": "difference %", "fixed_samples": "fixed samples", "rule_samples": "stop-rule samples",
           "throughput_diff_pct": "throughput difference %", "fixed_wall_s": "fixed s", "rule_wall_s": "stop-rule s",
           "within_2pct": f"within {bench.AGREEMENT_PCT:g} % (median and throughput)"}


def gpu_rows(p: dict) -> list[tuple]:
    """(row, factory, args, kwargs) of notebook 06's GPU-bound rows, named as its stages, for profile values `p`."""
    from mvlib import export, fp8_torch, ort_gpu
    from mvlib.tensorrt import shapes
    from mvlib.tensorrt import timing as trt_timing
    exported, model = export.ensure_exported(p["variant"], p["weights"], p["img_size"], p["opset"], seed=p["seed"])
    fp16, cuda = {"precision": "fp16", "channels_last": True}, bench.pytorch_cuda
    specs = [("pytorch_cuda_fp32", cuda, (model,), {"precision": "fp32"}),
             ("pytorch_cuda_fp16_cl", cuda, (model,), fp16),
             ("torch_compile_fp16", cuda, (model,), {**fp16, "compile_mode": "default"}),
             ("torch_compile_cudagraphs_fp16", cuda, (model,), {**fp16, "compile_mode": "reduce-overhead"}),
             ("torch_compile_cudagraphs_fp8", fp8_torch.pytorch_cuda_fp8, (model,), {})]
    specs += [(f"onnxruntime_cuda_{prec}", ort_gpu.onnxruntime_cuda, (exported.artifact(prec), prec), {})
              for prec in ort_gpu.PRECISIONS]
    profile = shapes.Profile(p["batch_min"], p["batch_opt"], p["batch_max"])
    trt = {"trt_flavour": p["trt_flavour"], "trt_target": p["trt_target"], "workspace_gb": p["workspace_gb"]}
    specs += [(f"tensorrt_{precision}", trt_timing.tensorrt, (exported.model(precision), precision, profile), trt)
              for precision in export.PRECISIONS]
    return specs


def cpu_rows(p: dict) -> list[tuple]:
    """(row, factory, args, kwargs) of notebook 06's CPU rows (`--cpu`), named as its stages, for profile values `p`."""
    from mvlib import export
    exported, model = export.ensure_exported(p["variant"], p["weights"], p["img_size"], p["opset"], seed=p["seed"])
    return [("pytorch_cpu", bench.pytorch_cpu, (model,), {}),
            ("onnxruntime_cpu_fp32", bench.onnxruntime_cpu, (exported.onnx, "fp32"), {}),
            ("onnxruntime_cpu_int8", bench.onnxruntime_cpu, (exported.model("int8"), "int8"), {})]


def agreement_table(specs: Iterable[tuple], batches: Iterable[int], settings: bench.Settings) -> pd.DataFrame:
    """Each row of `specs` timed both ways at each batch (bench.agreement); a row that cannot run is one line with
    the reason in `not_timed`, and the others still run."""
    frames = []
    for name, factory, args, kwargs in specs:
        try:
            got = bench.agreement(factory, list(batches), settings, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 (a row that cannot run here is reported, the others still run)
            why = f"{type(err).__name__}: {err}".splitlines()[0]
            print(f"{name}: not timed: {why}")
            traceback.print_exc(limit=2)
            frames.append(pd.DataFrame([{"row": name, "not_timed": why}]))
            continue
        frames.append(got.assign(row=name, throughput_diff_pct=got.diff_pct, within_2pct=got.agrees, not_timed=""))
    return pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS) if frames else pd.DataFrame(columns=COLUMNS)


INTEGERS = ("batch", "fixed_samples", "rule_samples")


def _cell(value) -> str:
    """One markdown cell: 4 significant digits below 1, else 2 decimals; agreement as yes / no."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def markdown(table: pd.DataFrame, settings: bench.Settings) -> str:
    """The table in markdown, after a line naming the two windows."""
    fixed = dataclasses.replace(settings, rule=None).describe_window()  # the rows' own words (bench.agreement's)
    rule = dataclasses.replace(settings, rule=settings.rule or bench.StopRule()).describe_window()
    head = [f"{fixed}; stop rule: {rule}. {settings.repeats} windows of each, interleaved, per row and batch.", ""]
    cols = [c for c in HEADERS if c in table]
    lines = ["| " + " | ".join(HEADERS[c] for c in cols) + " | not timed |", "|" + " --- |" * (len(cols) + 1)]
    for r in table.to_dict("records"):
        why = r["not_timed"] if isinstance(r["not_timed"], str) else ""
        if why:
            cells = [r["row"]] + [""] * (len(cols) - 1) + [why]
        else:
            cells = [f"{r[c]:+.2f}" if c.endswith("_pct") else _cell(int(r[c]) if c in INTEGERS else r[c])
                     for c in cols] + [""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(head + lines) + "\n"


def write(table: pd.DataFrame, settings: bench.Settings, folder: Path | str) -> tuple[Path, Path]:
    """agreement.csv and agreement.md in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv, md = folder / "agreement.csv", folder / "agreement.md"
    table.to_csv(csv, index=False)
    md.write_text(markdown(table, settings))
    return csv, md


def verdict(table: pd.DataFrame) -> tuple[int, str]:
    """Exit status and one line: 0 when every timed row and batch agrees within 2 %, 1 otherwise."""
    ran = table[table.not_timed.fillna("") == ""]
    agree = int(ran.within_2pct.astype(bool).sum())
    line = (f"{len(ran)} row-batches timed both ways, {agree} agree within {bench.AGREEMENT_PCT:g} %; windows "
            f"{ran.fixed_wall_s.sum():.0f} s fixed vs {ran.rule_wall_s.sum():.0f} s with the rule; "
            f"{table.row[table.not_timed.fillna('') != ''].nunique()} rows not timed")
    return (0 if len(ran) and agree == len(ran) else 1), line


def with_rule(settings: bench.Settings, max_noise: float | None, max_drift: float | None) -> bench.Settings:
    """`settings` with a candidate stop rule: the study's rule with the bounds given (None keeps its own)."""
    if max_noise is None and max_drift is None:
        return settings
    from mvlib.bench_windows import StopRule
    base = settings.rule or StopRule()
    rule = dataclasses.replace(base, max_noise_pct=base.max_noise_pct if max_noise is None else max_noise,
                               max_drift_pct=base.max_drift_pct if max_drift is None else max_drift)
    return dataclasses.replace(settings, rule=rule)


def main(argv: list[str] | None = None) -> int:
    """Time the rows both ways, write the tables; 2 without CUDA, 1 if a timed row disagrees."""
    from mvlib import env
    from mvlib.driver import params
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full", help="profile the other parameters come from (default full)")
    ap.add_argument("--variant", help="timm variant (default the profile's: mobilevit_s)")
    ap.add_argument("--batches", type=int, nargs="+", help="batches (default the profile's gpu_batches)")
    ap.add_argument("--seconds", type=float, help="the fixed window and the rule's cap (default bench_seconds)")
    ap.add_argument("--rows", nargs="+", help="only these rows (notebook 06's stage names)")
    ap.add_argument("--out", default="build/window_agreement", help="folder of agreement.csv and agreement.md")
    ap.add_argument("--max-noise", type=float, help="a candidate rule: the median's 95%% CI bound in %% (default "
                    "the study's rule, bench_windows.StopRule)")
    ap.add_argument("--max-drift", type=float, help="a candidate rule: how far the window's halves' medians may "
                    "differ, in %% (default the study's rule)")
    ap.add_argument("--cpu", action="store_true", help="notebook 06's CPU rows (at cpu_batches) in place of its GPU "
                    "rows; needs no GPU, and 04's INT8 model for its INT8 row")
    args = ap.parse_args(argv)
    ok, why = env.cuda_status()
    if not ok and not args.cpu:
        print(f"window_agreement: needs a CUDA GPU: {why} (--cpu times the CPU rows)")
        return 2
    p = params.load_profile(args.profile)
    p["variant"] = args.variant or p["variant"]
    cuda = not args.cpu
    settings = with_rule(bench.profile_settings(p, args.seconds), args.max_noise, args.max_drift)
    specs = [s for s in (gpu_rows(p) if cuda else cpu_rows(p)) if not args.rows or s[0] in args.rows]
    table = agreement_table(specs, args.batches or p["gpu_batches" if cuda else "cpu_batches"], settings)
    csv, md = write(table, settings.on("cuda" if cuda else "cpu"), args.out)  # CPU rows: bench.HOST_RULE
    code, line = verdict(table)
    print(f"{csv}, {md}: {line}")
    return code


if __name__ == "__main__":
    sys.exit(main())
