// The MvSiLU TensorRT plugin (IPluginV3): y = x * sigmoid(x), one input, one output of the same
// shape and type, FP32 or FP16, linear format. The ONNX rewrite (mvlib/silu.py) emits nodes whose
// op_type, plugin_version and plugin_namespace are the values of silu_plugin_id.h; TensorRT's ONNX
// parser finds this plugin's creator under the same three strings.
//
// Registration, so that every way of loading the library finds the creator:
// - static: a registrar registers it under SILU_PLUGIN_NAMESPACE when the library is loaded
//   (ctypes.CDLL, polygraphy --plugins, trtexec --staticPlugins). Not REGISTER_TENSORRT_PLUGIN:
//   that macro passes the empty namespace to registerCreator while the creator reports its own;
//   NVIDIA's own plugin library passes the creator's namespace (plugin/api/inferPlugin.cpp);
// - entry points: getCreators (and the older getPluginCreators) and setLoggerFinder, which
//   IPluginRegistry::loadLibrary, trtexec --dynamicPlugins and plugins serialized into
//   version-compatible engines use. loadLibrary refuses a library whose creators are already
//   registered, so build.sh also builds a copy without the static registrar
//   (-DMV_SILU_NO_STATIC_REGISTRATION) for those routes.
#include <cstdint>
#include <cstdio>
#include <new>

#include "NvInferRuntime.h"
#include "silu_kernel.h"
#include "silu_plugin_id.h"

#if defined(__GNUC__)
#define MV_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define MV_PLUGIN_EXPORT
#endif

namespace mvlib {

using namespace nvinfer1;

namespace {

ILoggerFinder* gLoggerFinder = nullptr;  // set by setLoggerFinder when loaded as a dynamic plugin library

void logError(char const* what) noexcept {
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    if (logger != nullptr) {
        logger->log(ILogger::Severity::kERROR, what);
    } else {
        std::fprintf(stderr, "[%s::%s] %s\n", SILU_PLUGIN_NAMESPACE, SILU_PLUGIN_NAME, what);
    }
}

bool supportedType(DataType t) noexcept { return t == DataType::kFLOAT || t == DataType::kHALF; }

int64_t volume(Dims const& d) noexcept {
    int64_t n = 1;
    for (int32_t i = 0; i < d.nbDims; ++i) n *= d.d[i];
    return n;
}

}  // namespace

class SiluPlugin final : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
  public:
    SiluPlugin() = default;
    SiluPlugin(SiluPlugin const&) = default;
    ~SiluPlugin() override = default;

    // IPluginV3 ---------------------------------------------------------------------------------
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override { return new (std::nothrow) SiluPlugin(*this); }

    // IPluginV3OneCore --------------------------------------------------------------------------
    AsciiChar const* getPluginName() const noexcept override { return SILU_PLUGIN_NAME; }
    AsciiChar const* getPluginVersion() const noexcept override { return SILU_PLUGIN_VERSION; }
    AsciiChar const* getPluginNamespace() const noexcept override { return SILU_PLUGIN_NAMESPACE; }

    // IPluginV3OneBuild -------------------------------------------------------------------------
    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                            int32_t nbOutputs) noexcept override {
        if (nbInputs != 1 || nbOutputs != 1 || in == nullptr || out == nullptr) return 1;
        return in[0].desc.type == out[0].desc.type && supportedType(in[0].desc.type) ? 0 : 1;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override {
        if (nbInputs != 1 || nbOutputs != 1 || !supportedType(inputTypes[0])) return 1;
        outputTypes[0] = inputTypes[0];  // elementwise: the output keeps the input's type
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                            int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                            IExprBuilder& /*exprBuilder*/) noexcept override {
        if (nbInputs != 1 || nbOutputs != 1) return 1;
        outputs[0] = inputs[0];
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        if (nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1) return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR) return false;
        // The input: FP32 or FP16; the output: whatever the input was decided to be.
        return pos == 0 ? supportedType(d.type) : d.type == inOut[0].desc.type;
    }

    int32_t getNbOutputs() const noexcept override { return 1; }

    // The plugin has no attributes, so its identity alone keys TensorRT's timing cache.
    char const* getTimingCacheID() noexcept override { return SILU_PLUGIN_NAMESPACE "::" SILU_PLUGIN_NAME "/" SILU_PLUGIN_VERSION; }

    // IPluginV3OneRuntime -----------------------------------------------------------------------
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
        if (nbInputs != 1 || nbOutputs != 1) return 1;
        return in[0].type == out[0].type && volume(in[0].dims) == volume(out[0].dims) ? 0 : 1;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
                    void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override {
        DataType const t = inputDesc[0].type;
        if (!supportedType(t) || outputDesc[0].type != t) {
            logError("enqueue: unsupported data type (FP32 and FP16 only, output type equal to input type)");
            return 1;
        }
        int64_t const n = volume(inputDesc[0].dims);
        if (n < 0) {
            logError("enqueue: negative element count");
            return 1;
        }
        int const dtype = t == DataType::kFLOAT ? MV_SILU_FLOAT32 : MV_SILU_FLOAT16;
        int const status = mv_silu(inputs[0], outputs[0], static_cast<size_t>(n), dtype, stream);
        if (status != 0) {
            char msg[160];
            std::snprintf(msg, sizeof msg, "enqueue: the SiLU kernel launch failed: %s",
                          cudaGetErrorName(static_cast<cudaError_t>(status)));
            logError(msg);
        }
        return status;
    }

    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mNoFields; }

  private:
    PluginFieldCollection mNoFields{0, nullptr};  // no attributes: nothing to serialize
};

class SiluPluginCreator final : public IPluginCreatorV3One {
  public:
    SiluPluginCreator() = default;
    ~SiluPluginCreator() override = default;

    IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* fc,
                            TensorRTPhase /*phase*/) noexcept override {
        // The op has no attributes. The ONNX parser may pass the node's other attributes along;
        // they change nothing, so they are accepted rather than failing the build.
        (void)fc;
        return new (std::nothrow) SiluPlugin();
    }

    PluginFieldCollection const* getFieldNames() noexcept override { return &mFields; }
    AsciiChar const* getPluginName() const noexcept override { return SILU_PLUGIN_NAME; }
    AsciiChar const* getPluginVersion() const noexcept override { return SILU_PLUGIN_VERSION; }
    AsciiChar const* getPluginNamespace() const noexcept override { return SILU_PLUGIN_NAMESPACE; }

  private:
    PluginFieldCollection mFields{0, nullptr};
};

#ifndef MV_SILU_NO_STATIC_REGISTRATION
namespace {
// Registers one creator under its own namespace when the library is loaded.
struct StaticRegistrar {
    StaticRegistrar() {
        static SiluPluginCreator creator;
        getPluginRegistry()->registerCreator(creator, SILU_PLUGIN_NAMESPACE);
    }
};
StaticRegistrar const gRegistrar{};
}  // namespace
#endif

}  // namespace mvlib

extern "C" {

// Entry point of plugin libraries (TensorRT 10+): every creator this library holds.
MV_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static mvlib::SiluPluginCreator sCreator;
    static nvinfer1::IPluginCreatorInterface* const kCreators[] = {&sCreator};
    nbCreators = 1;
    return kCreators;
}

// The older entry point lists IPluginCreator (IPluginV2) creators only; this library has none.
MV_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getPluginCreators(int32_t& nbCreators) {
    nbCreators = 0;
    return nullptr;
}

MV_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { mvlib::gLoggerFinder = finder; }

// The TensorRT version of the headers this library was compiled against (major * 10000 + minor * 100
// + patch). IPluginRegistry's and the plugin interfaces' virtual tables differ between majors, so a
// loader compares the major with its runtime's before handing the library to TensorRT.
MV_PLUGIN_EXPORT int32_t mv_silu_plugin_tensorrt_version() {
    return NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH;
}

}  // extern "C"
