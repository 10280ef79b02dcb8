"""One ModelOpt `entropy` calibration timed with its histograms on threads and on processes (mvlib.calib_speed),
on this machine: which way the study's default (processes from calib_speed.PROCESSES_FROM workers) should take
here, and proof that both make the same file. Writes nothing but build/histogram_speed/ (the two models, their
cache keys and a CSV).

    python tools/histogram_speed.py                         # mobilevit_s, 128 images, every core, INT8
    python tools/histogram_speed.py --images 64 --workers 8 --precision fp8
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mvlib import calib_speed, export, paths, quant  # noqa: E402


def timed(onnx_path: Path, out: Path, calib: np.ndarray, precision: str, workers: int, processes: bool) -> float:
    """Seconds of one entropy calibration, its histograms on `workers` threads or processes."""
    out.unlink(missing_ok=True)  # a cached file would time nothing (quant.quantize then makes it again)
    saved = calib_speed.use_processes
    calib_speed.use_processes = lambda n, environ=None: processes
    try:
        start = time.perf_counter()
        quant.quantize(onnx_path, out, calib, "entropy", precision=precision, histogram_threads=workers)
        return time.perf_counter() - start
    finally:
        calib_speed.use_processes = saved


def main(argv=None) -> int:
    """Parse, export (or reuse) the model, time both ways, print and save the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="mobilevit_s", help="timm variant (default mobilevit_s)")
    ap.add_argument("--weights", default="auto", help="auto, pretrained, random or a checkpoint (default auto)")
    ap.add_argument("--images", type=int, default=128, help="calibration images (default 128; the study: 512)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="histogram workers")
    ap.add_argument("--precision", default="int8", choices=quant.PRECISIONS)
    ap.add_argument("--out", default=str(paths.BUILD / "histogram_speed"), help="folder of the models and CSV")
    args = ap.parse_args(argv)
    exported, _ = export.ensure_exported(args.variant, args.weights)
    # images of a natural range, fresh per run: the timing does not depend on their content, only on their count
    calib = np.random.default_rng(0).standard_normal((args.images, 3, 256, 256)).astype(np.float32)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for way in ("threads", "processes"):
        model = out / f"{args.variant}.{args.precision}.{way}.onnx"
        seconds = timed(exported.onnx, model, calib, args.precision, args.workers, way == "processes")
        rows.append({"way": way, "workers": args.workers, "images": args.images, "seconds": round(seconds, 1),
                     "file_bytes": model.stat().st_size})
        print(f"{way}: {seconds:.1f} s", flush=True)
    table = pd.DataFrame(rows)
    same = (out / f"{args.variant}.{args.precision}.threads.onnx").read_bytes() == \
        (out / f"{args.variant}.{args.precision}.processes.onnx").read_bytes()
    table["same_file"] = same
    table.to_csv(out / "histogram_speed.csv", index=False)
    print(table.to_string(index=False))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
