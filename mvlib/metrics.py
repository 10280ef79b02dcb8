"""Accuracy metrics against a reference and the study's one accuracy criterion (notebooks 01 and 03-06).

Every precision's accuracy is judged by `failures(metrics, tolerance)`: the metrics of `compare` (plus the
per-image polygraphy verdicts where per-logit bounds are set) against that precision's `Tolerance` in
`mvlib.precisions.TABLE`. A bound left None is not checked.

Serves: notebooks 01 and 03 to 06 (every accuracy comparison).
"""
from dataclasses import dataclass

import numpy as np

CRITERION = ("logits against the FP32 model's on the same fresh random images: worst-image cosine, per-logit "
             "atol/rtol on every image, mean cosine, top-1 agreement and top-1 drop on labels, each bound where set")


@dataclass(frozen=True)
class Tolerance:
    """The bounds of the one accuracy criterion for one precision (None: not checked)."""
    atol: float | None = None              # per logit: an element fails where it exceeds both atol and rtol
    rtol: float | None = None
    min_cosine: float | None = None        # the worst image's cosine similarity
    min_cosine_mean: float | None = None   # the mean cosine similarity over the images
    min_top1_agreement: float | None = None  # share of images whose top-1 class matches the reference's
    max_top1_drop_points: float | None = None  # top-1 accuracy lost on labelled images, in points


def per_sample(ref: np.ndarray, out: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample max/mean abs error, cosine similarity and top-1 agreement of `out` against `ref`, in float64."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs output {out.shape}")
    ref2, out2 = ref.reshape(ref.shape[0], -1), out.reshape(out.shape[0], -1)
    diff = np.abs(ref2 - out2)
    denom = np.linalg.norm(ref2, axis=1) * np.linalg.norm(out2, axis=1)
    cos = np.sum(ref2 * out2, axis=1) / np.where(denom == 0, np.finfo(np.float64).tiny, denom)
    return {"max_abs": diff.max(1), "mean_abs": diff.mean(1), "cosine": cos,
            "top1_agree": ref2.argmax(1) == out2.argmax(1)}


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Compare logits `out` with reference logits `ref` (both [batch, classes]), in float64."""
    s = per_sample(ref, out)
    return {
        "n": int(len(s["cosine"])),
        "max_abs": float(s["max_abs"].max()),
        "mean_abs": float(s["mean_abs"].mean()),
        "cosine_mean": float(s["cosine"].mean()),
        "cosine_min": float(s["cosine"].min()),
        "top1_agreement": float(np.mean(s["top1_agree"])),
    }


def failures(m: dict, tol: Tolerance, samples_within_tol: int | None = None) -> list[str]:
    """Why metrics `m` (from `compare`) miss `tol`, in words; empty when they pass.

    `samples_within_tol` is how many of the m["n"] images pass the per-logit atol/rtol check (required when
    tol sets atol or rtol: that check needs the outputs, see accuracy.judge)."""
    out = []
    if tol.atol is not None or tol.rtol is not None:
        if samples_within_tol is None:
            raise ValueError("tolerance sets atol/rtol: pass samples_within_tol (accuracy.judge counts them)")
        if samples_within_tol < m["n"]:
            out.append(f"{m['n'] - samples_within_tol} of {m['n']} images outside atol {tol.atol} / rtol {tol.rtol}")
    if tol.min_cosine is not None and m["cosine_min"] < tol.min_cosine:
        out.append(f"worst-image cosine {m['cosine_min']:.6f} < {tol.min_cosine}")
    if tol.min_top1_agreement is not None and m["top1_agreement"] < tol.min_top1_agreement:
        out.append(f"top-1 agreement {100 * m['top1_agreement']:.1f}% < {100 * tol.min_top1_agreement:.0f}%")
    if tol.min_cosine_mean is not None and m["cosine_mean"] < tol.min_cosine_mean:
        out.append(f"mean cosine {m['cosine_mean']:.5f} < {tol.min_cosine_mean}")
    if tol.max_top1_drop_points is not None and "top1_drop_points" in m \
            and m["top1_drop_points"] > tol.max_top1_drop_points:
        out.append(f"top-1 drop {m['top1_drop_points']:.2f} points > {tol.max_top1_drop_points}")
    return out


def bounded(rows, tol: Tolerance | None) -> str:
    """The metrics `tol` bounds, worst over `rows` (a table), in words: 'cosine_min 0.999950' or 'cosine_mean
    0.99950, top-1 agreement 0.996'; without a tolerance, the worst-image cosine."""
    parts = []
    if tol is None or tol.min_cosine is not None:
        parts.append(f"cosine_min {rows['cosine_min'].min():.6f}")
    if tol is not None and tol.min_cosine_mean is not None:
        parts.append(f"cosine_mean {rows['cosine_mean'].min():.5f}")
    if tol is not None and tol.min_top1_agreement is not None:
        parts.append(f"top-1 agreement {rows['top1_agreement'].min():.3f}")
    return ", ".join(parts)


def random_images(batch: int, img_size: int, seed: int | None = None) -> np.ndarray:
    """Fresh random inputs in the model's input range [0, 1] (never zeros or ones), float32 NCHW."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, size=(batch, 3, img_size, img_size)).astype(np.float32)
