"""The SiLU kernel on a real GPU against torch.nn.functional.silu: sizes, alignments, poisoned outputs, the op.

Every test here needs an NVIDIA GPU, PyTorch CUDA and nvcc; on a machine without them each skips with the reason.
"""
import copy

import pytest
import torch

from mvlib import env, kernel, kernel_gpu

pytestmark = pytest.mark.gpu
CUDA_OK, CUDA_WHY = env.cuda_status()
needs_gpu = pytest.mark.skipif(not CUDA_OK or env.nvcc_path() is None,
                               reason=CUDA_WHY if not CUDA_OK else "nvcc not found: the kernel cannot be built")


@pytest.fixture(scope="module")
def built_kernel():
    """The kernel library built for this machine (build.sh into the test build folder)."""
    if not CUDA_OK or env.nvcc_path() is None:
        pytest.skip(CUDA_WHY if not CUDA_OK else "nvcc not found")
    info = kernel.build()
    return kernel.kernel_library(info["kernel_library"])


@needs_gpu
@pytest.mark.parametrize("layout", kernel_gpu.CHECK_LAYOUTS,
                         ids=lambda v: v if isinstance(v, str) else f"x{v[0]}y{v[1]}")
@pytest.mark.parametrize("n", kernel_gpu.CHECK_SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernel_matches_torch(built_kernel, dtype, n, layout):
    row = kernel_gpu.check_case(n, dtype, layout, seed=1)
    assert row["all_written"], f"elements left unwritten (NaN poison survived): {row}"
    assert row["guards_intact"], f"wrote outside the output: {row}"
    assert row["max_rel_err_vs_torch"] <= kernel_gpu.TOLERANCE[dtype], row


@needs_gpu
def test_fresh_inputs_each_seed_and_no_cross_talk(built_kernel):
    # Two different inputs through the same buffers: the second result depends on the second input only.
    a = kernel_gpu.check_case(4097, "float32", (1, 1), seed=2)
    b = kernel_gpu.check_case(4097, "float32", (1, 1), seed=3)
    assert a["passed"] and b["passed"]


@needs_gpu
def test_op_preserves_layout_and_matches_torch(built_kernel):
    x = torch.randn(2, 8, 16, 16, device="cuda").to(memory_format=torch.channels_last)
    y = kernel.op()(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == x.shape
    torch.testing.assert_close(y, torch.nn.functional.silu(x), rtol=1e-6, atol=0)
    sliced = torch.randn(64, 33, device="cuda")[:, 1:]  # not dense: copied, then computed
    torch.testing.assert_close(kernel.silu(sliced), torch.nn.functional.silu(sliced), rtol=1e-6, atol=0)


@needs_gpu
def test_op_refuses_what_the_kernel_cannot_do(built_kernel):
    with pytest.raises(TypeError, match="float32 and float16"):
        kernel.silu(torch.randn(8, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="CUDA tensors"):
        kernel.silu(torch.randn(8))


@needs_gpu
def test_kernel_runs_on_the_current_stream(built_kernel):
    x = torch.randn(2**22, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = kernel.silu(x)
        z = y * 2  # queued after the kernel on the same stream: sees its result without a sync
    stream.synchronize()
    torch.testing.assert_close(z, 2 * torch.nn.functional.silu(x), rtol=1e-6, atol=0)


@needs_gpu
def test_swapped_model_matches_original(built_kernel, xxs):
    _, model = xxs
    original = copy.deepcopy(model).cuda().eval()
    swapped = copy.deepcopy(original)
    assert kernel.swap_silu(swapped) > 0
    x = torch.rand(2, 3, 256, 256, device="cuda")
    with torch.inference_mode():
        torch.testing.assert_close(swapped(x), original(x), rtol=1e-4, atol=1e-5)


@needs_gpu
def test_bandwidth_table_has_every_impl(built_kernel):
    table = kernel_gpu.bandwidth(sizes=(2**20,), dtypes=("float16",), samples=5)
    assert set(table["impl"]) == set(kernel_gpu.IMPLS)
    assert (table["gbps"] > 0).all() and table["fraction_of_copy"].notna().all()
