// The one definition of the SiLU plugin's identity. The ONNX rewrite (mvlib/silu.py reads this
// file) names its node op_type SILU_PLUGIN_NAME with attributes plugin_version and
// plugin_namespace set to the values below; TensorRT's ONNX parser maps that node to the plugin
// registered under the same name, version and namespace. Not "Swish": TensorRT 11 imports that
// op natively, which would bypass the plugin.
#pragma once
#define SILU_PLUGIN_NAME "MvSiLU"
#define SILU_PLUGIN_VERSION "1"
#define SILU_PLUGIN_NAMESPACE "mvlib"
