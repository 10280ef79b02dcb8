// SiLU, y = x / (1 + exp(-x)), for FP32 and FP16, written to run at the speed of a device copy.
//
// Layout of one launch over n elements (any n, any element-aligned pointers):
//   [head: scalar, up to 15 bytes until x is 16-byte aligned][body: 16-byte vectors][tail: scalar]
// The body is vectorized only when x and y share their alignment modulo 16 (then both reach a
// 16-byte boundary after the same head); otherwise every element takes the scalar path, which is
// slower but correct. The grid strides over the body; each thread loads U 16-byte vectors before it
// computes and stores them. Each element is read and then written by the same thread, so y may equal x.
//
// Launch configuration, tuned on an H200 (silu_plugin/NOTES.md): 512 threads per block, up to 32
// blocks per SM (several waves of short-lived blocks), one vector per thread per step. That ran at
// 0.96-0.97 of a device copy's bandwidth at 16 and 64 Mi elements in both dtypes; a one-wave
// persistent grid (256 threads, as many blocks as are resident, 4 vectors in flight) ran at 0.85-0.90.
//
// Precision: FP32 uses the accurate expf and an IEEE division, the same expression PyTorch's
// CUDA silu evaluates (well within 1e-6 relative of it). FP16 computes in FP32 with the fast
// __expf and __fdividef: their FP32 error (a few 1e-7 relative over FP16's range) is far below
// FP16's rounding step (~5e-4), and they keep the kernel off the arithmetic ceiling, which an
// FP16 elementwise kernel otherwise reaches first (it moves half the bytes per element of FP32).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <atomic>

#include "silu_kernel.h"

namespace {

constexpr int kVecBytes = 16;       // one 16-byte load or store per vector (LDG.E.128 / STG.E.128)
constexpr int kDefaultUnroll = 1;        // vectors per thread per grid-stride step
constexpr int kDefaultThreads = 512;      // threads per block
constexpr int kDefaultBlocksPerSm = 32;   // grid cap: blocks per SM (more than are resident: several waves)
constexpr int kMaxDevices = 64;

enum class Mode { kSilu, kCopy };

__device__ __forceinline__ float silu_accurate(float v) { return v / (1.0f + expf(-v)); }

__device__ __forceinline__ float silu_fast(float v) { return __fdividef(v, 1.0f + __expf(-v)); }

template <Mode M>
__device__ __forceinline__ float apply(float v) {
    return M == Mode::kCopy ? v : silu_accurate(v);
}

template <Mode M>
__device__ __forceinline__ __half apply(__half h) {
    return M == Mode::kCopy ? h : __float2half_rn(silu_fast(__half2float(h)));
}

template <Mode M>
__device__ __forceinline__ float4 apply_vec(float4 v, float) {
    if (M == Mode::kCopy) return v;
    return make_float4(silu_accurate(v.x), silu_accurate(v.y), silu_accurate(v.z), silu_accurate(v.w));
}

template <Mode M>
__device__ __forceinline__ float4 apply_vec(float4 v, __half) {
    if (M == Mode::kCopy) return v;
    // 16 bytes = 8 halves = 4 half2: widen each pair to float2, compute, round back to half2.
    __half2* h = reinterpret_cast<__half2*>(&v);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        float2 f = __half22float2(h[k]);
        h[k] = __floats2half2_rn(silu_fast(f.x), silu_fast(f.y));
    }
    return v;
}

// head/nvec/tail_start describe the split above; n is the total element count; U vectors per thread
// per grid-stride step are loaded before any is computed or stored.
template <typename T, Mode M, int U>
__global__ void silu_kernel(const T* __restrict__ x, T* __restrict__ y, size_t head, size_t nvec,
                            size_t tail_start, size_t n) {
    const size_t tid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;

    const float4* __restrict__ xv = reinterpret_cast<const float4*>(x + head);
    float4* __restrict__ yv = reinterpret_cast<float4*>(y + head);
    for (size_t base = tid; base < nvec; base += stride * U) {
        float4 r[U];
#pragma unroll
        for (int k = 0; k < U; ++k) {  // all loads first: U independent requests in flight
            const size_t i = base + k * stride;
            if (i < nvec) r[k] = xv[i];
        }
#pragma unroll
        for (int k = 0; k < U; ++k) {
            const size_t i = base + k * stride;
            if (i < nvec) yv[i] = apply_vec<M>(r[k], T());
        }
    }
    for (size_t i = tid; i < head; i += stride) y[i] = apply<M>(x[i]);
    for (size_t i = tail_start + tid; i < n; i += stride) y[i] = apply<M>(x[i]);
}

int sm_count() {
    // Cached per device: the attribute query is cheap but runs on every enqueue otherwise.
    static std::atomic<int> cache[kMaxDevices];  // zero-initialized (static storage)
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    if (dev >= 0 && dev < kMaxDevices && cache[dev].load(std::memory_order_relaxed) > 0) {
        return cache[dev].load(std::memory_order_relaxed);
    }
    int count = 0;
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 0;
    if (dev >= 0 && dev < kMaxDevices) cache[dev].store(count, std::memory_order_relaxed);
    return count;
}

// Blocks of `threads` that fit on one SM at once. blocks_per_sm -1 asks for a grid of one resident wave, so no
// block waits for another to finish before it starts its share of the grid-stride loop.
template <typename T, Mode M, int U>
int resident_blocks(int threads) {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, silu_kernel<T, M, U>, threads, 0) != cudaSuccess) return 0;
    return blocks;
}

template <typename T, Mode M, int U>
int launch(const void* xp, void* yp, size_t n, cudaStream_t stream, int threads, int blocks_per_sm) {
    const uintptr_t xa = reinterpret_cast<uintptr_t>(xp), ya = reinterpret_cast<uintptr_t>(yp);
    if (xa % sizeof(T) != 0 || ya % sizeof(T) != 0) return cudaErrorInvalidValue;
    if (blocks_per_sm == -1) {  // one resident wave
        // Cached per block size (the query costs microseconds, and is best kept out of graph captures).
        static std::atomic<int> resident[1024 / 32 + 1];  // zero-initialized (static storage)
        std::atomic<int>& cached = resident[threads / 32];
        if (cached.load(std::memory_order_relaxed) <= 0) cached.store(resident_blocks<T, M, U>(threads), std::memory_order_relaxed);
        blocks_per_sm = cached.load(std::memory_order_relaxed);
        if (blocks_per_sm <= 0) return cudaErrorInvalidConfiguration;
    }
    constexpr size_t kVec = kVecBytes / sizeof(T);
    size_t head = n, nvec = 0, tail_start = n;  // default: all scalar (x and y aligned differently)
    if (xa % kVecBytes == ya % kVecBytes) {
        head = ((kVecBytes - xa % kVecBytes) % kVecBytes) / sizeof(T);
        if (head > n) head = n;
        nvec = (n - head) / kVec;
        tail_start = head + nvec * kVec;
    }
    const size_t scalar = head > n - tail_start ? head : n - tail_start;
    size_t work = (nvec + U - 1) / U;  // threads needed for one grid-stride step
    if (scalar > work) work = scalar;
    const int sms = sm_count();
    if (sms <= 0) return cudaErrorNoDevice;
    size_t blocks = (work + threads - 1) / threads;
    const size_t cap = static_cast<size_t>(sms) * blocks_per_sm;
    if (blocks > cap) blocks = cap;
    if (blocks < 1) blocks = 1;
    silu_kernel<T, M, U><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        static_cast<const T*>(xp), static_cast<T*>(yp), head, nvec, tail_start, n);
    return static_cast<int>(cudaGetLastError());
}

template <typename T, Mode M>
int launch_unrolled(const void* x, void* y, size_t n, cudaStream_t stream, int threads, int blocks_per_sm, int unroll) {
    switch (unroll) {
    case 1: return launch<T, M, 1>(x, y, n, stream, threads, blocks_per_sm);
    case 2: return launch<T, M, 2>(x, y, n, stream, threads, blocks_per_sm);
    case 4: return launch<T, M, 4>(x, y, n, stream, threads, blocks_per_sm);
    case 8: return launch<T, M, 8>(x, y, n, stream, threads, blocks_per_sm);
    default: return cudaErrorInvalidValue;
    }
}

template <Mode M>
int dispatch(const void* x, void* y, size_t n, int dtype, cudaStream_t stream, int threads, int blocks_per_sm,
             int unroll) {
    if (threads == 0) threads = kDefaultThreads;
    if (unroll == 0) unroll = kDefaultUnroll;
    if (blocks_per_sm == 0) blocks_per_sm = kDefaultBlocksPerSm;
    if (threads < 32 || threads > 1024 || threads % 32 != 0 || blocks_per_sm < -1) return cudaErrorInvalidValue;
    if (unroll != 1 && unroll != 2 && unroll != 4 && unroll != 8) return cudaErrorInvalidValue;
    if (dtype != MV_SILU_FLOAT32 && dtype != MV_SILU_FLOAT16) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    if (x == nullptr || y == nullptr) return cudaErrorInvalidValue;
    return dtype == MV_SILU_FLOAT32 ? launch_unrolled<float, M>(x, y, n, stream, threads, blocks_per_sm, unroll)
                                    : launch_unrolled<__half, M>(x, y, n, stream, threads, blocks_per_sm, unroll);
}

}  // namespace

extern "C" int mv_silu(const void* x, void* y, size_t n, int dtype, cudaStream_t stream) {
    return dispatch<Mode::kSilu>(x, y, n, dtype, stream, 0, 0, 0);
}

extern "C" int mv_silu_ex(const void* x, void* y, size_t n, int dtype, cudaStream_t stream, int threads,
                          int blocks_per_sm, int unroll) {
    return dispatch<Mode::kSilu>(x, y, n, dtype, stream, threads, blocks_per_sm, unroll);
}

extern "C" int mv_silu_default_config(int dtype, int* threads, int* blocks_per_sm, int* unroll) {
    if (dtype != MV_SILU_FLOAT32 && dtype != MV_SILU_FLOAT16) return cudaErrorInvalidValue;
    if (threads) *threads = kDefaultThreads;
    if (blocks_per_sm) *blocks_per_sm = kDefaultBlocksPerSm;
    if (unroll) *unroll = kDefaultUnroll;
    return cudaSuccess;
}

extern "C" int mv_copy_ex(const void* x, void* y, size_t n, int dtype, cudaStream_t stream, int threads,
                          int blocks_per_sm, int unroll) {
    return dispatch<Mode::kCopy>(x, y, n, dtype, stream, threads, blocks_per_sm, unroll);
}
