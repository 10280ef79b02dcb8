"""The old name of the TensorRT package's public API, kept while callers move to `mvlib.tensorrt.<module>`.

Every name here is re-exported from the module of `mvlib.tensorrt` that owns it; new code imports that module.
"""
# ruff: noqa: F401, I001  (re-exports, grouped by the module that owns them)
from mvlib.tensorrt.cache import (BUILD_INFO, LAYERS, PLAN, BuildFailed, Engine, build_engine, cache_problem,
                                  has_plan_header, key_parts, load, sha256)
from mvlib.tensorrt.flavours import (DEFAULT_TARGET, FLAVOUR_NAMES, Flavour, NoBuilder, builder_status,
                                     installed, select, versions)
from mvlib.tensorrt.layers import layer_summary, layer_totals
from mvlib.tensorrt.plugins import (check_abi, check_plugins, headers_version, library_env,
                                    load_plugins, unversioned_dir)
from mvlib.tensorrt.runner import Session, runnable, runner, torch_dtype
from mvlib.tensorrt.shapes import Profile, onnx_input
from mvlib.tensorrt.table import (BUILT, ENGINE_COLUMNS, ENGINES_TABLE, EngineSpec, accuracy_verdicts,
                                  annotate, build_all, built_rows, describe, plugin_layer_check, plugin_nodes_in,
                                  record, require_built)
