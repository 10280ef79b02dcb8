"""FP8 (E4M3) beside INT8: which hardware and runtimes take it, the opset it needs, its engines and their target.

Serves notebooks 04 (the FP8 model, its accuracy and engines) and 05 (the plugin-FP8 engine's target, through
mvlib.silu.engines). The model
itself is made by `mvlib.quant` with `precision="fp8"`, the same machinery as INT8. What is FP8's own:

- FP8 tensor cores exist from compute capability 8.9 on (Ada: L4, RTX 40xx; Hopper: H100/H200; Blackwell:
  B200, RTX 50xx). TensorRT-RTX refuses to compile FP8 for older targets ("Cannot compile for target(s)
  sm86, because the model contains HW-specific datatypes: fp8_e4m3"), so FP8 engines get their own target,
  `fp8_target` (default: this GPU where it has FP8 and the flavour runs on it, else sm89).
- FP8 Q/DQ needs ONNX opset 19. ModelOpt raises the export (opset 17) to 19 with
  `onnx.version_converter.convert_version` before quantizing; `opset_check` runs that same conversion and
  shows that the FP32 graph computes the same logits after it.
- ONNX Runtime runs FP8 QuantizeLinear/DequantizeLinear on the CPU (`onnxruntime_runs_fp8` checks the
  installed version for real, on a model of the IR version and opset ModelOpt writes), so FP8 accuracy is
  measured anywhere, like INT8's.
"""
import re
from pathlib import Path

import numpy as np
import onnx
import pandas as pd

from mvlib import accuracy, metrics, onnxmodel, precisions
from mvlib.skips import StageSkipped
from mvlib.tensorrt import flavours, runner
from mvlib.tensorrt import table as engines_table

DEFAULT_TARGET = "sm89"  # L4 / RTX 40xx: the oldest FP8 architecture, and one TensorRT-RTX targets
OPSET = 19  # FP8 types in QuantizeLinear/DequantizeLinear


class NoFP8(StageSkipped):
    """This GPU has no FP8 tensor cores: a stage that needs them cannot run here, whatever the tier.

    `no_fp8_hardware` marks the skip as the hardware's, as `no_builder` marks a missing builder, so that
    a run on an FP8-less GPU of the expected tier can excuse it (the driver decides).
    """
    no_fp8_hardware = True


# ---------------------------------------------------------------- which GPUs
def has_fp8(capability: str | tuple[int, int] | None) -> tuple[bool, str]:
    """Whether a GPU of `capability` ('8.9', 'sm89' or (8, 9)) has FP8 tensor cores, and why not (the table's gate,
    precisions.runs_on, plus where INT8 runs instead)."""
    ok, why = precisions.runs_on("fp8", capability)
    if ok or capability is None or capability == "":
        return ok, why
    return False, f"{why}; INT8 runs from {precisions.get('int8').min_capability} on"


# ---------------------------------------------------------------- engines
def build_target(trt_flavour: str = "auto", fp8_target: str = "auto") -> str:
    """The target FP8 engines are built for, with the flavour `trt_flavour` selects.

    TensorRT-RTX builds ahead of time: `auto` is this GPU where it has FP8 and RTX runs on it, else sm89;
    a named target must have FP8. Full TensorRT builds for this machine's GPU only, so it builds FP8
    engines only where that GPU has FP8 (else flavours.NoBuilder, which excuses the build stage).
    """
    fl = flavours.select(trt_flavour)
    cap = flavours.capability_here()
    here = f"sm{cap.replace('.', '')}" if cap else None
    if not fl.rtx:
        ok, why = has_fp8(cap)
        if not ok:
            raise flavours.NoBuilder(f"{fl.label} builds only for this machine's GPU: {why}. TensorRT-RTX builds FP8 "
                                "engines ahead of time for sm89 (pip install tensorrt-rtx-cu13)")
        if fp8_target not in ("auto", here):
            raise ValueError(f"fp8_target={fp8_target!r}: {fl.label} builds only for this GPU ({here}); use 'auto'")
        return "auto"
    fp8_targets = [t for t in fl.targets if has_fp8(t)[0]]
    if fp8_target == "auto":
        return here if here in fp8_targets and fl.runs_here()[0] else DEFAULT_TARGET
    if fp8_target not in fl.targets:
        raise ValueError(f"fp8_target={fp8_target!r}: {fl.label} builds for {', '.join(fl.targets)}; FP8 needs one "
                         f"of {', '.join(fp8_targets)} (or 'auto')")
    ok, why = has_fp8(fp8_target)
    if not ok:
        raise ValueError(f"fp8_target={fp8_target!r}: {why}; {fl.label} refuses to compile FP8 for it. Use one of "
                         f"{', '.join(fp8_targets)} (or 'auto')")
    return fp8_target


def build_engines(notebook: str, specs: list, profile, trt_flavour: str = "auto", fp8_target: str = "auto",
                  workspace_gb: float = 4) -> pd.DataFrame:
    """The engines-table rows of FP8 engines: `build_all` of the engines table, for the FP8 target (`build_target`)."""
    return start_engines(notebook, specs, profile, trt_flavour, fp8_target, workspace_gb).table()


def start_engines(notebook: str, specs: list, profile, trt_flavour: str = "auto", fp8_target: str = "auto",
                  workspace_gb: float = 4) -> engines_table.Builds:
    """FP8's engine builds started now (engines_table.Builds), so that they run beside INT8's; their `table()` is
    build_engines' rows, and raises what stopped them (no FP8 target) inside the stage that awaits it."""
    try:
        target = build_target(trt_flavour, fp8_target)
    except Exception as err:
        return engines_table.Builds(notebook, specs, profile, error=err)
    return engines_table.Builds(notebook, specs, profile, trt_flavour, target, workspace_gb)


def runnable(engine):
    """`engine` if it runs on this GPU: the flavour runs here, the GPU has FP8 and is the engine's target."""
    engine = runner.runnable(engine)
    cap = flavours.capability_here()
    ok, why = has_fp8(cap)
    if not ok:
        raise NoFP8(f"built, not run: {why}")
    here = f"sm{cap.replace('.', '')}"
    target = engine.info.get("target")
    if engine.flavour.rtx and target != here:
        raise StageSkipped(f"built for {target}, not run: this GPU is {here} (rebuild with fp8_target='auto')")
    return engine


# ---------------------------------------------------------------- ONNX Runtime and the opset
def _qdq_model(values: np.ndarray, scale: float) -> onnx.ModelProto:
    """A one-tensor FP8 QuantizeLinear -> DequantizeLinear model, at the IR version and opset of the study's FP8
    models (ModelOpt's: IR 10, opset 19), not the installed onnx's newest IR, which an older ONNX Runtime refuses."""
    h = onnx.helper
    zp = h.make_tensor("zp", onnx.TensorProto.FLOAT8E4M3FN, [], [0.0])
    sc = onnx.numpy_helper.from_array(np.array(scale, np.float32), "scale")
    nodes = [h.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"]),
             h.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"])]
    graph = h.make_graph(nodes, "fp8_qdq", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, values.shape)],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, values.shape)], [sc, zp])
    return onnxmodel.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)])


def refusal(err: Exception, model: onnx.ModelProto) -> str:
    """Why ONNX Runtime refused `model` (its IR version, its opset, a missing kernel), and a fix it does not have yet.

    The fixes name an ONNX Runtime newer than this one, or PyPI's CPU build of it: never the range the project
    already requires (this ONNX Runtime may well be inside it).
    """
    import onnxruntime as ort
    text = str(err)
    version = ort.__version__
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    upgrade = f"pip install --upgrade 'onnxruntime>{version}'"
    if m := re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text):
        return (f"ONNX Runtime {version} reads ONNX IR up to version {m[2]}; the model is IR {m[1]}. Write the model "
                f"at IR {min(int(m[2]), onnxmodel.IR_VERSION)} (mvlib.onnxmodel.make_model), or {upgrade}")
    if m := re.search(r"Opset (\d+) is under development|opset[^0-9]*(\d+)[^.]*not supported", text, re.IGNORECASE):
        return (f"ONNX Runtime {version} does not support opset {m[1] or m[2]} of the model (FP8 Q/DQ needs opset "
                f"{OPSET}): {upgrade}")
    if m := re.search(r"Could not find an implementation for (\w+)\((\d+)\)", text):
        return (f"ONNX Runtime {version} has no CPU kernel for {m[1]} (opset {m[2]}) with the model's FP8 types "
                f"(IR {model.ir_version}, opset {opset}); this build lacks its FP8 kernels. Install PyPI's CPU build "
                f"of a newer one: pip uninstall -y onnxruntime-gpu; {upgrade}")
    return (f"ONNX Runtime {version} refused the model (IR {model.ir_version}, opset {opset}): "
            f"{type(err).__name__}: {_first_line(text)}. Try {upgrade}")


def _first_line(text: str) -> str:
    """The first line of an error, without ONNX Runtime's source location, at most 200 characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return re.sub(r"/\S+\.(cc|h):\d+ \S+(\(.*?\))? ", "", line)[:200]


def onnxruntime_runs_fp8(seed: int = 0) -> tuple[bool, str]:
    """Whether this ONNX Runtime runs FP8 Q/DQ on the CPU, rounding as E4M3FN does (ml_dtypes); and why not."""
    import ml_dtypes
    import onnxruntime as ort
    x = np.random.default_rng(seed).normal(0.0, 3.0, size=(4, 64)).astype(np.float32)
    scale = 0.05
    expected = (np.clip(x / scale, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale)
    model = _qdq_model(x, scale)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": x})[0]
    except Exception as err:  # refused at load (IR, opset) or at session creation (no kernel)
        return False, f"ONNX Runtime cannot run FP8 QuantizeLinear/DequantizeLinear on the CPU: {refusal(err, model)}"
    if not np.array_equal(got, expected):
        return False, (f"ONNX Runtime {ort.__version__} runs FP8 Q/DQ but rounds differently from E4M3FN "
                       f"(max difference {np.abs(got - expected).max():.3g})")
    return True, f"ONNX Runtime {ort.__version__} runs FP8 (E4M3FN) Q/DQ on the CPU"


def require_onnxruntime() -> str:
    """The sentence saying ONNX Runtime runs FP8 here, or an error saying why not and naming the fix.

    ONNX Runtime has run opset 19's FP8 QuantizeLinear/DequantizeLinear on the CPU since 1.15
    (microsoft/onnxruntime#14731), so a refusal is the model's IR or opset, or a build without FP8 kernels:
    `onnxruntime_runs_fp8` says which.
    """
    ok, why = onnxruntime_runs_fp8()
    if not ok:
        raise RuntimeError(why)
    return why


def opset_check(onnx_path: Path | str, img_size: int, seed: int | None = None, batches=(1, 3),
                atol: float = 1e-5) -> pd.DataFrame:
    """The FP32 model before and after ModelOpt's opset conversion (onnx.version_converter to 19), in ONNX Runtime.

    One row per batch of fresh random images: the two graphs' opsets, max abs error, cosine and top-1
    agreement of the converted graph against the original, and whether it is unchanged (max abs <= atol).
    """
    import onnxruntime as ort
    original = onnx.load(str(onnx_path))
    before = next(o.version for o in original.opset_import if o.domain in ("", "ai.onnx"))
    converted = onnx.version_converter.convert_version(original, OPSET) if before < OPSET else original
    onnx.checker.check_model(converted)
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (original, converted)]
    rows = []
    for feed in accuracy.feeds(batches, img_size, seed=seed):
        ref, out = (s.run([accuracy.OUTPUT], feed)[0] for s in sessions)
        m = metrics.compare(ref, out)
        rows.append({"opset_before": before, "opset_after": OPSET, "converter": "onnx.version_converter",
                     "batch": len(ref), **m, "unchanged": m["max_abs"] <= atol})
    return pd.DataFrame(rows)
