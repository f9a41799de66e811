#!/usr/bin/env bash
# Prints the path of a portable llama-cpp-python wheel, building it first if needed:
# llama.cpp without -march=native, its CPU backend compiled once per x86-64 level
# (x64, sse42, sandybridge, haswell, skylakex, icelake, alderlake, sapphirerapids, zen4, ...)
# as libggml-cpu-<variant>.so, the best of which is loaded at run time.
#
# pip's wheel cache keys on the package version only, not on CMAKE_ARGS, so this wheel is
# built with --no-cache-dir and kept under ~/.cache/shimmy/wheels/<key>, where the key
# covers the version, the CMake arguments and the compiler. The build takes 22 CPU-minutes
# (34 minutes on a busy two-core machine): each variant compiles ggml's CPU code again.
# SHIMMY_EXTRA_CMAKE_ARGS adds CMake arguments (e.g. -DGGML_CUDA=on, untested).
# With --cached it only prints the path of a wheel built before, or fails.
set -euo pipefail

version=0.3.36
cmake_args="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON"
cmake_args="$cmake_args${SHIMMY_EXTRA_CMAKE_ARGS:+ $SHIMMY_EXTRA_CMAKE_ARGS}"
python=${PYTHON:-python3}
cache=${SHIMMY_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shimmy/wheels}

compiler=$( (c++ --version 2>/dev/null || echo none) | head -n 1)
key=$(printf '%s\n' "$version" "$cmake_args" "$compiler" | sha256sum | cut -c 1-16)
dir=$cache/$key
if [ "${1:-}" = --cached ]; then  # the path if the wheel is built, else status 1
    ls "$dir"/llama_cpp_python-"$version"-*.whl 2>/dev/null
    exit
fi
if ! ls "$dir"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
    echo "building the portable llama.cpp (llama-cpp-python $version, $cmake_args);" \
         "this takes a while, once" >&2
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    # pip -v lets the build's own lines through: build_progress.py keeps them in the log
    # and shows the step, ninja's [n/N] count and the time left
    CMAKE_ARGS="$cmake_args" "$python" "$(dirname "$0")/build_progress.py" \
        --log "$cache/build-$key.log" --what "llama.cpp" -- \
        "$python" -m pip --disable-pip-version-check -v wheel \
        --no-cache-dir --no-deps "llama-cpp-python==$version" -w "$dir.partial" >&2
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
fi
ls "$dir"/llama_cpp_python-"$version"-*.whl
