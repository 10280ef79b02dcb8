// Exercises the plugin through TensorRT's interfaces without TensorRT's library: the creator from
// getCreators (as IPluginRegistry::loadLibrary sees it), every capability's answers, clone and
// serialization round trips, and enqueue on real device memory where a GPU is present. Built by
// build.sh next to the libraries (linked with the no-static-registration object, which needs no
// libnvinfer); run by tests/silu/test_build.py and notebook 05. Prints one line per check; exit code 0
// only if every check passed.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "NvInferRuntime.h"
#include "silu_plugin_id.h"

using namespace nvinfer1;

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" IPluginCreatorInterface* const* getPluginCreators(int32_t& nbCreators);

namespace {

int gFailures = 0;

void check(bool ok, char const* what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) ++gFailures;
}

bool same(char const* a, char const* b) { return a != nullptr && b != nullptr && std::strcmp(a, b) == 0; }

// getOutputShapes needs an IExprBuilder; the plugin only copies its input's expressions, so an
// object that is never called stands in for TensorRT's.
struct UnusedExprBuilder : IExprBuilder {};

DynamicPluginTensorDesc desc(DataType t, TensorFormat f, int64_t n) {
    DynamicPluginTensorDesc d{};
    d.desc.dims.nbDims = 2;
    d.desc.dims.d[0] = 2;
    d.desc.dims.d[1] = n / 2;
    d.desc.type = t;
    d.desc.format = f;
    d.min = d.opt = d.max = d.desc.dims;
    return d;
}

void checkFormats(IPluginV3OneBuild* build) {
    DynamicPluginTensorDesc io[2] = {desc(DataType::kFLOAT, TensorFormat::kLINEAR, 8),
                                     desc(DataType::kFLOAT, TensorFormat::kLINEAR, 8)};
    check(build->supportsFormatCombination(0, io, 1, 1), "input FP32 linear supported");
    io[0].desc.type = DataType::kHALF;
    check(build->supportsFormatCombination(0, io, 1, 1), "input FP16 linear supported");
    io[0].desc.type = DataType::kINT8;
    check(!build->supportsFormatCombination(0, io, 1, 1), "input INT8 refused");
    io[0].desc.type = DataType::kINT32;
    check(!build->supportsFormatCombination(0, io, 1, 1), "input INT32 refused");
    io[0].desc.type = DataType::kFLOAT;
    io[0].desc.format = TensorFormat::kCHW32;
    check(!build->supportsFormatCombination(0, io, 1, 1), "input FP32 CHW32 refused");
    io[0].desc.format = TensorFormat::kHWC8;
    check(!build->supportsFormatCombination(0, io, 1, 1), "input HWC8 refused");
    io[0] = desc(DataType::kHALF, TensorFormat::kLINEAR, 8);
    io[1] = desc(DataType::kHALF, TensorFormat::kLINEAR, 8);
    check(build->supportsFormatCombination(1, io, 1, 1), "output FP16 after FP16 input supported");
    io[1].desc.type = DataType::kFLOAT;
    check(!build->supportsFormatCombination(1, io, 1, 1), "output FP32 after FP16 input refused");
    io[1] = desc(DataType::kHALF, TensorFormat::kCHW2, 8);
    check(!build->supportsFormatCombination(1, io, 1, 1), "output CHW2 refused");
    check(!build->supportsFormatCombination(2, io, 1, 1), "position past the output refused");
    check(!build->supportsFormatCombination(0, io, 2, 1), "two inputs refused");
}

void checkBuild(IPluginV3OneBuild* build) {
    check(build->getNbOutputs() == 1, "one output");
    DataType out = DataType::kINT32;
    DataType in = DataType::kFLOAT;
    check(build->getOutputDataTypes(&out, 1, &in, 1) == 0 && out == DataType::kFLOAT, "FP32 in, FP32 out");
    in = DataType::kHALF;
    check(build->getOutputDataTypes(&out, 1, &in, 1) == 0 && out == DataType::kHALF, "FP16 in, FP16 out");
    in = DataType::kINT8;
    check(build->getOutputDataTypes(&out, 1, &in, 1) != 0, "INT8 in refused by getOutputDataTypes");

    // Output shape expressions are the input's (pointer identity: no new expressions are built).
    alignas(8) char fake[4][8] = {};
    DimsExprs inShape{};
    inShape.nbDims = 4;
    for (int i = 0; i < 4; ++i) inShape.d[i] = reinterpret_cast<IDimensionExpr const*>(fake[i]);
    DimsExprs outShape{};
    UnusedExprBuilder builder;
    bool shapeOk = build->getOutputShapes(&inShape, 1, nullptr, 0, &outShape, 1, builder) == 0
        && outShape.nbDims == 4;
    for (int i = 0; i < 4 && shapeOk; ++i) shapeOk = outShape.d[i] == inShape.d[i];
    check(shapeOk, "output shape = input shape");

    checkFormats(build);
    DynamicPluginTensorDesc a = desc(DataType::kHALF, TensorFormat::kLINEAR, 8);
    DynamicPluginTensorDesc b = desc(DataType::kHALF, TensorFormat::kLINEAR, 8);
    check(build->configurePlugin(&a, 1, &b, 1) == 0, "configurePlugin FP16 -> FP16");
    b.desc.type = DataType::kFLOAT;
    check(build->configurePlugin(&a, 1, &b, 1) != 0, "configurePlugin FP16 -> FP32 refused");
}

float siluRef(float v) { return static_cast<float>(static_cast<double>(v) / (1.0 + std::exp(-static_cast<double>(v)))); }

// Runs the plugin's enqueue on device memory and compares with a float64 reference.
void checkEnqueue(IPluginV3OneRuntime* rt, DataType t, int64_t n, int offset) {
    size_t const elem = t == DataType::kFLOAT ? 4 : 2;
    std::vector<float> x(n);
    for (int64_t i = 0; i < n; ++i) x[i] = -12.0f + 24.0f * static_cast<float>((i * 7919) % 10007) / 10007.0f;
    std::vector<unsigned char> hx(n * elem), hy((n + 64) * elem);
    for (int64_t i = 0; i < n; ++i) {
        if (t == DataType::kFLOAT) {
            std::memcpy(&hx[i * elem], &x[i], 4);
        } else {
            __half h = __float2half(x[i]);
            x[i] = __half2float(h);  // the reference sees the FP16 input the kernel sees
            std::memcpy(&hx[i * elem], &h, 2);
        }
    }
    void *vx = nullptr, *vy = nullptr;
    bool ok = cudaMalloc(&vx, (n + 64) * elem) == cudaSuccess && cudaMalloc(&vy, (n + 64) * elem) == cudaSuccess;
    auto* dx = static_cast<unsigned char*>(vx);
    auto* dy = static_cast<unsigned char*>(vy);
    ok = ok && cudaMemcpy(dx + offset * elem, hx.data(), n * elem, cudaMemcpyHostToDevice) == cudaSuccess;
    ok = ok && cudaMemset(dy, 0xFF, (n + 64) * elem) == cudaSuccess;  // NaN poison, and a guard past the end
    PluginTensorDesc in{}, out{};
    in.dims.nbDims = 1;
    in.dims.d[0] = n;
    in.type = out.type = t;
    in.format = out.format = TensorFormat::kLINEAR;
    out.dims = in.dims;
    void const* inputs[1] = {dx + offset * elem};
    void* outputs[1] = {dy + offset * elem};
    ok = ok && rt->onShapeChange(&in, 1, &out, 1) == 0;
    ok = ok && rt->enqueue(&in, &out, inputs, outputs, nullptr, nullptr) == 0;
    ok = ok && cudaDeviceSynchronize() == cudaSuccess;
    ok = ok && cudaMemcpy(hy.data(), dy, (n + 64) * elem, cudaMemcpyDeviceToHost) == cudaSuccess;
    double worst = 0.0;
    bool written = true, guard = true;
    for (int64_t i = 0; ok && i < n + 64; ++i) {
        bool const inside = i >= offset && i < offset + n;
        float v = 0.0f;
        if (t == DataType::kFLOAT) {
            std::memcpy(&v, &hy[i * elem], 4);
        } else {
            __half h;
            std::memcpy(&h, &hy[i * elem], 2);
            v = __half2float(h);
        }
        if (!inside) {
            guard = guard && std::isnan(v);
            continue;
        }
        if (std::isnan(v)) {
            written = false;
            continue;
        }
        float const r = siluRef(x[i - offset]);
        double const floor = t == DataType::kFLOAT ? 1e-30 : 6e-8;  // below FP16's smallest subnormal step
        worst = std::fmax(worst, std::fabs(v - r) / std::fmax(std::fabs(r), floor));
    }
    double const tol = t == DataType::kFLOAT ? 1e-6 : 1e-3;
    char line[160];
    std::snprintf(line, sizeof line, "enqueue %s n=%lld offset=%d: all written %d, guard intact %d, max rel err %.2e (tol %.0e)",
                  t == DataType::kFLOAT ? "FP32" : "FP16", static_cast<long long>(n), offset, written, guard, worst, tol);
    check(ok && written && guard && worst <= tol, line);
    cudaFree(dx);
    cudaFree(dy);
}

}  // namespace

int main() {
    int32_t nb = -1;
    IPluginCreatorInterface* const* creators = getCreators(nb);
    check(nb == 1 && creators != nullptr && creators[0] != nullptr, "getCreators lists one creator");
    if (gFailures) return 1;
    check(same(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE"), "creator is an IPluginCreatorV3One");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(same(creator->getPluginName(), SILU_PLUGIN_NAME) && same(creator->getPluginVersion(), SILU_PLUGIN_VERSION)
              && same(creator->getPluginNamespace(), SILU_PLUGIN_NAMESPACE),
          "creator name, version and namespace are silu_plugin_id.h's");
    check(creator->getFieldNames() != nullptr && creator->getFieldNames()->nbFields == 0, "no attributes");
    int32_t nbOld = -1;
    getPluginCreators(nbOld);
    check(nbOld == 0, "getPluginCreators lists no IPluginV2 creators");

    IPluginV3* plugin = creator->createPlugin("silu", creator->getFieldNames(), TensorRTPhase::kBUILD);
    check(plugin != nullptr, "createPlugin (build phase)");
    if (plugin == nullptr) return 1;
    check(same(plugin->getInterfaceInfo().kind, "PLUGIN"), "plugin is an IPluginV3");
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* rt = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && same(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE"), "core capability");
    check(build && same(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD"), "build capability");
    check(rt && same(rt->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME"), "runtime capability");
    if (!core || !build || !rt) return 1;
    check(same(core->getPluginName(), SILU_PLUGIN_NAME) && same(core->getPluginVersion(), SILU_PLUGIN_VERSION)
              && same(core->getPluginNamespace(), SILU_PLUGIN_NAMESPACE),
          "plugin name, version and namespace match the creator's");
    checkBuild(build);

    // Serialization round trip: the runtime-phase plugin is made from the fields the plugin serializes.
    PluginFieldCollection const* fields = rt->getFieldsToSerialize();
    check(fields != nullptr && fields->nbFields == 0, "serializes no fields");
    IPluginV3* restored = creator->createPlugin("silu", fields, TensorRTPhase::kRUNTIME);
    check(restored != nullptr && restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME) != nullptr,
          "createPlugin (runtime phase) from the serialized fields");
    IPluginV3* cloned = plugin->clone();
    check(cloned != nullptr && cloned != plugin, "clone is a new object");
    IPluginV3* attached = rt->attachToContext(nullptr);
    check(attached != nullptr && attached != plugin, "attachToContext returns a clone");

    int devices = 0;
    if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) {
        auto* rt2 = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        for (DataType t : {DataType::kFLOAT, DataType::kHALF}) {
            for (int64_t n : {int64_t{2}, int64_t{1000}, int64_t{1} << 20}) {
                for (int offset : {0, 1}) checkEnqueue(rt2, t, n, offset);
            }
        }
    } else {
        // No GPU: enqueue must report the failure, never return success without writing.
        PluginTensorDesc in{};
        in.dims.nbDims = 1;
        in.dims.d[0] = 16;
        in.type = DataType::kFLOAT;
        in.format = TensorFormat::kLINEAR;
        alignas(16) float hostIn[16] = {}, hostOut[16] = {};
        void const* inputs[1] = {hostIn};
        void* outputs[1] = {hostOut};
        check(rt->enqueue(&in, &in, inputs, outputs, nullptr, nullptr) != 0, "no GPU: enqueue reports failure");
        std::printf("skip enqueue on device memory: no CUDA device\n");
    }
    PluginTensorDesc bad{};
    bad.dims.nbDims = 1;
    bad.dims.d[0] = 4;
    bad.type = DataType::kINT8;
    bad.format = TensorFormat::kLINEAR;
    void const* none[1] = {nullptr};
    void* noneOut[1] = {nullptr};
    check(rt->enqueue(&bad, &bad, none, noneOut, nullptr, nullptr) != 0, "enqueue refuses INT8");

    delete attached;
    delete cloned;
    delete restored;
    delete plugin;
    std::printf("%s: %d failure(s)\n", gFailures ? "FAILED" : "PASSED", gFailures);
    return gFailures ? 1 : 0;
}
