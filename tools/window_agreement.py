"""Every GPU-bound row of notebook 06 timed two ways in one run: the early-stopping window
(bench_windows.StopRule) against the old fixed `bench_seconds` window, interleaved on the same warm launch; a CSV
with the difference per row.

Issue 29 asks that the two agree within 2 % on the H200. Run it on the GPU machine after a study run made the
ONNX variants (notebooks 01 to 05), with the profile the study used:

    python tools/window_agreement.py --profile full --out build/window_agreement.csv

Rows that cannot run here (no FP8 GPU, a missing ONNX file, no TensorRT runtime) are listed with the reason.
"""
import argparse
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from mvlib import bench, export, fp8_torch  # noqa: E402
from mvlib.driver import params  # noqa: E402


def rows(p: dict):
    """(name, factory, args, kwargs) of every GPU-bound row of notebook 06."""
    from mvlib.tensorrt import shapes
    from mvlib.tensorrt import timing as trt_timing
    exported, model = export.ensure_exported(p["variant"], p["weights"], p["img_size"], p["opset"], seed=p["seed"])
    profile = shapes.Profile(p["batch_min"], p["batch_opt"], p["batch_max"])
    cuda = bench.pytorch_cuda
    yield "pytorch_cuda_fp32", cuda, (model,), {"precision": "fp32"}
    yield "pytorch_cuda_fp16_cl", cuda, (model,), {"precision": "fp16", "channels_last": True}
    yield "torch_compile_fp16", cuda, (model,), {"precision": "fp16", "channels_last": True, "compile_mode": "default"}
    yield "torch_compile_cudagraphs_fp16", cuda, (model,), {"precision": "fp16", "channels_last": True,
                                                            "compile_mode": "reduce-overhead"}
    yield "torch_compile_cudagraphs_fp8", fp8_torch.pytorch_cuda_fp8, (model,), {}
    trt = {"trt_flavour": p["trt_flavour"], "trt_target": p["trt_target"], "workspace_gb": p["workspace_gb"]}
    for precision in export.PRECISIONS:
        yield f"tensorrt_{precision}", trt_timing.tensorrt, (exported.model(precision), precision, profile), trt


def main() -> int:
    """Time every row both ways; write the CSV; exit 1 if a row that ran disagrees by more than 2 %."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full")
    ap.add_argument("--out", default="build/window_agreement.csv")
    args = ap.parse_args()
    p = params.load_profile(args.profile)
    settings = bench.Settings(img_size=p["img_size"], seconds=p["bench_seconds"], repeats=p["bench_repeats"],
                              seed=p["seed"], variant=p["variant"])
    tables, skipped = [], []
    for name, factory, fargs, kwargs in rows(p):
        try:
            tables.append(bench.agreement(factory, p["gpu_batches"], settings, *fargs, **kwargs).assign(row=name))
        except Exception as err:  # noqa: BLE001 (a row that cannot run here is reported, the others still run)
            skipped.append({"row": name, "why": f"{type(err).__name__}: {err}"})
            print(f"{name}: not timed: {type(err).__name__}: {err}")
            traceback.print_exc(limit=2)
    table = pd.concat(tables + [pd.DataFrame(skipped)], ignore_index=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    ran = table[table.fixed_ips.notna()] if "fixed_ips" in table else table.iloc[:0]
    print(f"{args.out}: {len(ran)} rows timed both ways, {int(ran.agrees.sum()) if len(ran) else 0} agree within "
          f"{bench.AGREEMENT_PCT:g}%; windows {ran.fixed_wall_s.sum():.0f} s fixed vs {ran.rule_wall_s.sum():.0f} s "
          f"with the rule" if len(ran) else f"{args.out}: no row ran")
    return 0 if len(ran) and ran.agrees.all() else 1


if __name__ == "__main__":
    sys.exit(main())
