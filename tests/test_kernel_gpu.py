"""The SiLU kernel on a real GPU against torch.nn.functional.silu: sizes, alignments, poisoned outputs, the op.

Every test here needs an NVIDIA GPU, PyTorch CUDA and nvcc; on a machine without them each skips with the reason.
"""
import copy

import pytest
import torch

from mvlib import env, plugin

pytestmark = pytest.mark.gpu
CUDA_OK, CUDA_WHY = env.cuda_status()
needs_gpu = pytest.mark.skipif(not CUDA_OK or env.nvcc_path() is None,
                               reason=CUDA_WHY if not CUDA_OK else "nvcc not found: the kernel cannot be built")


@pytest.fixture(scope="module")
def kernel():
    """The kernel library built for this machine (build.sh into the test build folder)."""
    if not CUDA_OK or env.nvcc_path() is None:
        pytest.skip(CUDA_WHY if not CUDA_OK else "nvcc not found")
    info = plugin.build()
    return plugin.kernel_library(info["kernel_library"])


@needs_gpu
@pytest.mark.parametrize("layout", plugin.CHECK_LAYOUTS, ids=lambda v: v if isinstance(v, str) else f"x{v[0]}y{v[1]}")
@pytest.mark.parametrize("n", plugin.CHECK_SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernel_matches_torch(kernel, dtype, n, layout):
    row = plugin.check_case(n, dtype, layout, seed=1)
    assert row["all_written"], f"elements left unwritten (NaN poison survived): {row}"
    assert row["guards_intact"], f"wrote outside the output: {row}"
    assert row["max_rel_err_vs_torch"] <= plugin.TOLERANCE[dtype], row


@needs_gpu
def test_fresh_inputs_each_seed_and_no_cross_talk(kernel):
    # Two different inputs through the same buffers: the second result depends on the second input only.
    a, b = plugin.check_case(4097, "float32", (1, 1), seed=2), plugin.check_case(4097, "float32", (1, 1), seed=3)
    assert a["passed"] and b["passed"]


@needs_gpu
def test_op_preserves_layout_and_matches_torch(kernel):
    x = torch.randn(2, 8, 16, 16, device="cuda").to(memory_format=torch.channels_last)
    y = plugin.op()(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == x.shape
    torch.testing.assert_close(y, torch.nn.functional.silu(x), rtol=1e-6, atol=0)
    sliced = torch.randn(64, 33, device="cuda")[:, 1:]  # not dense: copied, then computed
    torch.testing.assert_close(plugin.silu(sliced), torch.nn.functional.silu(sliced), rtol=1e-6, atol=0)


@needs_gpu
def test_op_refuses_what_the_kernel_cannot_do(kernel):
    with pytest.raises(TypeError, match="float32 and float16"):
        plugin.silu(torch.randn(8, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="CUDA tensors"):
        plugin.silu(torch.randn(8))


@needs_gpu
def test_kernel_runs_on_the_current_stream(kernel):
    x = torch.randn(2**22, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = plugin.silu(x)
        z = y * 2  # queued after the kernel on the same stream: sees its result without a sync
    stream.synchronize()
    torch.testing.assert_close(z, 2 * torch.nn.functional.silu(x), rtol=1e-6, atol=0)


@needs_gpu
def test_swapped_model_matches_original(kernel, xxs):
    _, model = xxs
    original = copy.deepcopy(model).cuda().eval()
    swapped = copy.deepcopy(original)
    assert plugin.swap_silu(swapped) > 0
    x = torch.rand(2, 3, 256, 256, device="cuda")
    with torch.inference_mode():
        torch.testing.assert_close(swapped(x), original(x), rtol=1e-4, atol=1e-5)


@needs_gpu
def test_bandwidth_table_has_every_impl(kernel):
    table = plugin.bandwidth(sizes=(2**20,), dtypes=("float16",), samples=5)
    assert set(table["impl"]) == set(plugin.IMPLS)
    assert (table["gbps"] > 0).all() and table["fraction_of_copy"].notna().all()
