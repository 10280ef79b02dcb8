"""FP8 in PyTorch (torchao) for notebook 06: which GPUs, which Linear layers, the numerics, the backend's skips."""
import copy

import numpy as np
import pytest
import torch

from mvlib import bench, fp8, fp8_torch, metrics
from mvlib.skips import StageSkipped

FP8_GPU = fp8_torch.supports_here()


@pytest.mark.parametrize("cap, ok", [((7, 5), False), ((8, 0), False), ((8, 6), False), ((8, 9), True),
                                     ((9, 0), True), ((12, 0), True), (None, False)])
def test_supports_fp8_from_sm89(cap, ok):
    assert fp8_torch.supports_fp8(cap)[0] is ok


def test_skips_say_why(monkeypatch):
    monkeypatch.setattr(fp8_torch, "cuda_capability", lambda: None)
    with pytest.raises(StageSkipped, match="no CUDA GPU") as err:
        fp8_torch.require_here()
    assert not isinstance(err.value, fp8.NoFP8)  # no GPU at all: the tier says so, not the FP8 hardware
    monkeypatch.setattr(fp8_torch, "cuda_capability", lambda: (8, 6))  # an A10
    with pytest.raises(fp8.NoFP8, match="8.6 has no FP8"):
        fp8_torch.require_here()
    monkeypatch.setattr(fp8_torch, "cuda_capability", lambda: (9, 0))
    assert fp8_torch.supports_here() == (True, "")
    fp8_torch.require_here()


@pytest.mark.skipif(FP8_GPU[0], reason="this machine has an FP8 GPU: the row runs (test_fp8_row_on_the_gpu)")
def test_backend_and_accuracy_skip_without_an_fp8_gpu(xxs):
    settings = bench.Settings(img_size=256, seconds=0.1, repeats=2)
    with pytest.raises(StageSkipped, match="FP8 PyTorch row"):
        fp8_torch.pytorch_cuda_fp8(settings, xxs[1])
    with pytest.raises(StageSkipped, match="FP8 PyTorch row"):
        fp8_torch.accuracy(settings, xxs[1], [1], bench.Reference(xxs[1], settings))


def test_linear_layers_of_mobilevit(xxs):
    table = fp8_torch.linear_layers(xxs[1])
    # mobilevit_xxs: 9 transformer layers x (qkv, proj, fc1, fc2) and the classifier
    assert len(table) == 37 and table.fp8_eligible.sum() == 36
    head = table[~table.fp8_eligible].iloc[0]
    assert (head.layer, head.in_features, head.out_features) == ("head.fc", 320, 1000)


@pytest.fixture
def cpu_fp8(monkeypatch):
    """torchao's FP8 quantization on the CPU: its GPU gate lifted, torch's CPU _scaled_mm does the FP8 matmuls.

    The numerics are torchao's own (Float8Tensor weights, dynamic per-tensor activation scales); only the check
    that a CUDA GPU of 8.9+ is present is bypassed, so that the quantization is tested where no GPU exists.
    """
    import torchao.quantization.quant_api as quant_api
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)


def test_quantize_linear_fp8_makes_the_eligible_linears_fp8(xxs, cpu_fp8):
    x = torch.from_numpy(metrics.random_images(4, 256, seed=7))
    with torch.inference_mode():
        ref = xxs[1].float()(x).numpy()
    fp16 = copy.deepcopy(xxs[1]).half().eval()
    with torch.inference_mode():
        out16 = fp16(x.half()).float().numpy()
    net = copy.deepcopy(xxs[1]).half().eval()
    table = fp8_torch.quantize_linear_fp8(net)
    assert table.fp8.sum() == 36 and not table.set_index("layer").loc["head.fc", "fp8"]
    with torch.inference_mode():
        out8 = net(x.half()).float().numpy()
    m8, m16 = metrics.compare(ref, out8), metrics.compare(ref, out16)
    assert m8["cosine_min"] > 0.999 and m8["top1_agreement"] == 1.0
    assert m8["max_abs"] > m16["max_abs"]  # the FP8 Linears really round more than FP16 alone
    linear_params = sum(p.numel() for _, m in net.named_modules() if isinstance(m, torch.nn.Linear)
                        and m is not net.head.fc for p in [m.weight])
    saved = fp8_torch.weight_bytes(fp16) - fp8_torch.weight_bytes(net)
    assert saved == pytest.approx(linear_params * 1 - 36 * 4, abs=1)  # 2 -> 1 byte per weight, plus a scale each


@pytest.mark.gpu
@pytest.mark.skipif(not FP8_GPU[0], reason=f"needs an FP8 GPU: {FP8_GPU[1]}")
def test_fp8_row_on_the_gpu(xxs):
    settings = bench.Settings(img_size=256, seconds=0.2, repeats=2, variant="mobilevit_xxs")
    reference = bench.Reference(xxs[1], settings)
    rows = bench.measure_all(fp8_torch.pytorch_cuda_fp8, [1, 8], settings, xxs[1], accuracy=reference)
    assert list(rows.precision.unique()) == ["fp8"] and (rows.throughput_ips > 0).all()
    acc = reference.table()
    assert list(acc.columns) == bench.ACCURACY_COLUMNS and len(acc) == 2
    assert (acc.cosine_min > 0.99).all() and np.isfinite(acc.max_abs).all()
    alone = fp8_torch.accuracy(settings, xxs[1], [8], bench.Reference(xxs[1], settings))
    assert list(alone.columns) == bench.ACCURACY_COLUMNS and alone.precision.iloc[0] == "fp8"
