"""The SiLU plugin's Python side, one module per job (the way TensorRT's onnx_custom_plugin sample keeps surgery,
loader, sample and test together). Serves notebooks 02 (the rewrite) and 05 (everything), and 06 (plugin engines
timed); tests/silu/test_<module>.py each. Imports run downward only:

    build         silu_plugin/build.sh from Python, the libraries and their build record, the ABI record, the
                  plugin's interface check (needs nvcc; TensorRT headers for the plugin)
    torch_op      the kernel library through ctypes, as a plain call and as torch.ops.mvlib.silu; nn.SiLU swapped
    gpu_checks    the kernel on a GPU: correctness against PyTorch, bandwidth against a device copy, in the model
    onnx_rewrite  Sigmoid·Mul -> one plugin node, and its proof on the CPU with an ONNX Runtime stand-in
    engines       the plugin models of each precision, their engines, plugin layers and accuracy, timed backend

This file imports none of them, so notebook 02's rewrite does not pull in PyTorch's op or TensorRT.
"""
