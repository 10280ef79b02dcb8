"""Plugin libraries for TensorRT (mvlib.tensorrt.plugins) and the plugin layers of engines (mvlib.plugin).

The SiLU plugin is compiled for real with nvcc (one architecture, to keep it short) against TensorRT 11 headers.
"""
import json
import os
import subprocess
from pathlib import Path

import lief
import pandas as pd
import pytest
import tensorrt_models as models

from mvlib import env, kernel, plugin, silu_rewrite
from mvlib.tensorrt import cache, flavours, plugins, shapes

ROOT = Path(__file__).resolve().parent.parent
HEADERS = sorted((ROOT.parent / "shared" / "tensorrt-include").glob("11.*/include"))


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The plugin library built twice from the same sources (nvcc's temporary names differ between builds)."""
    if env.nvcc_path() is None or not HEADERS:
        pytest.skip("needs nvcc and TensorRT 11 headers (../shared/tensorrt-include)")
    libs = []
    for i in range(2):
        root = tmp_path_factory.mktemp(f"plugin{i}")
        run_env = {**os.environ, "MVLIB_BUILD": str(root), "TRT_INCLUDE": str(HEADERS[-1]),
                   "SILU_ARCHS": "-gencode=arch=compute_86,code=sm_86"}
        run_env.pop("TRT_MAJOR", None)
        proc = subprocess.run(["bash", str(ROOT / "silu_plugin" / "build.sh")], env=run_env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        libs.append(root / "silu_plugin" / kernel.PLUGIN_LIB_DYNAMIC)
    return libs


def _patch_section(src: Path, dst: Path, name: str) -> None:
    """A copy of `src` with one byte of section `name` changed (as a rebuild changes a name in .strtab)."""
    data = bytearray(src.read_bytes())
    binary = lief.ELF.parse(str(src))
    section = binary.get_section(name)
    offset = section.file_offset + section.size // 2
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))


def test_plugin_engines_are_keyed_on_what_the_loader_maps(two_builds, tmp_path):
    """19.4: the digest is the same for two builds of the same sources and for a changed symbol name, and
    differs when the code changes; so plugin engines are reused across rebuilds of the library."""
    a, b = two_builds
    assert plugins.library_digest(a) == plugins.library_digest(b)
    renamed, recoded = tmp_path / "renamed.so", tmp_path / "recoded.so"
    _patch_section(a, renamed, ".strtab")
    _patch_section(a, recoded, ".text")
    assert cache.sha256(renamed) != cache.sha256(a) and plugins.library_digest(renamed) == plugins.library_digest(a)
    assert plugins.library_digest(recoded) != plugins.library_digest(a)
    onnx_path = models.conv(tmp_path / "model.onnx")
    rtx = flavours.Flavour("tensorrt_rtx", "1.7.1.116")
    keys = {cache.engine_key(onnx_path, cache.key_parts(onnx_path, shapes.Profile(1, 2, 4), rtx, "sm86", [lib]))
            for lib in (a, b, renamed)}
    assert len(keys) == 1


def _engine_dir(tmp_path: Path, name: str, onnx_path: Path, inspector_layers: list[dict]) -> Path:
    """A cached engine folder as the study writes it, with inspector layer information (as on a GPU)."""
    d = tmp_path / name
    d.mkdir()
    (d / cache.PLAN).write_bytes(b"vtrt" + bytes(64))
    (d / cache.LAYERS).write_text(json.dumps({"inspected": True, "Layers": inspector_layers}))
    (d / cache.BUILD_INFO).write_text(json.dumps({"onnx": str(onnx_path), "plan_sha256": cache.sha256(d / cache.PLAN),
                                                  "plan_bytes": 68, "flavour": "tensorrt_rtx",
                                                  "flavour_version": "1.7.1.116", "profile": [1, 2, 4]}))
    return d


def test_plugin_layers_are_counted_by_type_or_exact_name_and_every_engine_counts(tmp_path):
    """Defect 4: the reformat TensorRT puts before a linear-format plugin is named after it ("... to <plugin>")
    and is not a plugin layer; an engine in which no plugin layer is found fails instead of passing unseen."""
    names = ["/stages/stages.0/act/MvSiLU", "/stages/stages.1/act/MvSiLU"]
    onnx_path = models.plugin_graph(tmp_path / "model.fp16.silu.onnx", names)
    fp16 = [{"Name": f"Reformatting CopyNode for Input Tensor 0 to {names[0]}", "LayerType": "Reformat"},
            {"Name": names[0], "LayerType": "PluginV3"},
            {"Name": f"Reformatting CopyNode for Input Tensor 0 to {names[1]}", "LayerType": "Reformat"},
            {"Name": names[1], "LayerType": "PluginV3"}]
    good = _engine_dir(tmp_path, "fp16", onnx_path, fp16)
    built = pd.DataFrame([{"engine": "plugin_fp16", "path": str(good / cache.PLAN), "plugin_nodes_in_onnx": 2}])
    counted = plugin.count_plugin_layers(built)
    assert list(counted["name"]) == names and set(counted["engine"]) == {"plugin_fp16"}
    fused = _engine_dir(tmp_path, "fused", onnx_path, [{"Name": "{ForeignNode[/stem...]}", "LayerType": "Myelin"}])
    both = pd.concat([built, pd.DataFrame([{"engine": "plugin_int8", "path": str(fused / cache.PLAN),
                                            "plugin_nodes_in_onnx": 2}])])
    with pytest.raises(AssertionError, match="plugin_int8"):
        plugin.count_plugin_layers(both)
    assert plugin.plugin_node_names(onnx_path) == set(names) and silu_rewrite.plugin_id().name == "MvSiLU"


def test_the_unversioned_library_is_ours_and_on_the_build_path():
    fl = flavours.select() if flavours.builder_status()[0] else None
    if fl is None or not fl.rtx:
        pytest.skip("TensorRT-RTX only")
    d = plugins.unversioned_dir(fl)
    assert (d / "libtensorrt_rtx.so").resolve() == fl.runtime_library().resolve()
    assert str(d) in plugins.library_env(fl)["LD_LIBRARY_PATH"].split(":")
