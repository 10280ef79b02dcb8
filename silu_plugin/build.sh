#!/usr/bin/env bash
# Build the SiLU kernel library and, where TensorRT's headers are found, the TensorRT plugin.
#
#   bash silu_plugin/build.sh                        # outputs into $MVLIB_BUILD/silu_plugin (default build/silu_plugin)
#   TRT_INCLUDE=/path/to/TensorRT/include bash silu_plugin/build.sh
#
# Variables: NVCC (compiler; default: nvcc on PATH, then /usr/local/cuda/bin/nvcc), TRT_INCLUDE
# (TensorRT's include/ folder), TRT_ROOT (a TensorRT install with include/ and lib/), TRT_LIB
# (TensorRT's core library to link: libnvinfer.so.N, or TensorRT-RTX's libtensorrt_rtx.so.1),
# TRT_MAJOR (the TensorRT major the runtime expects: 10, or 11 for TensorRT 11 and TensorRT-RTX),
# PYTHON (the interpreter whose pip-installed TensorRT to link; default python3), MVLIB_BUILD (the
# study's build folder), SILU_ARCHS (gencode list to use instead of the default: SASS for sm_75
# (T4), sm_80 (A100), sm_86 (A10), sm_89 (L4, RTX 40xx), sm_90 (H100/H200) and compute_90 PTX,
# which newer GPUs (RTX 50xx, sm_120) compile when they load it).
#
# Headers: TRT_INCLUDE, else TRT_ROOT/include, else a system or container install (Debian/Ubuntu
# packages, /usr/local/tensorrt, /opt/tensorrt, NGC's /workspace/TensorRT), else
# ../shared/tensorrt-include/<version>/include beside the checkout (CI), the newest of TRT_MAJOR.
# pip-installed TensorRT ships no headers: take include/ of NVIDIA's TensorRT repository at the
# tag of your release (github.com/NVIDIA/TensorRT) and set TRT_INCLUDE.
#
# Outputs (each written to a temporary name and renamed, so no half-built library is ever left):
#   libmv_silu.so                  the kernel and its C ABI (mv_silu ...), always
#   libmv_silu_plugin.so           kernel + IPluginV3 plugin, registered statically when loaded
#                                  (ctypes, polygraphy --plugins, trtexec --staticPlugins)
#   libmv_silu_plugin_dynamic.so   the same without the static registrar, for
#                                  IPluginRegistry::loadLibrary / trtexec --dynamicPlugins
#   mv_silu_plugin_check           drives the plugin through TensorRT's interfaces (no libnvinfer
#                                  needed) and, on a GPU, runs its enqueue on device memory
#   build_info.json                what was built, against which headers, and why not the rest
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
build_root="$(realpath -m "${MVLIB_BUILD:-$root/build}")"  # as mvlib.paths.BUILD
out="$build_root/silu_plugin"                               # as mvlib.paths.PLUGIN_BUILD
mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

nvcc="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]]; then nvcc=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$nvcc" ]] || ! command -v "$nvcc" >/dev/null; then
    echo "error: nvcc not found${nvcc:+ at $nvcc}: install the CUDA toolkit or set NVCC=/path/to/nvcc" >&2
    exit 2
fi

archs="${SILU_ARCHS:--gencode=arch=compute_75,code=sm_75 -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_86,code=sm_86 -gencode=arch=compute_89,code=sm_89 -gencode=arch=compute_90,code=[sm_90,compute_90]}"
# Host code: every warning is an error; device code likewise (--Werror all-warnings).
host_flags="-fPIC,-fvisibility=hidden,-Wall,-Wextra,-Werror"
common=(-O3 -std=c++17 --Werror all-warnings -Xcompiler "$host_flags")
# Keep the static CUDA runtime's symbols private: only our C ABI and TensorRT's entry points are exported.
link=(-shared -Xlinker --exclude-libs,ALL -Xlinker --as-needed)

header_major() { grep -Eo '#define (TRT|NV_TENSORRT)_MAJOR(_ENTERPRISE)? [0-9]+' "$1/NvInferVersion.h" | head -1 | grep -Eo '[0-9]+$' || true; }
# TensorRT's headers: TRT_INCLUDE, else TRT_ROOT/include, else the usual install places, else CI's copy.
trt_inc="${TRT_INCLUDE:-}"
if [[ -z "$trt_inc" ]]; then
    shared=()
    # ../shared/tensorrt-include/<version>/include, newest version first
    while IFS= read -r d; do shared+=("$d"); done < <(ls -d "$root"/../shared/tensorrt-include/*/include 2>/dev/null | sort -rV)
    for cand in "${TRT_ROOT:+$TRT_ROOT/include}" /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu \
                /usr/include /usr/local/tensorrt/include /opt/tensorrt/include /workspace/TensorRT/include "${shared[@]}"; do
        if [[ -n "$cand" && -f "$cand/NvInferRuntime.h" ]]; then
            # headers of another major than the runtime's would give a plugin it cannot load
            if [[ -n "${TRT_MAJOR:-}" && "$(header_major "$cand")" != "$TRT_MAJOR" ]]; then continue; fi
            trt_inc="$(realpath "$cand")"; break
        fi
    done
fi
if [[ -n "$trt_inc" && ! -f "$trt_inc/NvInferRuntime.h" ]]; then
    echo "error: TRT_INCLUDE=$trt_inc has no NvInferRuntime.h: point it at TensorRT's include/ folder" >&2
    exit 2
fi

echo "nvcc: $nvcc ($("$nvcc" --version | grep -o 'release [0-9.]*'))"
echo "targets: $archs"
# Reproducible bytes: by default nvcc names its intermediate host file tmpxft_<pid>_..., and that name lands in the
# library's symbol table, so every build differed and every engine keyed on the plugin's bytes was rebuilt.
# --objdir-as-tempdir names it after the object file instead (nvcc 12.4+; older ones keep their pid names).
reproducible=()
# (grep reads all of the help: with -q it could exit first, and pipefail would count nvcc's SIGPIPE as "absent")
if "$nvcc" --help 2>/dev/null | grep -- --objdir-as-tempdir >/dev/null; then reproducible=(--objdir-as-tempdir); fi
# shellcheck disable=SC2086
"$nvcc" "${common[@]}" "${reproducible[@]}" $archs --threads 0 -c "$here/silu_kernel.cu" -o "$tmp/silu_kernel.o"
"$nvcc" "${common[@]}" "${link[@]}" "$tmp/silu_kernel.o" -o "$tmp/libmv_silu.so"

plugin="no"
trt_version=""
trt_lib=""
why=""
if [[ -n "$trt_inc" ]]; then
    ver_h="$trt_inc/NvInferVersion.h"
    if [[ -n "${TRT_MAJOR:-}" && "$(header_major "$trt_inc")" != "$TRT_MAJOR" ]]; then
        echo "error: TRT_INCLUDE=$trt_inc holds TensorRT $(header_major "$trt_inc").x headers, but the runtime expects $TRT_MAJOR.x: point TRT_INCLUDE at include/ of TensorRT $TRT_MAJOR.x (TensorRT-RTX: 11.x)" >&2
        exit 2
    fi
    major=$(grep -Eo '#define (TRT|NV_TENSORRT)_MAJOR(_ENTERPRISE)? [0-9]+' "$ver_h" | head -1 | grep -Eo '[0-9]+$' || true)
    minor=$(grep -Eo '#define (TRT|NV_TENSORRT)_MINOR(_ENTERPRISE)? [0-9]+' "$ver_h" | head -1 | grep -Eo '[0-9]+$' || true)
    patch=$(grep -Eo '#define (TRT|NV_TENSORRT)_PATCH(_ENTERPRISE)? [0-9]+' "$ver_h" | head -1 | grep -Eo '[0-9]+$' || true)
    trt_version="$major.$minor.$patch"
    # TensorRT's core library, if present: linking it (with its folder as rpath) lets the statically
    # registering library resolve getPluginRegistry wherever it is loaded. TRT_LIB, else the pip wheel
    # of $PYTHON's TensorRT (TensorRT-RTX when the headers are 11.x and no full TensorRT is there), else a
    # system install.
    py="${PYTHON:-python3}"
    trt_lib="${TRT_LIB:-}"
    if [[ -z "$trt_lib" ]]; then
        for dir in "${TRT_ROOT:+$TRT_ROOT/lib}" \
                   "$("$py" -c 'import os, tensorrt_libs; print(os.path.dirname(tensorrt_libs.__file__))' 2>/dev/null || true)" \
                   /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/local/tensorrt/lib /opt/tensorrt/lib \
                   "$("$py" -c 'import os, tensorrt_rtx_libs; print(os.path.dirname(tensorrt_rtx_libs.__file__))' 2>/dev/null || true)"; do
            if [[ -n "$dir" ]]; then
                found=$(ls "$dir"/libnvinfer.so.[0-9]* "$dir"/libnvinfer.so "$dir"/libtensorrt_rtx.so.[0-9]* 2>/dev/null | head -1 || true)
                if [[ -n "$found" ]]; then trt_lib="$found"; break; fi
            fi
        done
    fi
    # TensorRT's headers are third-party: -isystem keeps their own deprecation warnings (they use
    # their deprecated IPluginV2 types internally) from failing -Werror, which applies to our code.
    for variant in static dynamic; do
        defs=()
        [[ "$variant" == dynamic ]] && defs=(-DMV_SILU_NO_STATIC_REGISTRATION)
        "$nvcc" "${common[@]}" "${defs[@]}" -isystem "$trt_inc" -I "$here" -c "$here/silu_plugin.cpp" -o "$tmp/silu_plugin_$variant.o"
    done
    # nvcc splits -Xlinker values at spaces (it quotes only file names), so a library path with a space cannot go
    # through -Xlinker: the library goes in as an input file, through a link named *.so (nvcc takes a file by its
    # suffix, and ld records the library's SONAME, not the link's name), and its folder as rpath through
    # LD_RUN_PATH, which ld reads when no -rpath is given.
    libs=()
    run_path=()
    if [[ -n "$trt_lib" ]]; then
        mkdir "$tmp/link"  # not "$tmp"/*.so: the outputs
        ln -s "$(realpath "$trt_lib")" "$tmp/link/tensorrt_core.so"
        libs=("$tmp/link/tensorrt_core.so")
        run_path=("LD_RUN_PATH=$(dirname "$trt_lib")")
    fi
    env "${run_path[@]}" "$nvcc" "${common[@]}" "${link[@]}" "$tmp/silu_kernel.o" "$tmp/silu_plugin_static.o" "${libs[@]}" -o "$tmp/libmv_silu_plugin.so"
    env "${run_path[@]}" "$nvcc" "${common[@]}" "${link[@]}" "$tmp/silu_kernel.o" "$tmp/silu_plugin_dynamic.o" "${libs[@]}" -o "$tmp/libmv_silu_plugin_dynamic.so"
    # The interface check drives the plugin through TensorRT's interfaces without libnvinfer.
    "$nvcc" "${common[@]}" -isystem "$trt_inc" -I "$here" -c "$here/plugin_check.cpp" -o "$tmp/plugin_check.o"
    "$nvcc" "${common[@]}" "$tmp/plugin_check.o" "$tmp/silu_plugin_dynamic.o" "$tmp/silu_kernel.o" -o "$tmp/mv_silu_plugin_check"
    plugin="yes"
    if [[ -z "$trt_lib" ]]; then
        why="TensorRT's core library not found (set TRT_LIB): the statically registering library leaves getPluginRegistry undefined; load libmv_silu_plugin_dynamic.so with the registry's load_library (what mvlib does)"
    fi
else
    why="no TensorRT headers found: set TRT_INCLUDE to TensorRT's include/ folder (or TRT_ROOT to an install) to build the plugin"
fi

# An output whose bytes did not change is left in place (its modification time too), so a rebuild with nothing
# changed shows as unchanged to the study's rerun record.
install_output() { if ! cmp -s "$1" "$2"; then mv -f "$1" "$2"; fi; }
for f in "$tmp"/*.so "$tmp"/mv_silu_plugin_check; do [[ -e "$f" ]] && install_output "$f" "$out/$(basename "$f")"; done
if [[ "$plugin" == no ]]; then rm -f "$out/libmv_silu_plugin.so" "$out/libmv_silu_plugin_dynamic.so" "$out/mv_silu_plugin_check"; fi
# JSON strings: a path may hold any character, a quote or a backslash included.
json() { local s="${1//\\/\\\\}"; s="${s//\"/\\\"}"; printf '"%s"' "$s"; }
json_or_null() { if [[ -n "$1" ]]; then json "$1"; else echo null; fi; }
plugin_lib="" plugin_dyn="" plugin_chk=""
if [[ "$plugin" == yes ]]; then
    plugin_lib="$out/libmv_silu_plugin.so" plugin_dyn="$out/libmv_silu_plugin_dynamic.so" plugin_chk="$out/mv_silu_plugin_check"
fi
cat > "$tmp/build_info.json" <<EOF
{
  "kernel_library": $(json "$out/libmv_silu.so"),
  "plugin": $([[ "$plugin" == yes ]] && echo true || echo false),
  "plugin_library": $(json_or_null "$plugin_lib"),
  "plugin_library_dynamic": $(json_or_null "$plugin_dyn"),
  "plugin_check": $(json_or_null "$plugin_chk"),
  "tensorrt_include": $(json_or_null "$trt_inc"),
  "tensorrt_headers_version": $(json_or_null "$trt_version"),
  "tensorrt_headers_major": $([[ -n "$trt_version" ]] && echo "${trt_version%%.*}" || echo null),
  "tensorrt_library": $(json_or_null "$trt_lib"),
  "note": $(json "$why"),
  "nvcc": "$("$nvcc" --version | grep -o 'release [0-9.]*' | cut -d' ' -f2)",
  "targets": $(json "$archs")
}
EOF
install_output "$tmp/build_info.json" "$out/build_info.json"

if [[ "$plugin" == yes ]]; then
    echo "built: kernel library and TensorRT plugin (TensorRT $trt_version headers at $trt_inc) in $out"
else
    echo "built: kernel library only, no TensorRT plugin in $out"
fi
[[ -n "$why" ]] && echo "note: $why"
ls -l "$out"/*.so
