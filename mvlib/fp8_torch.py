"""FP8 in PyTorch on the GPU tier: torchao's FP8 inference quantization of the model's Linear layers (notebook 06).

torchao's `quantize_(model, Float8DynamicActivationFloat8WeightConfig())` replaces each eligible `nn.Linear`
weight by a `Float8Tensor` (E4M3, one scale per tensor) and quantizes the layer's input on the fly (dynamic, one
scale per tensor) before `torch._scaled_mm`: both operands FP8, the product accumulated in FP32 and returned in
the model's dtype. A Linear whose in or out features are not multiples of 16 (`_scaled_mm`'s alignment) stays in
float (MobileViT's classifier, 1000 outputs); convolutions, most of MobileViT's arithmetic, stay FP16. torchao
itself refuses to quantize without a CUDA GPU of compute capability 8.9 or newer, so every entry point here checks
the GPU first and skips with the reason (`fp8.NoFP8`) on anything older.

The row is `bench.pytorch_cuda` (FP16, channels_last, `torch.compile` with CUDA graphs) run on the quantized
model, so FP8 and the FP16 row differ in the Linear layers only; accuracy comes from `bench.Reference` like every
other row of notebook 06 (its `ACCURACY_COLUMNS`).

Serves: notebook 06 (the torchao FP8 row).
"""
import copy
import dataclasses
import itertools

import pandas as pd

from mvlib import bench, fp8, precisions
from mvlib.skips import StageSkipped

ALIGN = 16  # torch._scaled_mm needs both matrix dimensions of the weight to be multiples of 16


def supports_fp8(capability: str | tuple[int, int] | None) -> tuple[bool, str]:
    """Whether torchao's FP8 inference runs on a GPU of `capability` ('9.0' or (9, 0)), and why not: sm89+."""
    return fp8.has_fp8(capability)


def cuda_capability() -> tuple[int, int] | None:
    """The compute capability of the GPU PyTorch uses, or None where PyTorch sees no CUDA GPU."""
    import torch
    return tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None


def supports_here() -> tuple[bool, str]:
    """Whether this machine runs torchao's FP8 inference: torchao imports, a CUDA GPU of compute capability 8.9+."""
    try:
        import torchao  # noqa: F401
    except ImportError as err:
        return False, f"torchao is not installed ({err}): pip install torchao"
    cap = cuda_capability()
    if cap is None:
        import torch
        return False, (f"PyTorch sees no CUDA GPU (torch {torch.__version__}); FP8 needs compute capability "
                       f"{precisions.get('fp8').min_capability}+")
    return supports_fp8(cap)


def require_here() -> None:
    """Nothing where FP8 runs here; else a skip with the reason (fp8.NoFP8 for a GPU without FP8)."""
    ok, why = supports_here()
    if not ok:
        cap = cuda_capability()
        no_fp8 = cap is not None and not supports_fp8(cap)[0]  # the GPU's, not the install's
        raise (fp8.NoFP8 if no_fp8 else StageSkipped)(f"FP8 PyTorch row: {why}")


def linear_layers(model) -> pd.DataFrame:
    """Every nn.Linear of `model`: its features and whether torchao can make it FP8 (both multiples of 16)."""
    import torch
    rows = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            ok = mod.in_features % ALIGN == 0 and mod.out_features % ALIGN == 0
            rows.append({"layer": name, "in_features": mod.in_features, "out_features": mod.out_features,
                         "fp8_eligible": ok, "why_not": "" if ok else f"features not multiples of {ALIGN}"})
    return pd.DataFrame(rows, columns=["layer", "in_features", "out_features", "fp8_eligible", "why_not"])


def quantize_linear_fp8(model) -> pd.DataFrame:
    """Quantize `model`'s Linear layers in place with torchao's FP8 dynamic activation + weight config.

    `set_inductor_config=False` keeps torchao from changing torch.compile's global settings, which would
    also change every row compiled after this one. Returns `linear_layers` with `fp8`: whether the weight
    really became a Float8Tensor. torchao raises on a machine without an FP8 GPU (call `require_here` first).
    """
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_
    table = linear_layers(model)
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(set_inductor_config=False))
    modules = dict(model.named_modules())
    table["fp8"] = [type(modules[name].weight).__name__ == "Float8Tensor" for name in table.layer]
    return table


def weight_bytes(model) -> float:
    """Bytes of the parameters and buffers, a Float8Tensor counted as its FP8 data plus its scale."""
    total = 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        if type(t).__name__ == "Float8Tensor":
            total += t.qdata.numel() * t.qdata.element_size() + t.scale.numel() * t.scale.element_size()
        else:
            total += t.numel() * t.element_size()
    return float(total)


def pytorch_cuda_fp8(settings: bench.Settings, model, channels_last: bool = True,
                     compile_mode: str | None = "reduce-overhead") -> bench.Backend:
    """The FP8 row: the model in FP16 with its Linear layers FP8 (torchao), then bench.pytorch_cuda's FP16 path.

    With the defaults it is the FP16 `torch.compile` + CUDA graphs row with FP8 Linears, so the two rows
    compare FP8 against FP16 and nothing else. Skips with the reason on a machine without an FP8 GPU.
    """
    require_here()
    import torch
    import torchao
    net = copy.deepcopy(model).to("cuda", torch.float16).eval()
    layers = quantize_linear_fp8(net)
    base = bench.pytorch_cuda(settings, net, precision="fp16", channels_last=channels_last, compile_mode=compile_mode)
    n, total = int(layers.fp8.sum()), len(layers)
    fp16, fp8_label = precisions.label("fp16"), precisions.label("fp8")
    label = base.label.replace(fp16, f"{fp8_label} (Linear) + {fp16}", 1)
    notes = (f"{base.notes}; torchao {torchao.__version__} Float8DynamicActivationFloat8WeightConfig (E4M3, "
             f"per-tensor scales, dynamic activations): {n} of {total} Linear layers FP8, convolutions FP16")
    return dataclasses.replace(base, precision="fp8", label=label, notes=notes,
                               artifact="weights in memory (FP8 Linear weights, FP16 elsewhere; no file)",
                               artifact_bytes=weight_bytes(net))


def accuracy(settings: bench.Settings, model, batches, reference: bench.Reference, **kwargs) -> pd.DataFrame:
    """The FP8 row's accuracy against the FP32 reference without timing it: one bench.ACCURACY_COLUMNS row per batch.

    `kwargs` go to `pytorch_cuda_fp8`. Timing the row with `bench.measure_all(..., accuracy=reference)` checks
    the same logits; this is for a notebook that wants the accuracy alone.
    """
    backend = pytorch_cuda_fp8(settings, model, **kwargs)
    rows = [reference.check(backend, int(b), backend.logits(backend.prepare(int(b))())) for b in batches]
    return pd.DataFrame(rows, columns=bench.ACCURACY_COLUMNS)
