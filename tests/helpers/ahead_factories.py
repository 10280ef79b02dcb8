"""Backend factories for the compile-ahead child's tests (tests/driver/test_ahead.py): a small network compiled by
Inductor on the CPU through the study's cache folders, and one whose launch never ends."""
import json
import sys
import time

import torch

from mvlib import bench


class Small(torch.nn.Module):
    """A conv, a SiLU and a linear head: enough graph for Inductor to generate and cache kernels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.nn.functional.silu(self.conv(x)).mean((2, 3)))


def cpu_compiled(settings, net, scale: int = 1) -> bench.Backend:
    """torch.compile (default mode, static shapes) of Small on the CPU, one compile per batch as pytorch_cuda's."""
    bench.compile_caches()
    small = Small().eval()

    def prepare(batch: int):
        x = torch.randn(batch * scale, 3, 16, 16)
        torch._dynamo.reset()
        fn = torch.compile(small, dynamic=False)

        def launch():
            with torch.inference_mode():
                return fn(x)
        return launch
    return bench.Backend("torch.compile", "cpu", "fp32", "Small", prepare, "none")


def sleepy(settings, net) -> bench.Backend:
    """A backend whose first launch waits for ever (the child is still compiling when the run stops)."""
    return bench.Backend("none", "cpu", "fp32", "sleepy", lambda batch: lambda: time.sleep(3600), "none")


def failing(settings, net) -> bench.Backend:
    """A configuration that cannot be made here (as the FP8 row on a GPU without FP8)."""
    raise RuntimeError("no FP8 on this GPU")


def silent(settings, net) -> bench.Backend:
    """A configuration that fails with an exception that has no message."""
    raise AssertionError()


def cache_counts(batch: int) -> dict:
    """In a fresh process: compile Small at `batch`; the compile caches' counts (bench.cache_counts)."""
    cpu_compiled(None, None).prepare(batch)()
    return bench.cache_counts()


if __name__ == "__main__":
    print(json.dumps(cache_counts(int(sys.argv[1]))))
