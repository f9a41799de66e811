#!/usr/bin/env bash
# Prints the path of libggml-rpc.so, llama.cpp's RPC backend as a loadable ggml module,
# building it first if needed (about a minute on two cores; docs/RPC.md).
#
# The portable wheel (scripts/portable_wheel.sh) is built with GGML_BACKEND_DL=ON, so ggml's
# backends are separate modules loaded at run time beside the wheel's libggml-base. This
# builds only the RPC module, from the same llama.cpp sources (llama-cpp-python's source
# distribution, vendor/llama.cpp) with the same compiler, and leaves the wheel and its
# cache key alone. The module is kept under ~/.cache/shimmy/rpc/<key>, the key covering
# the version, the CMake arguments and the compiler; the source distribution is kept
# under ~/.cache/shimmy/sdist.
set -euo pipefail

version=0.3.36
cmake_args="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_RPC=ON -DGGML_RPC_RDMA=OFF"
# the rest only trims the build to the one target; none of it changes the module
trim_args="-DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_SKIP_RPATH=ON
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
python=${PYTHON:-python3}
cache=${SHIMMY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shimmy}

compiler=$( (c++ --version 2>/dev/null || echo none) | head -n 1)
key=$(printf '%s\n' "$version" "$cmake_args" "$compiler" | sha256sum | cut -c 1-16)
dir=$cache/rpc/$key
if [ ! -f "$dir/libggml-rpc.so" ]; then
    command -v cmake >/dev/null || { echo "rpc_backend.sh: cmake is missing" >&2; exit 1; }
    sdist=$cache/sdist/llama_cpp_python-$version.tar.gz
    if [ ! -f "$sdist" ]; then
        mkdir -p "$cache/sdist"
        "$python" -m pip --disable-pip-version-check -q download --no-binary :all: \
            --no-deps "llama-cpp-python==$version" -d "$cache/sdist" >&2
    fi
    echo "building llama.cpp's RPC backend (llama-cpp-python $version, $cmake_args)" >&2
    work=$(mktemp -d "${TMPDIR:-/tmp}/shimmy-rpc.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    tar -xzf "$sdist" -C "$work" "llama_cpp_python-$version/vendor/llama.cpp"
    src=$work/llama_cpp_python-$version/vendor/llama.cpp
    generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    # source paths in ggml's messages as llama.cpp/..., not this temporary folder
    prefix_map="-ffile-prefix-map=$src=llama.cpp"
    # shellcheck disable=SC2086  # the argument lists are meant to split
    cmake -S "$src" -B "$work/build" "${generator[@]}" $cmake_args $trim_args \
        "-DCMAKE_C_FLAGS=$prefix_map" "-DCMAKE_CXX_FLAGS=$prefix_map" \
        >"$work/configure.log" 2>&1 || { tail -n 30 "$work/configure.log" >&2; exit 1; }
    cmake --build "$work/build" --target ggml-rpc -j "${SHIMMY_BUILD_JOBS:-2}" >&2
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    cp "$work/build/bin/libggml-rpc.so" "$dir.partial/"
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
fi
echo "$dir/libggml-rpc.so"
