"""Accuracy metrics against a reference: max/mean abs error, cosine similarity, top-1 agreement."""
import numpy as np


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


def random_images(batch: int, img_size: int, seed: int | None = None) -> np.ndarray:
    """Fresh random inputs in the model's input range [0, 1] (never zeros or ones), float32 NCHW."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, size=(batch, 3, img_size, img_size)).astype(np.float32)
