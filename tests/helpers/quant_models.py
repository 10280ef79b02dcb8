"""Shared inputs of the quantization tests (test_quant*, test_fp8): images, the FP32 evaluator, `all` Q/DQ models.

A test module loads them with `pytest_plugins = ["quant_models"]` (once per session, shared). The Q/DQ
models are made under build/tests/quant/ through quant.quantize's own cache, so every module after the first
reuses them instead of calibrating again.
"""
import warnings

import pytest

from mvlib import data, paths, quant, quant_eval


@pytest.fixture(scope="session")
def images(xxs):
    """Shipped sample images: 4 to calibrate, 6 to evaluate (no network in tests)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback banner
        return data.load(xxs[1], 256, calib_images=4, eval_images=6, seed=0, imagenette=False)


@pytest.fixture(scope="session")
def ev(xxs, images):
    """FP32 reference logits of the evaluation images."""
    return quant_eval.Evaluator.from_onnx(xxs[0].onnx, images.eval, images.eval_labels)


def quantized_all(xxs, images, precision: str):
    """mobilevit_xxs with policy `all`, max calibration, at `precision`: (path, quantize's summary)."""
    path = paths.BUILD / "quant" / f"all.{precision}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, quant.quantize(xxs[0].onnx, path, images.calib, "max", precision=precision)


@pytest.fixture(scope="session")
def q_all(xxs, images):
    """mobilevit_xxs with policy `all`, max calibration, INT8."""
    return quantized_all(xxs, images, "int8")


@pytest.fixture(scope="session")
def q_fp8(xxs, images):
    """mobilevit_xxs with policy `all`, max calibration, FP8 (E4M3) Q/DQ."""
    return quantized_all(xxs, images, "fp8")
