"""mvlib.silu.torch_op: the kernel library's C ABI through ctypes (without a GPU: its refusals), the missing
library's error, nn.SiLU swapped; on a GPU the op against torch.nn.functional.silu, layouts and streams."""
import copy
import ctypes
import os
import subprocess

import pytest
import torch

from mvlib import env
from mvlib.silu import build, torch_op

CUDA_OK, CUDA_WHY = env.cuda_status()
needs_nvcc = pytest.mark.skipif(env.nvcc_path() is None, reason="nvcc not found: the kernel cannot be built")
needs_gpu = pytest.mark.skipif(not CUDA_OK or env.nvcc_path() is None,
                               reason=CUDA_WHY if not CUDA_OK else "nvcc not found: the kernel cannot be built")


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory):
    """The kernel library built by build.sh (no plugin), for one architecture here and for this GPU on a GPU."""
    if env.nvcc_path() is None:
        pytest.skip("nvcc not found: the kernel library cannot be compiled here")
    root = tmp_path_factory.mktemp("kernel")
    run_env = {k: v for k, v in os.environ.items() if k not in ("TRT_INCLUDE", "TRT_ROOT")}
    if not CUDA_OK:
        run_env["SILU_ARCHS"] = "-gencode=arch=compute_86,code=sm_86"  # nothing runs it here: one target is enough
    proc = subprocess.run(["bash", str(build.BUILD_SCRIPT)], env={**run_env, "MVLIB_BUILD": str(root)},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(build.build_dir(root) / build.KERNEL_LIB)


@needs_nvcc
def test_c_abi_rejects_bad_arguments_without_a_gpu(kernel_path):
    lib = torch_op.kernel_library(kernel_path)
    invalid = 1  # cudaErrorInvalidValue
    assert lib.mv_silu(None, None, 0, 0, None) == 0                    # nothing to do is not an error
    assert lib.mv_silu(16, 32, 4, 7, None) == invalid                  # unknown dtype
    assert lib.mv_silu(None, 32, 4, 0, None) == invalid                # null pointer with work to do
    assert lib.mv_silu(18, 32, 4, 0, None) == invalid                  # float32 pointer not 4-byte aligned
    assert lib.mv_silu(17, 32, 4, 1, None) == invalid                  # float16 pointer not 2-byte aligned
    assert lib.mv_silu_ex(16, 32, 4, 0, None, 100, 0, 0) == invalid    # block not a multiple of 32
    assert lib.mv_silu_ex(16, 32, 4, 0, None, 2048, 0, 0) == invalid   # block over 1024 threads
    assert lib.mv_silu_ex(16, 32, 4, 0, None, 256, 0, 3) == invalid    # unroll not 1, 2, 4 or 8
    with pytest.raises(torch_op.KernelError, match="CUDA error 1 .*invalid value"):
        torch_op.check_status(lib.mv_silu(16, 32, 4, 7, None), "mv_silu")


@needs_nvcc
@pytest.mark.skipif(CUDA_OK, reason="checks the behaviour on a machine without a GPU")
def test_c_abi_reports_missing_gpu_instead_of_succeeding(kernel_path):
    lib = torch_op.kernel_library(kernel_path)
    buf = (ctypes.c_float * 8)()
    assert lib.mv_silu(ctypes.addressof(buf), ctypes.addressof(buf), 8, 0, None) != 0


def test_missing_library_error_names_the_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="build.sh"):
        torch_op.kernel_library(str(tmp_path / "libmv_silu.so"))


def test_swap_replaces_every_silu_module(xxs):
    _, model = xxs
    net = copy.deepcopy(model)
    n_before = sum(type(m).__name__ == "SiLU" for m in net.modules())
    assert torch_op.swap_silu(net) == n_before > 0
    assert not any(type(m).__name__ == "SiLU" for m in net.modules())
    assert sum(isinstance(m, torch_op.MvSiLU) for m in net.modules()) == n_before
    with pytest.raises(ValueError, match="CUDA tensors"):
        net(torch.rand(1, 3, 64, 64))  # on the CPU the stand-in says where it runs
    with pytest.raises(ValueError, match="dispatch 'ctypes'"):
        torch_op.MvSiLU("ctypes")


# --- on a GPU ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_kernel():
    """The kernel library built for this machine where the op finds it (build.sh into the test build folder)."""
    if not CUDA_OK or env.nvcc_path() is None:
        pytest.skip(CUDA_WHY if not CUDA_OK else "nvcc not found")
    return torch_op.kernel_library(build.build()["kernel_library"])


@pytest.mark.gpu
@needs_gpu
def test_op_preserves_layout_and_matches_torch(gpu_kernel):
    x = torch.randn(2, 8, 16, 16, device="cuda").to(memory_format=torch.channels_last)
    y = torch_op.op()(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == x.shape
    torch.testing.assert_close(y, torch.nn.functional.silu(x), rtol=1e-6, atol=0)
    sliced = torch.randn(64, 33, device="cuda")[:, 1:]  # not dense: copied, then computed
    torch.testing.assert_close(torch_op.silu(sliced), torch.nn.functional.silu(sliced), rtol=1e-6, atol=0)


@pytest.mark.gpu
@needs_gpu
def test_op_refuses_what_the_kernel_cannot_do(gpu_kernel):
    with pytest.raises(TypeError, match="float32 and float16"):
        torch_op.silu(torch.randn(8, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="CUDA tensors"):
        torch_op.silu(torch.randn(8))


@pytest.mark.gpu
@needs_gpu
def test_kernel_runs_on_the_current_stream(gpu_kernel):
    x = torch.randn(2**22, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = torch_op.silu(x)
        z = y * 2  # queued after the kernel on the same stream: sees its result without a sync
    stream.synchronize()
    torch.testing.assert_close(z, 2 * torch.nn.functional.silu(x), rtol=1e-6, atol=0)


@pytest.mark.gpu
@needs_gpu
def test_swapped_model_matches_original(gpu_kernel, xxs):
    _, model = xxs
    original = copy.deepcopy(model).cuda().eval()
    swapped = copy.deepcopy(original)
    assert torch_op.swap_silu(swapped) > 0
    x = torch.rand(2, 3, 256, 256, device="cuda")
    with torch.inference_mode():
        torch.testing.assert_close(swapped(x), original(x), rtol=1e-4, atol=1e-5)
