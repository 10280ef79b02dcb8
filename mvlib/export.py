"""Export a timm MobileViT to ONNX with a dynamic batch axis, check it, and save reference I/O.

Serves: notebooks 01 to 06 (glue.export is every notebook's first stage).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from mvlib import accuracy, io, paths, precisions

# torch and timm are imported where a model is made: the processes that quantize import this module for its
# artifact names only, and timm cost each of them 2 s of import
if TYPE_CHECKING:
    import torch

MIN_OPSET = 17  # LayerNormalization stays one op from opset 17
MAX_OPSET = 20  # TensorRT 10.0's ONNX parser takes opsets 9 to 20


# Every file derived from one exported model, by role: the one place their names are written (the precisions'
# model files and their SiLU-plugin rewrites come from mvlib.precisions). Writers and readers ask
# Exported.artifact(role) / Exported.model(precision, plugin) for the path.
ARTIFACTS = {
    **{name: p.artifact for name, p in precisions.TABLE.items()},   # model.onnx (01), .fp16 (03), .int8/.fp8 (04)
    "reference_inputs": "reference_inputs.json",            # notebook 01 (polygraphy --load-inputs)
    "reference_outputs": "reference_outputs.json",          # notebook 01 (polygraphy --load-outputs)
    **{f"{name}_record": p.artifact.removesuffix(".onnx") + ".json"   # notebook 04: why that policy, or why none
       for name, p in precisions.TABLE.items() if p.quantized},
    **{f"plugin_{name}": p.plugin_artifact for name, p in precisions.TABLE.items()  # notebooks 02 and 05
       if p.plugin_artifact},
    "ort_reference": "onnxrt_reference_outputs.json",       # notebook 05 (ONNX Runtime on model.onnx)
}
PRECISIONS = precisions.EVERY_GPU  # what every GPU runs; FP8 (8.9 and newer) has stages of its own


@dataclass
class Exported:
    """An exported model: its folder, ONNX path, weights description and export settings; owns its artifacts' names."""
    dir: Path
    onnx: Path
    weights: dict
    settings: dict = field(default_factory=dict)

    def path(self, name: str) -> Path:
        """A file in the model's keyed folder by file name (prefer `artifact` for the study's own files)."""
        return self.dir / name

    def artifact(self, role: str) -> Path:
        """The path of one of the study's artifacts of this model, by role (ARTIFACTS)."""
        if role not in ARTIFACTS:
            raise ValueError(f"unknown artifact {role!r}; known: {', '.join(ARTIFACTS)}")
        return self.dir / ARTIFACTS[role]

    def model(self, precision: str, plugin: bool = False) -> Path:
        """The ONNX file of a precision (fp32, fp16, int8), or its SiLU-plugin rewrite."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        return self.artifact(f"plugin_{precision}" if plugin else precision)


def check_opset(opset: int) -> int:
    """Reject opsets that split LayerNorm or that TensorRT 10's parser may refuse."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}: below {MIN_OPSET} LayerNorm is split "
                         f"into many ops, above {MAX_OPSET} TensorRT 10.0's parser refuses the file; pick e.g. 17")
    return opset


def check_image_size(img_size: int) -> int:
    """MobileViT unfolds 2x2 patches after a total stride of 32: sizes must be multiples of 32."""
    if img_size < 64 or img_size % 32:
        raise ValueError(f"image size {img_size} is not supported: "
                         "use a multiple of 32 of at least 64 (256 is the default)")
    return img_size


def export_onnx(model: torch.nn.Module, path: Path, img_size: int, opset: int) -> Path:
    """Export `model` to `path` with a dynamic batch axis and check it with onnx.checker (atomic)."""
    import torch
    check_opset(opset)
    check_image_size(img_size)
    example = torch.from_numpy(accuracy.feeds([2], img_size, seed=1)[0][accuracy.INPUT])
    with io.atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(model, (example,), str(tmp), input_names=[accuracy.INPUT],
                          output_names=[accuracy.OUTPUT], opset_version=opset, dynamo=False,
                          dynamic_axes={accuracy.INPUT: {0: "batch"}, accuracy.OUTPUT: {0: "batch"}})
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def ensure_exported(variant: str, weights: str = "auto", img_size: int = 256, opset: int = 17,
                    seed: int = 0) -> tuple[Exported, torch.nn.Module]:
    """Load the model and export it, reusing an existing export made with the same settings."""
    import timm
    import torch

    from mvlib.model import load_model
    check_opset(opset)
    check_image_size(img_size)
    model, info = load_model(variant, weights, seed)
    out_dir = paths.model_dir(variant, info["tag"], img_size, opset)
    onnx_path = out_dir / ARTIFACTS["fp32"]
    settings = {"variant": variant, "weights": info, "img_size": img_size, "opset": opset,
                "torch": torch.__version__}
    # keyed by the weights themselves, not how they were described: 'auto' falling back to random (label and reason
    # in `info`) is the same export as 'random', so a papermill run and a driver run share one model.onnx
    # and by timm's version: its model definitions (and their seeded initialisation) change between releases, so an
    # export made with another timm is another graph (timm 1.0.3's mobilevit_xxs has 969 nodes, 1.0.31's 933)
    key = settings | {"weights": {k: v for k, v in info.items() if k not in ("label", "fallback_reason")},
                      "timm": timm.__version__}
    io.cached(onnx_path, key, lambda tmp: export_onnx(model, tmp, img_size, opset), "ONNX export")
    return Exported(out_dir, onnx_path, info, settings), model


def verify(exported: Exported, model: torch.nn.Module, batches=(1, 3), atol: float = 1e-4, rtol: float = 1e-3,
           seed: int | None = None):
    """Compare ONNX Runtime (CPU) with PyTorch FP32 on fresh random inputs; save them as reference I/O."""
    img = exported.settings["img_size"]
    data = accuracy.feeds(batches, img, seed=seed)
    results = accuracy.run([accuracy.torch_runner(model, img), accuracy.onnxrt_runner(exported.onnx, "onnxrt-fp32")],
                           data)
    passed = accuracy.check(results, atol=atol, rtol=rtol)
    table = accuracy.table(results, reference="pytorch-fp32", atol=atol, rtol=rtol)
    save_reference(exported, data, results)
    return table, passed


def save_reference(exported: Exported, data: list[dict], results) -> None:
    """Save inputs and PyTorch outputs in polygraphy's formats (--load-inputs / --load-outputs)."""
    from polygraphy.json import save_json
    with io.atomic_path(exported.artifact("reference_inputs")) as tmp:
        save_json(data, str(tmp))
    with io.atomic_path(exported.artifact("reference_outputs")) as tmp:
        results.save(str(tmp))


def load_reference(exported: Exported):
    """The saved reference inputs (list of feeds) and outputs (polygraphy RunResults)."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json
    return (load_json(str(exported.artifact("reference_inputs"))),
            RunResults.load(str(exported.artifact("reference_outputs"))))


def describe(onnx_path: Path | str) -> dict:
    """A short description of an ONNX file: I/O shapes, opset, node and parameter counts, size."""
    model = onnx.load(str(onnx_path))
    dims = lambda t: [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]  # noqa: E731
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return {"file": Path(onnx_path).name, "opset": model.opset_import[0].version,
            "inputs": {i.name: dims(i) for i in model.graph.input},
            "outputs": {o.name: dims(o) for o in model.graph.output},
            "nodes": len(model.graph.node), "parameters": n_params,
            "size_mib": round(Path(onnx_path).stat().st_size / 2**20, 2)}
