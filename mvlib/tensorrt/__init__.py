"""TensorRT for the study, both flavours, one module per job (the way polygraphy's backend/trt separates them).

Full TensorRT 10/11 (module `tensorrt`) and TensorRT-RTX (module `tensorrt_rtx`) share the `nvinfer1` API;
what differs between them is decided in `flavours`. Imports run downward only:

    cudainfo   the driver's CUDA version and the GPU's compute capability (cuda-python; stdlib fallbacks)
    flavours   which flavour, which target, whether it runs here: `decide()` (once per run, by the driver)
    shapes     the batch optimization profile and the model's input
    plugins    plugin libraries: the caller's check, loading, a digest that survives rebuilds, plugin nodes
    cache      the engine cache: keys, build records, the parent side of a build, superseded entries
    child      the build child (`python -m mvlib.tensorrt build SPEC RESULT`)
    runner     deserialization, per-plan validity, runtime config, Session, the polygraphy runner
    layers     layer information: the engine inspector and the builder's own layer listing
    timing     engines timed the trtexec way (CUDA graphs where allowed) and RTX's JIT costs
    table      the engines table (results/engines.csv), its prose and the runners of its built engines

This file imports none of them, so `python -m mvlib.tensorrt.X` and the Makefile's stdlib-only use of
`cudainfo` stay cheap.

Serves: notebooks 03 to 06 (engines built, run and timed) and `python -m mvlib.tensorrt`.
"""
