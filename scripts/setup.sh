#!/usr/bin/env bash
# Sets up .venv: shimmy with its compiled engine, the embedded default model and the
# test tools. Safe to rerun; llama-cpp-python compiles once (about 6-9 minutes on two
# cores), then pip takes it from its wheel cache.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "shimmy needs Python 3.11 or newer as '$python' (set PYTHON=...)" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

pip install --upgrade pip setuptools wheel "Cython>=3.0"
pip install "llama-cpp-python==0.3.36"
# no build isolation: the engine compiles against the llama.cpp just installed here
pip install --no-build-isolation -e ".[model,test]"
.venv/bin/python -m shimmy.models.embedded
