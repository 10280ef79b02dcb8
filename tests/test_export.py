"""Notebook 01's machinery: export round trip, weights fallback, bad inputs, nothing half-written."""
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mvlib import accuracy, export, io, metrics, paths
from mvlib import model as mvmodel


@pytest.mark.parametrize("batch", [1, 3])
def test_export_round_trip_xxs(xxs, batch):
    """ONNX Runtime on the exported mobilevit_xxs matches PyTorch FP32 at batch 1 and 3."""
    exported, model = xxs
    x = metrics.random_images(batch, 256)
    sess = ort.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    got = sess.run(None, {accuracy.INPUT: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    m = metrics.compare(want, got)
    assert got.shape == (batch, 1000)
    assert m["max_abs"] < 1e-4 and m["cosine_min"] > 0.99999 and m["top1_agreement"] == 1.0


def test_export_has_dynamic_batch_and_one_layernorm_op(xxs):
    """The batch axis is symbolic and LayerNorm stays one op (opset 17)."""
    exported, _ = xxs
    g = onnx.load(str(exported.onnx)).graph
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert g.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = [n.op_type for n in g.node]
    assert ops.count("LayerNormalization") > 0 and "ReduceMean" not in ops


def test_describe_names_the_batch_axis_and_sizes_in_mib(xxs):
    """describe() reports the symbolic batch and the file size in MiB (2**20 bytes), under a key that says so."""
    exported, _ = xxs
    d = export.describe(exported.onnx)
    assert d["inputs"]["input"][0] == "batch" and d["opset"] == 17
    assert d["size_mib"] == round(exported.onnx.stat().st_size / 2**20, 2) and "size_mb" not in d


def test_verify_saves_polygraphy_reference(xxs):
    """verify() passes with stated tolerances and saves inputs/outputs polygraphy can reload."""
    exported, model = xxs
    table, passed = export.verify(exported, model, batches=(1, 3), atol=1e-4, rtol=1e-3)
    assert passed and list(table["batch"]) == [1, 3]
    assert (table["top1_agreement"] == 1.0).all() and (table["max_abs"] < 1e-4).all()
    inputs, outputs = export.load_reference(exported)
    assert [d[accuracy.INPUT].shape[0] for d in inputs] == [1, 3]
    assert not np.allclose(inputs[0][accuracy.INPUT], inputs[0][accuracy.INPUT].flat[0])  # not constant
    ref = list(outputs.values())[0]
    assert ref[1][accuracy.OUTPUT].shape == (3, 1000)


def test_verify_fails_with_impossible_tolerance(xxs):
    """The element-wise check can fail: a tolerance of zero is not met by two different runtimes."""
    exported, model = xxs
    _, passed = export.verify(exported, model, batches=(2,), atol=0.0, rtol=0.0)
    assert not passed


def test_reexport_is_reused(xxs):
    """Same settings reuse the export instead of rewriting it."""
    exported, _ = xxs
    before = exported.onnx.stat().st_mtime_ns
    again, _ = export.ensure_exported("mobilevit_xxs", "random", 256, 17, seed=0)
    assert again.onnx == exported.onnx and again.onnx.stat().st_mtime_ns == before


def test_an_export_whose_bytes_changed_is_made_again(xxs):
    """The key of what made model.onnx lies beside it; a file edited since is exported again, not trusted."""
    exported, _ = xxs
    key = io.read_json(io.key_path(exported.onnx))
    assert key["key"]["variant"] == "mobilevit_xxs" and key["sha256"] == io.sha256(exported.onnx)
    good = exported.onnx.read_bytes()
    exported.onnx.write_bytes(good[:-10])
    again, _ = export.ensure_exported("mobilevit_xxs", "random", 256, 17, seed=0)
    assert again.onnx.read_bytes() == good  # the export is deterministic: the same bytes come back


def test_an_export_made_with_another_timm_is_made_again(tmp_path, monkeypatch):
    """timm's version is part of the export's key: another release defines another graph, so it is not reused."""
    import timm
    real, made = timm.__version__, []
    monkeypatch.setattr(paths, "MODELS", tmp_path)  # a folder of its own; the export itself stands in
    monkeypatch.setattr(export, "export_onnx", lambda model, path, *_: made.append(timm.__version__) or
                        Path(path).write_bytes(b"onnx"))
    for version in (real, real, "1.0.0.dev0"):
        monkeypatch.setattr(timm, "__version__", version)
        export.ensure_exported("mobilevit_xxs", "random", 256, 17, seed=0)
    assert made == [real, "1.0.0.dev0"]  # reused once under the same timm, made again under another


def test_unknown_variant_names_valid_ones():
    with pytest.raises(ValueError, match="mobilevit_xxs.*mobilevit_s|mobilevit_s.*mobilevit_xxs"):
        mvmodel.load_model("mobilevit_tiny", "random")


def test_missing_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mvmodel.load_model("mobilevit_xxs", str(tmp_path / "nope.pth"))


def test_checkpoint_for_another_architecture(tmp_path):
    """A mobilevit_xs state dict handed to mobilevit_xxs is refused by name."""
    ckpt = tmp_path / "xs.pth"
    torch.manual_seed(0)
    import timm
    torch.save(timm.create_model("mobilevit_xs").state_dict(), ckpt)
    with pytest.raises(ValueError, match="a checkpoint of mobilevit_xs .*not mobilevit_xxs"):
        mvmodel.load_model("mobilevit_xxs", str(ckpt))


def test_checkpoint_round_trip(tmp_path):
    """A matching checkpoint loads and reproduces the model it was saved from."""
    ref, _ = mvmodel.load_model("mobilevit_xxs", "random", seed=3)
    ckpt = tmp_path / "xxs.pth"
    torch.save({"state_dict": ref.state_dict()}, ckpt)
    got, info = mvmodel.load_model("mobilevit_xxs", str(ckpt))
    assert info["source"] == "checkpoint" and info["tag"].startswith("ckpt-")
    x = torch.from_numpy(metrics.random_images(1, 256))
    with torch.no_grad():
        assert torch.allclose(ref(x), got(x))


def test_random_weights_are_seeded():
    a, _ = mvmodel.load_model("mobilevit_xxs", "random", seed=1)
    b, _ = mvmodel.load_model("mobilevit_xxs", "random", seed=1)
    c, _ = mvmodel.load_model("mobilevit_xxs", "random", seed=2)
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_weights_fallback_is_loud_and_fast(monkeypatch):
    """With the hub unreachable, 'auto' falls back to seeded random weights within 10 s, with a warning."""
    monkeypatch.delenv("MVLIB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(mvmodel, "HUB_HOST", ("hub.invalid", 443))  # .invalid never resolves (RFC 2606)
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="WEIGHTS FALLBACK"):
        _, info = mvmodel.load_model("mobilevit_xxs", "auto", seed=0)
    assert time.perf_counter() - start < 10 + 5  # the probe's bound plus building the model
    assert info["source"] == "random" and "fallback_reason" in info and info["tag"] == "random-seed0"


def test_the_resolver_falls_back_to_random_once_loudly_offline():
    """Offline (as tests are), 'auto' is decided as 'random', with the fallback banner and the reason."""
    with pytest.warns(RuntimeWarning, match="WEIGHTS FALLBACK"):
        decision = mvmodel.resolve_weights("mobilevit_xxs", "auto", seed=0)
    assert decision["requested"] == "auto" and decision["chosen"] == "random" and decision["fallback"]
    assert "offline" in decision["reason"] and "fallback" in decision["label"]


def test_the_resolver_picks_pretrained_where_the_hub_serves_them(monkeypatch):
    calls = []
    monkeypatch.setattr(mvmodel, "_pretrained", lambda variant, probe=True: calls.append(probe) or (object(), ""))
    decision = mvmodel.resolve_weights("mobilevit_xxs", "auto")
    assert decision["chosen"] == "pretrained" and not decision.get("fallback") and calls == [True]


def test_pretrained_by_name_never_falls_back(monkeypatch):
    """'pretrained' (what the driver hands notebooks after the hub answered) fails instead of loading random weights."""
    monkeypatch.setattr(mvmodel, "_pretrained", lambda variant, probe=True: (None, "hub down"))
    with pytest.raises(RuntimeError, match="pretrained"):
        mvmodel.resolve_weights("mobilevit_xxs", "pretrained")
    with pytest.raises(RuntimeError, match="hub down"):
        mvmodel.load_model("mobilevit_xxs", "pretrained")


def test_the_resolver_keeps_concrete_choices(tmp_path, monkeypatch):
    assert mvmodel.resolve_weights("mobilevit_xxs", "random", seed=2)["chosen"] == "random"
    ref, _ = mvmodel.load_model("mobilevit_xxs", "random", seed=2)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    monkeypatch.chdir(tmp_path)  # a relative checkpoint is made absolute: notebooks run in notebooks/
    assert mvmodel.resolve_weights("mobilevit_xxs", "w.pth")["chosen"] == str((tmp_path / "w.pth").resolve())
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        mvmodel.resolve_weights("mobilevit_xxs", "nope.pth")
    with pytest.raises(ValueError, match="mobilevit_xxs"):
        mvmodel.resolve_weights("mobilevit_tiny", "random")


def test_hub_probe_times_out(monkeypatch):
    """A host that never answers is given up on after the timeout, not after the OS's."""
    monkeypatch.delenv("MVLIB_OFFLINE", raising=False)
    monkeypatch.setattr(mvmodel, "HUB_HOST", ("10.255.255.1", 443))  # unroutable: the connect hangs
    import socket
    def hang(*args, **kwargs):
        time.sleep(30)
        raise OSError("never answered")  # the probe thread outlives the test: end it quietly
    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    ok, why = mvmodel.hub_reachable(timeout=1.0)
    assert not ok and "did not answer" in why and time.perf_counter() - start < 3


@pytest.mark.parametrize("opset", [12, 16, 21])
def test_bad_opset(opset):
    with pytest.raises(ValueError, match="opset"):
        export.check_opset(opset)


@pytest.mark.parametrize("size", [0, 100, 250])
def test_bad_image_size(size):
    with pytest.raises(ValueError, match="multiple of 32"):
        export.check_image_size(size)


def test_failed_export_leaves_nothing(tmp_path):
    """An export that dies half-way leaves no file (and no temp file) behind."""
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError, match="boom"):
        export.export_onnx(Broken(), target, 256, 17)
    assert list(tmp_path.iterdir()) == []


def test_check_compares_every_runner_with_the_reference():
    """A third runner that is off fails the check even when the second is fine (not neighbour-to-neighbour)."""
    from polygraphy.comparator import IterationResult, RunResults
    rng = np.random.default_rng()
    ref = rng.normal(size=(2, 1000)).astype(np.float32)

    def results(*outs):
        return RunResults([(f"r{i}", [IterationResult({accuracy.OUTPUT: o}, runner_name=f"r{i}")])
                           for i, o in enumerate(outs)])
    assert accuracy.check(results(ref, ref + 1e-7, ref + 2e-7), atol=1e-5, rtol=0)
    assert not accuracy.check(results(ref, ref + 1e-7, ref + 1.0), atol=1e-5, rtol=0)
    assert not accuracy.check(results(ref, ref + 1.0, ref + 1.0), atol=1e-5, rtol=0)  # 2 vs 3 agree, both off
