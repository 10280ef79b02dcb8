"""The batch optimization profile of an engine, and the single image input of the model it is built from.

Serves: notebooks 03 to 06 (the profile of batch_min, batch_opt, batch_max).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Profile:
    """An optimization profile over the batch dimension: 1 <= min <= opt <= max, checked on creation."""
    min: int
    opt: int
    max: int

    def __post_init__(self):
        vals = (self.min, self.opt, self.max)
        if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in vals) \
                or not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile min={self.min}, opt={self.opt}, max={self.max} is invalid: use integers "
                             "with 1 <= batch_min <= batch_opt <= batch_max (e.g. 1, 16, 32)")

    def covers(self, batch: int) -> bool:
        """Whether an engine with this profile accepts `batch`."""
        return self.min <= batch <= self.max

    def check(self, batch: int) -> int:
        """`batch`, or a ValueError naming the fix when the profile does not cover it (the one rule)."""
        if not self.covers(batch):
            raise ValueError(f"batch {batch} is outside the engine's optimization profile [{self.min}, {self.max}]; "
                             f"split the batch, or rebuild the engine with batch_min <= {batch} <= batch_max")
        return batch

    def chunks(self, images: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Chunks of at most `max` images with their count of real images; a tail below `min` is padded."""
        out = []
        for i in range(0, len(images), self.max):
            chunk = images[i:i + self.max]
            n = len(chunk)
            if n < self.min:  # the profile refuses smaller batches: repeat the last image, drop its outputs later
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.min - n, axis=0)])
            out.append((chunk, n))
        return out

    def as_list(self) -> list[int]:
        """[min, opt, max]."""
        return [int(self.min), int(self.opt), int(self.max)]


def onnx_input(onnx_path: Path | str) -> tuple[str, tuple[int, ...]]:
    """Name and shape (batch dimension as -1) of the model's single image input."""
    import onnx  # here, not at the top: the build child imports this module and is told the input (0.7 s of import)
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path} has {len(inputs)} inputs ({[i.name for i in inputs]}); the engine "
                         "profile here is for models with one image input")
    dims = inputs[0].type.tensor_type.shape.dim
    rest = [d.dim_value for d in dims[1:]]
    if not all(rest):
        raise ValueError(f"{onnx_path}: input {inputs[0].name!r} has dynamic non-batch dimensions "
                         f"{[d.dim_param or d.dim_value for d in dims]}; export with a fixed image size")
    return inputs[0].name, (-1, *rest)
