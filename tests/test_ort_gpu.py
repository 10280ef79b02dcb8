"""ONNX Runtime on the GPU (mvlib.ort_gpu, and the judge's providers: mvlib.ort_providers): which build `make`
installs, the fixed-batch model a CUDA graph needs, what the rows say where no CUDA EP is, and, on a GPU (`-m gpu`),
the CUDA EP listed, its rows timed, and its accuracy verdicts against the CPU's.

The GPU check the study's device run uses: `python -m pytest -q tests/test_ort_gpu.py -m gpu` (with onnxruntime-gpu
installed; the CPU tests of this file run everywhere).
"""
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import tomllib
from packaging.requirements import Requirement

from mvlib import autocast, bench, decision, env, ort_gpu, ort_providers, quant, quant_eval
from mvlib.skips import StageSkipped
from mvlib.tensorrt import cudainfo

pytest_plugins = ["quant_models"]

ROOT = Path(__file__).resolve().parent.parent
CUDA_EP_HERE, WHY_NOT = ort_gpu.cuda_status()
needs_cuda_ep = pytest.mark.skipif(not CUDA_EP_HERE, reason=f"no ONNX Runtime CUDA EP: {WHY_NOT}")
GPU_HERE, NO_GPU = env.cuda_status()
# GPU against CPU verdicts: judging the same file may differ by float summation order only; a calibration on the CUDA
# EP gives slightly other scales (entropy: the two INT8 models' outputs agree to cosine 0.9977 on mobilevit_s).
JUDGE_COSINE_TOL = 1e-4
CALIBRATION_COSINE_TOL = 3e-3


def _extras() -> dict:
    """pyproject.toml's extras."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _cudainfo(*args: str) -> subprocess.CompletedProcess:
    """The stdlib-only script as `make` runs it (bare interpreter, isolated)."""
    return subprocess.run([sys.executable, "-I", str(ROOT / "mvlib/tensorrt/cudainfo.py"), *args],
                          capture_output=True, text=True)


# --- install ----------------------------------------------------------------------------------------------------
def test_the_onnxruntime_build_follows_the_driver():
    """No driver (or one older than CUDA 12): the CPU build; else onnxruntime-gpu of the driver's CUDA major."""
    assert cudainfo.extra_for(None, "ort") == "ort-cpu" and cudainfo.extra_for(11080, "ort") == "ort-cpu"
    assert cudainfo.extra_for(12020, "ort") == "ort-cu12" and cudainfo.extra_for(12090, "ort") == "ort-cu12"
    assert cudainfo.extra_for(13000, "ort") == "ort-cu13" and cudainfo.extra_for(14010, "ort") == "ort-cu13"
    assert cudainfo.unwanted_ort("ort-cpu") == "onnxruntime-gpu"
    assert cudainfo.unwanted_ort("ort-cu12") == cudainfo.unwanted_ort("ort-cu13") == "onnxruntime"
    with pytest.raises(ValueError, match="'ort'"):
        cudainfo.extra_for(13000, "onnxruntime")


def test_each_extra_installs_one_onnxruntime_of_its_cuda_major():
    """The base dependencies name neither package; ort-cu12 stops before 1.27 (PyPI's first CUDA 13 build) and
    ort-cu13 starts there; both bring their CUDA and cuDNN wheels."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {Requirement(r).name for r in project["dependencies"]}
    assert not base & {"onnxruntime", "onnxruntime-gpu"}, "a base dependency would put both builds in one venv"
    extras = {name: [Requirement(r) for r in reqs] for name, reqs in _extras().items()}
    assert [r.name for r in extras["ort-cpu"]] == ["onnxruntime"]
    for name, inside, outside in (("ort-cu12", "1.26.0", "1.27.0"), ("ort-cu13", "1.31.1", "1.26.0")):
        (req,) = extras[name]
        assert req.name == "onnxruntime-gpu" and req.extras == {"cuda", "cudnn"}, name
        assert req.specifier.contains(inside) and not req.specifier.contains(outside), (name, req.specifier)
    for name, reqs in extras.items():  # no other extra brings an ONNX Runtime of its own
        if not name.startswith("ort-"):
            assert not {r.name for r in reqs} & {"onnxruntime", "onnxruntime-gpu"}, name


def test_make_installs_the_build_the_script_picks_after_removing_the_other():
    """`make -n` (make's own parsing of the recipe): the uninstall of both where the unwanted one is, then the dev
    install with the script's ort extra; the script answers here (no driver): ort-cpu, unwanted onnxruntime-gpu."""
    out = subprocess.run(["make", "-n", "VENV=/tmp/mvlib-ort-venv", "PYTHON=python3", "/tmp/mvlib-ort-venv/.installed"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    uninstall = next(i for i, line in enumerate(out) if "pip uninstall" in line and "onnxruntime" in line)
    dev = next(i for i, line in enumerate(out) if '".[dev,' in line)
    assert uninstall < dev
    assert "cudainfo.py unwanted ort)" in out[uninstall] and "onnxruntime onnxruntime-gpu" in out[uninstall]
    script = r"\$\(\S+ mvlib/tensorrt/cudainfo.py extra"
    assert re.search(rf'"\.\[dev,{script} ort\)(,{script}\))?\]"', out[dev]), out[dev]
    if cudainfo.driver_version()[0] is None:
        assert _cudainfo("extra", "ort").stdout.strip() == "ort-cpu"
        assert _cudainfo("unwanted", "ort").stdout.strip() == "onnxruntime-gpu"
    bad = _cudainfo("unwanted", "rtx")
    assert bad.returncode == 2 and "unwanted ort" in bad.stderr


def test_environment_yml_installs_the_cpu_build_and_names_the_gpu_ones():
    """conda users without a GPU get ort-cpu (what `make` installs there); the file names the GPU extras."""
    import yaml
    text = (ROOT / "environment.yml").read_text()
    pip = next(d["pip"] for d in yaml.safe_load(text)["dependencies"] if isinstance(d, dict))
    extras = set(re.fullmatch(r"-e \.\[(.*)\]", next(x for x in pip if x.startswith("-e ."))).group(1).split(","))
    assert extras & set(cudainfo.ORT_PACKAGES) == {"ort-cpu"} and extras <= set(_extras())
    assert "ort-cu13" in text and "ort-cu12" in text


# --- without a CUDA EP ------------------------------------------------------------------------------------------
@pytest.mark.skipif(CUDA_EP_HERE, reason="this machine has the CUDA EP")
def test_without_a_cuda_ep_the_rows_say_why_and_the_judge_stays_on_the_cpu(xxs, tmp_path):
    """The CUDA EP rows skip with the reason (a plain skip: on a GPU the fix is `make env`); the TensorRT EP rows
    as the machine's (no_builder); judging and calibration stay on the CPU."""
    import onnxruntime
    settings = bench.Settings(seconds=0.1, repeats=2)
    assert ort_providers.providers_for_judging() == [ort_providers.CPU_EP]
    assert ort_providers.calibration_eps() == ["cpu"] and "CPU" in ort_gpu.judge_text()
    if ort_providers.CUDA_EP not in onnxruntime.get_available_providers():  # a CPU build: the fix is `make env`
        assert "no CUDAExecutionProvider" in WHY_NOT and onnxruntime.__version__ in WHY_NOT and "`make env`" in WHY_NOT
    with pytest.raises(StageSkipped, match=re.escape(WHY_NOT)) as err:
        ort_gpu.onnxruntime_cuda(settings, xxs[0].onnx)
    assert not getattr(err.value, "no_builder", False)
    for ep in ort_gpu.TENSORRT_EPS:
        with pytest.raises(ort_gpu.NoProvider) as err:
            ort_gpu.onnxruntime_tensorrt(settings, xxs[0].onnx, ep=ep)
        assert err.value.no_builder and str(err.value)
    with pytest.raises(StageSkipped, match="model.fp8.onnx not found .*04") as err:  # the notebook that writes it
        ort_gpu.onnxruntime_cuda(settings, tmp_path / "model.fp8.onnx", "fp8")
    assert err.value.needs == ("model.fp8.onnx",)


# --- the fixed-batch model ------------------------------------------------------------------------------------
def test_a_fixed_batch_folds_the_shape_arithmetic_a_cuda_graph_cannot_hold(xxs):
    """The exported model's dynamic batch leaves Shape nodes after ONNX Runtime's optimizer (on the CUDA EP they run
    on the CPU, with Memcpy around them, and refuse the CUDA graph); with the batch fixed none is left, and the
    logits are the dynamic model's."""
    model = onnx.load(str(xxs[0].onnx))
    assert ort_gpu.cpu_nodes(model, [ort_providers.CPU_EP]) > 0
    fixed = ort_gpu.fixed_batch(model, 4)
    assert ort_gpu.cpu_nodes(fixed, [ort_providers.CPU_EP]) == 0
    name, dtype, out_name, shape, _ = ort_gpu.io_spec(fixed)
    assert shape[0] == 4 and dtype == np.float32 and fixed.ir_version == model.ir_version
    x = bench.images(4, bench.Settings(img_size=256))
    cpu = [ort_providers.CPU_EP]
    got = ort.InferenceSession(fixed.SerializeToString(), providers=cpu).run([out_name], {name: x})[0]
    want = ort.InferenceSession(str(xxs[0].onnx), providers=cpu).run([out_name], {name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert ort_gpu.io_spec(ort_gpu.fixed_batch(model, 1))[3][0] == 1
    with pytest.raises(ValueError, match="static shape"):
        ort_gpu.io_spec(model)


def test_the_decision_table_says_what_an_ort_gpu_row_built():
    """An ONNX Runtime GPU row's build seconds are its session and capture at the best batch, and say so."""
    best = pd.Series({"backend": "onnxruntime-cuda", "batch": 32, "setup_s": 0.5, "prime_s": 1.5})
    built = decision.build(decision.Tables(ROOT, {}), best)
    assert built["build_s"] == 2.0 and "ONNX Runtime GPU session" in built["build_what"]
    assert "CUDA-graph capture" in built["build_what"] and "batch 32" in built["build_what"]


# --- on the GPU: `pytest tests/test_ort_gpu.py -m gpu` -------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not GPU_HERE, reason=NO_GPU)
def test_the_cuda_ep_is_listed_and_runs():
    """After preload_dlls, get_available_providers lists the CUDA EP and a session really runs on it."""
    ort_providers.preload()
    assert ort_providers.CUDA_EP in ort.get_available_providers(), (ort.__version__, ort.get_available_providers())
    assert CUDA_EP_HERE, WHY_NOT
    assert ort_providers.providers_for_judging()[0] == (ort_providers.CUDA_EP, {"use_tf32": "0"})
    assert ort_providers.calibration_eps()[0] == "cuda:0"
    with ort_providers.on_cpu():
        assert ort_providers.providers_for_judging() == [ort_providers.CPU_EP]
        assert ort_providers.calibration_eps() == ["cpu"]


@pytest.mark.gpu
@needs_cuda_ep
def test_the_cuda_ep_rows_are_timed_with_a_graph_and_checked(xxs, images, q_all):
    """FP32, FP16, INT8 and FP8 (where the GPU has it) at two batches, short windows: rows with spread and energy
    columns, the FP32 row replays the EP's CUDA graph, every row's logits checked against PyTorch FP32."""
    from quant_models import quantized_all

    from mvlib import fp8
    from mvlib.tensorrt import flavours
    settings = bench.Settings(img_size=256, seconds=0.2, repeats=2, warmup_s=0.05, variant="mobilevit_xxs")
    reference = bench.Reference(xxs[1], settings)
    files = {"fp32": xxs[0].onnx, "fp16": autocast.ensure_fp16(xxs[0].onnx).path, "int8": q_all[0]}
    if fp8.has_fp8(flavours.capability_here())[0]:
        files["fp8"] = quantized_all(xxs, images, "fp8")[0]
    tables = []
    for prec, path in files.items():
        tables.append(bench.measure_all(ort_gpu.onnxruntime_cuda, [1, 8], settings, path, prec, accuracy=reference))
    rows = pd.concat(tables, ignore_index=True)
    print(rows[["label", "batch", "throughput_ips", "median_ms", "spread_pct", "power_w", "timing"]].to_string())
    assert list(rows.columns) == bench.COLUMNS and (rows.throughput_ips > 0).all()
    assert rows[rows.precision == "fp32"].timing.str.contains("replaying the EP's CUDA graph").all(), \
        rows[rows.precision == "fp32"].timing.tolist()
    acc = reference.table()
    print(acc[["label", "batch", "cosine_mean", "top1_agreement"]].to_string())
    assert len(acc) == len(rows) and (acc[acc.precision == "fp32"].cosine_min > 0.9999).all()
    assert (acc.cosine_mean > 0.99).all()


@pytest.mark.gpu
@needs_cuda_ep
def test_a_graph_replay_returns_before_it_is_done_as_the_rows_timing_says(xxs):
    """GRAPH_TIMING's claim, on the GPU: with disable_synchronize_execution_providers, run_with_iobinding returns
    from a replay of the EP's CUDA graph before the GPU is done, so replays are in flight as other rows' launches
    (batch 64 keeps the GPU busy for milliseconds; a synchronizing replay would leave the stream idle every time).
    A review's reading of cuda_graph.cc claimed the opposite; an H100 (ORT 1.31.1) found the stream busy."""
    import torch
    model = ort_gpu.fixed_batch(onnx.load(str(xxs[0].onnx)), 64)
    stream = torch.cuda.Stream()
    x = bench.images(64, bench.Settings(img_size=256))
    one = ort_gpu._Batch(model, ort_providers.CUDA_EP, stream, x, True, ort)
    for _ in range(ort_gpu.CAPTURE_RUNS):  # the EP captures in these runs
        one.run()
    torch.cuda.synchronize()
    busy = []
    for _ in range(5):
        one.run()
        busy.append(not stream.query())
        torch.cuda.synchronize()
    assert any(busy), "every replay had finished when run_with_iobinding returned: GRAPH_TIMING's claim is wrong"
    assert "in flight" in ort_gpu.GRAPH_TIMING and "synchronizes" not in ort_gpu.GRAPH_TIMING


def _verdicts(xxs, images, prec: str) -> tuple[pd.DataFrame, pd.Series | None]:
    """Notebook 04's policy table and choice for `prec`, calibrated and judged where ort_gpu says."""
    ev = quant_eval.Evaluator.from_onnx(xxs[0].onnx, images.eval, images.eval_labels)
    table = quant.compare_policies(xxs[0], images.calib, ev, precision=prec)
    return table, quant.choose(table)


@pytest.mark.gpu
@needs_cuda_ep
def test_judging_the_same_files_on_the_gpu_gives_the_cpus_verdicts(xxs, images, q_all):
    """The same Q/DQ file judged on the CUDA EP and on the CPU: same pass/fail, cosines within JUDGE_COSINE_TOL."""
    gpu = quant_eval.Evaluator.from_onnx(xxs[0].onnx, images.eval, images.eval_labels)
    with ort_providers.on_cpu():
        cpu = quant_eval.Evaluator.from_onnx(xxs[0].onnx, images.eval, images.eval_labels)
        on_cpu = cpu.evaluate(q_all[0], "int8")
    on_gpu = gpu.evaluate(q_all[0], "int8")
    print({k: (on_cpu[k], on_gpu[k]) for k in ("cosine_mean", "top1_agreement", "passes")})
    assert on_cpu["passes"] == on_gpu["passes"]
    assert abs(on_cpu["cosine_mean"] - on_gpu["cosine_mean"]) <= JUDGE_COSINE_TOL


@pytest.mark.gpu
@needs_cuda_ep
@pytest.mark.parametrize("prec", ["int8", "fp8"])
def test_notebook_04s_verdicts_on_the_gpu_match_the_cpus(xxs, images, prec):
    """Calibrated and judged on the CUDA EP against the same on the CPU: the same pass/fail per policy and method,
    the same chosen policy and method, cosines within CALIBRATION_COSINE_TOL."""
    from mvlib import fp8
    if prec == "fp8":
        from mvlib.tensorrt import flavours
        ok, why = fp8.has_fp8(flavours.capability_here())
        if not ok:
            pytest.skip(why)
    with ort_providers.on_cpu():
        cpu_table, cpu_choice = _verdicts(xxs, images, prec)
    gpu_table, gpu_choice = _verdicts(xxs, images, prec)
    keys = ["policy", "method"]
    both = cpu_table.merge(gpu_table, on=keys, suffixes=("_cpu", "_gpu"))
    print(both[keys + ["cosine_mean_cpu", "cosine_mean_gpu", "passes_cpu", "passes_gpu"]].to_string())
    assert len(both) == len(cpu_table) == len(gpu_table)
    assert (both.passes_cpu == both.passes_gpu).all()
    assert (both.cosine_mean_cpu - both.cosine_mean_gpu).abs().max() <= CALIBRATION_COSINE_TOL
    assert (cpu_choice is None) == (gpu_choice is None)
    if cpu_choice is not None:
        assert tuple(cpu_choice[keys]) == tuple(gpu_choice[keys])


@pytest.mark.gpu
@needs_cuda_ep
def test_notebook_03s_onnx_runtime_runner_runs_on_the_cuda_ep(xxs):
    """The polygraphy runner notebooks 01 to 05 judge with is on the CUDA EP (and on the CPU within on_cpu()), and in
    full FP32: notebook 01's export check (atol 1e-4, rtol 1e-3 against PyTorch FP32 on the CPU) passes on it."""
    from mvlib import accuracy
    runner = accuracy.onnxrt_runner(xxs[0].onnx, "onnxrt-fp32")
    with runner:
        assert runner.sess.get_providers()[0] == ort_providers.CUDA_EP
    results = accuracy.run([accuracy.torch_runner(xxs[1].float().cpu().eval(), 256), runner],
                           accuracy.feeds((1, 3), 256, seed=0))
    assert accuracy.check(results, atol=1e-4, rtol=1e-3)
    with ort_providers.on_cpu():
        runner = accuracy.onnxrt_runner(xxs[0].onnx, "onnxrt-fp32")
    with runner:
        assert runner.sess.get_providers() == [ort_providers.CPU_EP]


# --- the API the GPU rows use, against the installed onnxruntime (the CPU build has the same Python classes) --------
RECEIVERS = {"binding": ort.IOBinding, "sess": ort.InferenceSession, "run_options": ort.RunOptions,
             "opts": ort.SessionOptions}


def test_every_onnxruntime_name_the_gpu_rows_use_exists():
    """Each `ort.X(.Y)` and each method called on a session, I/O binding, run options or session options in
    mvlib/ort_gpu.py and mvlib/ort_providers.py, against the installed onnxruntime: a misspelt name would surface
    only on a GPU."""
    src = Path(ort_gpu.__file__).read_text() + Path(ort_providers.__file__).read_text()
    missing = []
    guarded = set(re.findall(r'hasattr\(ort, "(\w+)"\)', src))  # asked for first (preload_dlls: 1.21+, not 1.20)
    for dotted in set(re.findall(r"\bort\.(\w+(?:\.\w+)?)", src)) - {"__version__"} - guarded:
        obj = ort
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
        missing += [f"ort.{dotted}"] if obj is None else []
    for receiver, name in set(re.findall(r"\b(binding|sess|run_options|opts)\.(\w+)", src)):
        missing += [] if hasattr(RECEIVERS[receiver], name) else [f"{receiver}.{name}"]
    missing += [] if hasattr(ort.OrtValue, "numpy") else ["OrtValue.numpy"]  # the logits of a row
    assert not missing, missing
    assert {"bind_ortvalue_input", "run_with_iobinding", "add_run_config_entry"} <= {
        n for _, n in re.findall(r"\b(binding|sess|run_options)\.(\w+)", src)}


def test_graph_and_plain_rows_both_say_their_runs_are_in_flight():
    """Replays and plain runs alike return before the GPU is done (disable_synchronize_execution_providers; measured on
    the H100 by test_a_graph_replay_returns_before_it_is_done_as_the_rows_timing_says), so both rows say so."""
    assert ort_gpu.GRAPH_TIMING.endswith(f"{bench.IN_FLIGHT} in flight") and "replaying the EP's CUDA graph" in (
        ort_gpu.GRAPH_TIMING)
    assert ort_gpu.PLAIN_TIMING.endswith(f"{bench.IN_FLIGHT} in flight")


def test_the_decision_table_reads_how_an_ort_gpu_row_was_timed():
    """decision.timing_method reads the `timing` text of every GPU row: an ONNX Runtime row is 'CUDA graph' or 'plain
    launches' like the others, never 'not recorded'."""
    assert decision.timing_method("cuda", ort_gpu.GRAPH_TIMING) == "CUDA graph"
    why = "enable_cuda_graph refused: This session cannot use the graph capture feature as requested"
    assert decision.timing_method("cuda", ort_gpu.PLAIN_TIMING.format(why=why)) == "plain launches"


def test_device_memory_taken_counts_only_what_is_outside_pytorch_and_is_never_negative():
    """device_mem_mib: the drop in free memory less what PyTorch's allocator reserved meanwhile; where another
    allocator freed memory between the readings (earlier rows' sessions, PyTorch's cache: -443 MiB on the H100),
    the reading is NaN, not a negative 'memory taken'."""
    mib = 2**20
    before = {"free": 70_000 * mib, "reserved": 500 * mib}
    assert ort_gpu.taken_outside_pytorch(before, {"free": 69_800 * mib, "reserved": 500 * mib}) == 200
    assert ort_gpu.taken_outside_pytorch(before, {"free": 69_700 * mib, "reserved": 600 * mib}) == 200
    assert math.isnan(ort_gpu.taken_outside_pytorch(before, {"free": 70_443 * mib, "reserved": 500 * mib}))
