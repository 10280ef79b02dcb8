"""A rerun with nothing changed rebuilds nothing: the plugin libraries come out byte for byte the same.

The TensorRT engines of the plugin models are keyed on the plugin library's bytes, so a library whose bytes
changed on every build (nvcc named its intermediate file tmpxft_<pid>_..., and that name landed in the symbol
table) made every rerun rebuild the plugin engines.
"""
import os
import subprocess

import pytest

from mvlib import env, kernel

pytestmark = pytest.mark.skipif(env.nvcc_path() is None, reason="nvcc not found: nothing to compile here")

HEADERS = "/work/shared/tensorrt-include/11.1/include"
OUTPUTS = (kernel.KERNEL_LIB, kernel.PLUGIN_LIB, kernel.PLUGIN_LIB_DYNAMIC, kernel.PLUGIN_CHECK)


def _build(root, headers):
    """build.sh for one target (the mechanism does not depend on how many) into `root`; its output folder."""
    run_env = {**os.environ, "MVLIB_BUILD": str(root), "SILU_ARCHS": "-gencode=arch=compute_86,code=sm_86"}
    run_env.pop("TRT_MAJOR", None)
    if headers:
        run_env["TRT_INCLUDE"] = headers
    proc = subprocess.run(["bash", str(kernel.BUILD_SCRIPT)], env=run_env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "silu_plugin"


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The same sources built twice, into two build folders (two processes, two pids)."""
    headers = HEADERS if os.path.isfile(os.path.join(HEADERS, "NvInferRuntime.h")) else ""
    first = _build(tmp_path_factory.mktemp("first"), headers)
    second = _build(tmp_path_factory.mktemp("second"), headers)
    return first, second, headers


def test_two_builds_give_identical_libraries(two_builds):
    first, second, headers = two_builds
    names = OUTPUTS if headers else OUTPUTS[:1]
    for name in names:
        a, b = (first / name).read_bytes(), (second / name).read_bytes()
        assert a == b, f"{name}: the bytes differ between two builds of the same sources"
    # nvcc's default temporary names carry the process id; none may reach the library
    assert b"tmpxft_" not in (first / kernel.KERNEL_LIB).read_bytes()


def test_a_rebuild_with_nothing_changed_leaves_the_outputs_untouched(two_builds):
    first, _, headers = two_builds
    before = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}
    _build(first.parent, headers)
    after = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}
    assert after == before  # not even rewritten with the same bytes: the rerun record says "unchanged"
