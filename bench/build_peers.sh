#!/usr/bin/env bash
# Builds the benchmark's peers into bench/.cache (once; rerunning is cheap):
#  - llama-server, llama-bench and llama-perplexity from the very llama.cpp that
#    llama-cpp-python 0.3.36 vendors, with the same CMake defaults its wheel uses
#    (GGML_NATIVE on: -march=native);
#  - a virtual environment with llama-cpp-python's own server (llama_cpp.server).
set -euo pipefail
cd "$(dirname "$0")"
cache=.cache
version=0.3.36
mkdir -p "$cache"

src="$cache/llama_cpp_python-$version"
if [ ! -d "$src" ]; then
    ../.venv/bin/python -m pip download -q --no-deps --no-binary :all: \
        "llama-cpp-python==$version" -d "$cache"
    tar -xzf "$cache/llama_cpp_python-$version.tar.gz" -C "$cache"
fi

if [ ! -x "$cache/llama.cpp-build/bin/llama-perplexity" ]; then
    cmake -S "$src/vendor/llama.cpp" -B "$cache/llama.cpp-build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF > "$cache/cmake.log"
    cmake --build "$cache/llama.cpp-build" --target llama-server llama-bench llama-perplexity \
        -j "$(nproc)" > "$cache/build.log"
fi

if [ ! -x "$cache/peer-venv/bin/python" ]; then
    python3 -m venv "$cache/peer-venv"
    "$cache/peer-venv/bin/python" -m pip install -q "llama-cpp-python[server]==$version"
fi
echo "peers ready in bench/$cache"
