// The SiLU kernel's C ABI: y[i] = x[i] / (1 + exp(-x[i])) for FP32 and FP16 tensors on the GPU.
// Used by the TensorRT plugin (silu_plugin.cpp) and, through ctypes, by mvlib/silu/torch_op.py.
#pragma once
#include <cuda_runtime_api.h>
#include <stddef.h>

#if defined(__GNUC__)
#define MV_SILU_API __attribute__((visibility("default")))
#else
#define MV_SILU_API
#endif

// Element types, numbered as nvinfer1::DataType numbers them (kFLOAT = 0, kHALF = 1).
#define MV_SILU_FLOAT32 0
#define MV_SILU_FLOAT16 1

#ifdef __cplusplus
extern "C" {
#endif

// Launch y = silu(x) over n elements on `stream` (asynchronous). x and y may be the same buffer;
// any n and any element-aligned pointers are accepted (misaligned starts take a slower path).
// Returns 0 (cudaSuccess) or the cudaError_t of the failure: cudaErrorInvalidValue for an unknown
// dtype, a null pointer with n > 0, or a pointer that is not aligned to its element size.
MV_SILU_API int mv_silu(const void* x, void* y, size_t n, int dtype, cudaStream_t stream);

// The same with an explicit launch configuration, for tuning: `threads` per block (a multiple of 32,
// at most 1024), at most `blocks_per_sm` blocks per multiprocessor (the grid strides over the rest;
// -1: as many as are resident at once) and `unroll` 16-byte vectors loaded per thread before any is
// stored (1, 2, 4 or 8). Zero for any of them means mv_silu's default (mv_silu_default_config).
// A configuration that does not fit on a multiprocessor returns the launch's error.
MV_SILU_API int mv_silu_ex(const void* x, void* y, size_t n, int dtype, cudaStream_t stream, int threads,
                           int blocks_per_sm, int unroll);

// The launch configuration mv_silu uses for `dtype`; 0 or a cudaError_t (unknown dtype).
MV_SILU_API int mv_silu_default_config(int dtype, int* threads, int* blocks_per_sm, int* unroll);

// A copy through the same launch path and vector width, no arithmetic: the ceiling of mv_silu's
// memory pipeline, used by the bandwidth benchmark to tell memory limits from arithmetic limits.
MV_SILU_API int mv_copy_ex(const void* x, void* y, size_t n, int dtype, cudaStream_t stream, int threads,
                           int blocks_per_sm, int unroll);

#ifdef __cplusplus
}
#endif
