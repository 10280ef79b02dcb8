"""The TensorRT tier: polygraphy loader chain, engine cache key, corrupt-engine handling, layer summaries.

Everything but the build and the run is checked on any machine; those two skip, with the reason, where
TensorRT is absent.
"""
import inspect
import json

import numpy as np
import onnx
import pytest

from mvlib import accuracy, env, io, paths, trt


@pytest.fixture
def engines_dir(tmp_path, monkeypatch):
    """An empty engine cache for one test."""
    monkeypatch.setattr(paths, "ENGINES", tmp_path / "engines")
    return paths.ENGINES


def test_loader_chain_arguments_match_installed_polygraphy(xxs, tmp_path):
    """The whole chain is constructed (not called): every argument is accepted by the installed polygraphy."""
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, LoadPlugins, NetworkFromOnnxPath, SaveEngine
    exported, _ = xxs
    lib = tmp_path / "libplugin.so"
    lib.write_bytes(b"not loaded: the chain is never called here")
    chain = trt.loader_chain(exported.onnx, 1, 2, 4, plugins=[lib], workspace_gb=2,
                             timing_cache=tmp_path / "t.cache", engine_path=tmp_path / "e.plan")
    assert isinstance(chain.network, NetworkFromOnnxPath)
    assert chain.network.path == str(exported.onnx) and chain.network.strongly_typed is True
    assert isinstance(chain.plugin_loader, LoadPlugins)
    assert chain.plugin_loader.plugins == [str(lib.resolve())] and chain.plugin_loader.obj is chain.network
    assert isinstance(chain.config, CreateConfig)
    shapes = chain.config.profiles[0]["input"]
    assert (shapes.min, shapes.opt, shapes.max) == ((1, 3, 256, 256), (2, 3, 256, 256), (4, 3, 256, 256))
    assert not (chain.config.tf32 or chain.config.fp16 or chain.config.int8 or chain.config.bf16 or chain.config.fp8)
    assert chain.config.timing_cache_path == str(tmp_path / "t.cache")
    assert chain.config.memory_pool_limits.nbytes == 2 << 30
    assert chain.config.profiling_verbosity is None  # polygraphy then sets DETAILED, which the inspector needs
    assert isinstance(chain.engine, EngineFromNetwork)
    assert chain.engine._network is chain.plugin_loader and chain.engine._config is chain.config
    assert chain.engine.timing_cache_path == str(tmp_path / "t.cache")
    assert isinstance(chain.save, SaveEngine) and chain.save.path == str(tmp_path / "e.plan")
    assert chain.save._engine is chain.engine
    # the keyword names we pass exist in the installed signatures (a rename would fail above, loudly)
    assert {"strongly_typed"} <= set(inspect.signature(NetworkFromOnnxPath).parameters)
    config_args = set(inspect.signature(CreateConfig).parameters) | set(inspect.signature(CreateConfig.__mro__[1]).parameters)
    assert {"profiles", "load_timing_cache", "memory_pool_limits", "tf32"} <= config_args  # CreateConfig passes **kwargs on


def test_chain_without_plugins_or_save(xxs):
    chain = trt.loader_chain(xxs[0].onnx, 1, 1, 1)
    assert chain.plugin_loader is None and chain.save is None
    assert chain.engine._network is chain.network and chain.config.timing_cache_path is None


def test_workspace_limit_resolves_only_with_tensorrt():
    limit = trt.WorkspaceLimit(1 << 20)
    assert len(limit) == 1 and "1048576" in repr(limit)
    if env.tensorrt_status()[0]:
        import tensorrt
        assert dict(limit) == {tensorrt.MemoryPoolType.WORKSPACE: 1 << 20}
    else:
        with pytest.raises(ImportError):
            dict(limit)


def test_bad_profiles_and_batches_are_refused(xxs):
    for bad in ((0, 1, 2), (2, 1, 4), (1, 8, 4), (1.0, 2, 4)):
        with pytest.raises(ValueError, match="batch_min <= batch_opt <= batch_max"):
            trt.loader_chain(xxs[0].onnx, *bad)
    assert trt.check_batch(4, 1, 4) == 4
    with pytest.raises(ValueError, match=r"batch 5 is outside the engine's optimization profile \[1, 4\]"):
        trt.check_batch(5, 1, 4)
    with pytest.raises(ValueError, match="outside"):
        trt.check_batch(0, 1, 4)


def test_missing_plugin_names_how_to_build_it(xxs, tmp_path):
    with pytest.raises(FileNotFoundError, match="silu_plugin/build.sh"):
        trt.loader_chain(xxs[0].onnx, 1, 2, 4, plugins=[tmp_path / "libmissing.so"])
    with pytest.raises(FileNotFoundError, match="silu_plugin/build.sh"):
        trt.engine_key(xxs[0].onnx, 1, 2, 4, plugins=[tmp_path / "libmissing.so"])


def test_engine_key_changes_with_everything_an_engine_depends_on(xxs, tmp_path, monkeypatch):
    onnx_path = xxs[0].onnx
    key = trt.engine_key(onnx_path, 1, 16, 32)
    assert key == trt.engine_key(onnx_path, 1, 16, 32)
    assert key.startswith("model-b1_16_32-")
    assert trt.engine_key(onnx_path, 1, 8, 32) != key  # profile
    # other ONNX bytes, same graph
    model = onnx.load(str(onnx_path))
    model.doc_string = "one byte of difference is a different engine"
    other = tmp_path / "model.onnx"
    onnx.save(model, str(other))
    assert trt.engine_key(other, 1, 16, 32) != key
    # plugin libraries by content
    a, b = tmp_path / "liba.so", tmp_path / "libb.so"
    a.write_bytes(b"plugin build 1")
    b.write_bytes(b"plugin build 2")
    assert len({key, trt.engine_key(onnx_path, 1, 16, 32, [a]), trt.engine_key(onnx_path, 1, 16, 32, [b])}) == 3
    # TensorRT version and GPU
    monkeypatch.setattr(trt, "trt_version", lambda: "10.13.0")
    k10 = trt.engine_key(onnx_path, 1, 16, 32)
    monkeypatch.setattr(trt, "trt_version", lambda: "11.0.0")
    k11 = trt.engine_key(onnx_path, 1, 16, 32)
    monkeypatch.setattr(trt, "gpu_identity", lambda: {"gpu": "NVIDIA H200", "capability": "9.0"})
    k_h200 = trt.engine_key(onnx_path, 1, 16, 32)
    monkeypatch.setattr(trt, "gpu_identity", lambda: {"gpu": "NVIDIA A10", "capability": "8.6"})
    k_a10 = trt.engine_key(onnx_path, 1, 16, 32)
    assert len({key, k10, k11, k_h200, k_a10}) == 5
    assert trt.timing_cache_path().name == "NVIDIA-A10_sm8.6_trt11.0.0.cache"


def _fake_cached_engine(onnx_path, lo, opt, hi) -> tuple:
    """A cache entry written the way _build writes one, around bytes that are not an engine (never deserialized)."""
    out = trt.engine_dir(onnx_path, lo, opt, hi)
    plan = out / trt.PLAN
    io.write_bytes(plan, b"plan bytes " * 100)
    io.write_json(out / trt.LAYERS, {"Layers": []})
    io.write_json(out / trt.BUILD_INFO, {"profile": [lo, opt, hi], "plan_bytes": plan.stat().st_size,
                                         "plan_sha256": trt.sha256(plan)})
    return out, plan


def test_valid_cache_entry_is_reused_without_tensorrt(xxs, engines_dir, capsys):
    out, plan = _fake_cached_engine(xxs[0].onnx, 1, 2, 4)
    assert trt.cache_problem(out) is None
    assert trt.build_engine(xxs[0].onnx, 1, 2, 4) == plan
    assert "reusing engine" in capsys.readouterr().out
    assert trt.build_info(plan)["profile"] == [1, 2, 4]


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_record", "bad_record", "no_layers"])
def test_corrupt_engine_gives_a_clear_message_and_a_rebuild(xxs, engines_dir, capsys, damage):
    out, plan = _fake_cached_engine(xxs[0].onnx, 1, 2, 4)
    if damage == "truncate":
        plan.write_bytes(plan.read_bytes()[:50])
    elif damage == "flip":
        data = bytearray(plan.read_bytes())
        data[10] ^= 0xFF
        plan.write_bytes(bytes(data))
    elif damage == "no_record":
        (out / trt.BUILD_INFO).unlink()
    elif damage == "bad_record":
        (out / trt.BUILD_INFO).write_text("{ half a record")
    else:
        (out / trt.LAYERS).unlink()
    problem = trt.cache_problem(out)
    assert problem and problem != "not built yet"
    with pytest.raises(RuntimeError, match="cannot be used"):
        trt.runner(plan, "trt-fp32")
    if env.tensorrt_status()[0]:
        pytest.skip("TensorRT is installed: the rebuild of a fake engine is exercised by the build test instead")
    with pytest.raises(RuntimeError, match="cannot build an engine .*TensorRT not installed"):
        trt.build_engine(xxs[0].onnx, 1, 2, 4)
    printed = capsys.readouterr().out
    assert "rebuilding" in printed and problem in printed


def test_layer_summary_reads_tensorrt_10_and_11_inspector_json(tmp_path):
    # Field names as polygraphy 0.53's inspector reader and TensorRT's trex parse them: TensorRT 10 puts
    # "Format/Datatype" on each tensor, TensorRT 11 splits it into "Datatype" and "Format".
    info = {"Layers": [
        {"Name": "/stem/conv/Conv + /stem/act/Sigmoid + /stem/act/Mul", "LayerType": "CaskConvolution",
         "Metadata": "[ONNX Layer: /stem/conv/Conv]\x1f[ONNX Layer: /stem/act/Sigmoid]\x1f[ONNX Layer: /stem/act/Mul]",
         "Inputs": [{"Name": "input", "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "a", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "TacticName": "sm90_xmma_fprop"},
        {"Name": "{ForeignNode[/stages/attn/MatMul.../stages/attn/Softmax]}", "LayerType": "Myelin",
         "Metadata": "", "Inputs": [{"Name": "a", "Datatype": "Half", "Format": "Row major linear"}],
         "Outputs": [{"Name": "b", "Datatype": "Half", "Format": "Row major linear"}]},
        {"Name": "/head/fc/Gemm", "LayerType": "CaskGemm", "Metadata": "[ONNX Layer: /head/fc/Gemm]",
         "Inputs": [{"Name": "b", "Format/Datatype": "Half"}], "Outputs": [{"Name": "logits", "Format/Datatype": "Float"}]},
    ], "Bindings": ["input", "logits"]}
    (tmp_path / trt.LAYERS).write_text(json.dumps(info))
    layers = trt.layer_summary(tmp_path)
    assert list(layers["onnx_nodes"]) == [3, 1, 1]
    assert list(layers["fused"]) == [True, True, False]
    assert list(layers["input_precision"]) == ["FP32", "FP16", "FP16"]
    assert list(layers["output_precision"]) == ["FP16", "FP16", "FP32"]
    totals = trt.layer_totals(layers)
    assert totals == {"layers": 3, "fused_layers": 2, "onnx_nodes_covered": 5, "out_FP16": 2, "out_FP32": 1}
    (tmp_path / trt.LAYERS).write_text(json.dumps({"Layers": ["conv1", "gemm"]}))  # LAYER_NAMES_ONLY verbosity
    assert list(trt.layer_summary(tmp_path)["name"]) == ["conv1", "gemm"]


@pytest.mark.trt
def test_build_and_run_engine(xxs, engines_dir, tmp_path):
    """Constructs the chain everywhere; builds and runs an engine only where TensorRT is installed."""
    exported, _ = xxs
    trt.loader_chain(exported.onnx, 1, 2, 4, timing_cache=tmp_path / "t.cache", engine_path=tmp_path / "e.plan")
    ok, why = env.tensorrt_status()
    if not ok or not env.cuda_status()[0]:
        pytest.skip(f"build and run skipped: {why if not ok else env.cuda_status()[1]}")
    plan = trt.build_engine(exported.onnx, 1, 2, 4, workspace_gb=1)
    assert trt.cache_problem(plan.parent) is None and trt.timing_cache_path().exists()
    assert trt.build_engine(exported.onnx, 1, 2, 4, workspace_gb=1) == plan  # reused
    assert len(trt.layer_summary(plan.parent)) > 0
    data = accuracy.feeds([1, 4], 256, seed=3)
    results = accuracy.run([accuracy.onnxrt_runner(exported.onnx, "onnxrt-fp32"), trt.runner(plan, "trt-fp32")], data)
    ref, out = (np.concatenate([it[accuracy.OUTPUT] for it in results[name]]) for name in ("onnxrt-fp32", "trt-fp32"))
    assert np.abs(ref - out).max() < 1e-3
    plan.write_bytes(plan.read_bytes()[:-100])  # a corrupt plan is detected and rebuilt
    assert trt.build_engine(exported.onnx, 1, 2, 4, workspace_gb=1) == plan
    assert trt.cache_problem(plan.parent) is None
