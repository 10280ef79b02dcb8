"""The SiLU kernel in PyTorch: the kernel library through ctypes, launched on PyTorch's current CUDA stream, as a
plain call in eager mode and as the registered op `torch.ops.mvlib.silu` under torch.compile; nn.SiLU swapped
for it. Serves notebook 05 (through gpu_checks); tests/silu/test_torch_op.py.

Imports stay light: torch and mvlib.silu.build (pandas, the standard library), so this module also imports on
a GPU machine that has PyTorch and nothing else of the study's stack.
"""
import ctypes
import functools
from pathlib import Path

import torch

from mvlib.silu import build

DTYPE_CODES = {"float32": 0, "float16": 1}  # MV_SILU_FLOAT32 / MV_SILU_FLOAT16 (silu_kernel.h)


@functools.cache
def kernel_library(path: str | None = None) -> ctypes.CDLL:
    """The kernel library through ctypes, with the C ABI's argument types declared."""
    path = str(path or build.library_path())
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: "
                                "run `bash silu_plugin/build.sh` (needs nvcc) or mvlib.silu.build.build()")
    try:
        lib = ctypes.CDLL(path)
    except OSError as err:
        raise RuntimeError(f"cannot load {path}: {err}. "
                           "Rebuild it on this machine with `bash silu_plugin/build.sh`") from err
    args = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    lib.mv_silu.argtypes = args
    lib.mv_silu_ex.argtypes = args + [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.mv_copy_ex.argtypes = args + [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.mv_silu_default_config.argtypes = [ctypes.c_int] + [ctypes.POINTER(ctypes.c_int)] * 3
    for fn in (lib.mv_silu, lib.mv_silu_ex, lib.mv_copy_ex, lib.mv_silu_default_config):
        fn.restype = ctypes.c_int
    return lib


class KernelError(RuntimeError):
    """The kernel library returned a CUDA error code (`status`)."""

    def __init__(self, what: str, status: int):
        super().__init__(f"{what} failed with CUDA error {status} (cudaError_t; 1 = invalid value, e.g. an unsupported "
                         "dtype or a pointer not aligned to its element size; 9 = a launch configuration that does not "
                         "fit on a multiprocessor)")
        self.status = status


def check_status(status: int, what: str) -> None:
    """Raise KernelError on a non-zero cudaError_t from the library."""
    if status != 0:
        raise KernelError(what, status)


# --- the kernel as a PyTorch op -----------------------------------------------------------------------
_TORCH_CODES = {torch.float32: DTYPE_CODES["float32"], torch.float16: DTYPE_CODES["float16"]}


def _code(t: torch.Tensor) -> int:
    """The kernel's dtype code of a tensor, or a TypeError naming what is supported."""
    code = _TORCH_CODES.get(t.dtype)
    if code is None:
        raise TypeError(f"the SiLU kernel takes float32 and float16 tensors, not {t.dtype}; cast first")
    return code


def _raw_stream(device_index: int) -> int:
    """The current CUDA stream of a device as an integer handle (the cheap call inductor's generated code uses)."""
    get = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return get(device_index) if get is not None else torch.cuda.current_stream(device_index).cuda_stream


def _dense(x: torch.Tensor) -> bool:
    """Whether x's elements fill one block of memory (contiguous or channels_last): elementwise can run on it."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def silu(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """y = silu(x) by our kernel on the current CUDA stream (a plain call: no dispatcher, no autograd)."""
    if not x.is_cuda:
        raise ValueError(f"the SiLU kernel runs on CUDA tensors; this one is on {x.device} "
                         "(use torch.nn.functional.silu on the CPU)")
    code = _code(x)
    if not _dense(x):
        x = x.contiguous()
    if out is None:
        out = torch.empty_like(x)  # same strides as a dense x: element i of y matches element i of x
    elif out.shape != x.shape or out.dtype != x.dtype or out.stride() != x.stride() or out.device != x.device:
        raise ValueError("out must match x in shape, dtype, strides and device")
    index = x.device.index
    if index == torch.cuda.current_device():  # the usual case; the kernel launches on the current device
        status = kernel_library().mv_silu(x.data_ptr(), out.data_ptr(), x.numel(), code, _raw_stream(index))
    else:
        with torch.cuda.device(index):
            status = kernel_library().mv_silu(x.data_ptr(), out.data_ptr(), x.numel(), code, _raw_stream(index))
    check_status(status, "mv_silu")
    return out


@functools.cache
def op():
    """The kernel registered as torch.ops.mvlib.silu (once per process), traceable by torch.compile."""
    @torch.library.custom_op("mvlib::silu", mutates_args=())
    def mvlib_silu(x: torch.Tensor) -> torch.Tensor:
        return silu(x)

    @mvlib_silu.register_fake
    def _(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    return mvlib_silu


class MvSiLU(torch.nn.Module):
    """nn.SiLU's stand-in that runs our kernel: eager calls go straight to it, compiled graphs call the op."""

    def __init__(self, dispatch: str = "direct"):
        super().__init__()
        if dispatch not in ("direct", "op"):
            raise ValueError(f"dispatch {dispatch!r}: use 'direct' (ctypes call in eager) or 'op' (torch.ops always)")
        self.dispatch = dispatch
        op()  # registered before any tracing starts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dispatch == "op" or torch.compiler.is_compiling():
            return torch.ops.mvlib.silu(x)
        return silu(x)

    def extra_repr(self) -> str:
        return f"dispatch={self.dispatch}"


def swap_silu(model: torch.nn.Module, dispatch: str = "direct") -> int:
    """Replace every nn.SiLU in `model` (in place) by MvSiLU; the number replaced."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.SiLU:
                setattr(parent, name, MvSiLU(dispatch))
                count += 1
    return count
