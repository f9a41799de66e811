#!/usr/bin/env bash
# Builds the single-file binary dist/shimmy and the one-folder build dist/shimmy-dir/.
#
# It works apart from the development .venv: its own virtual environment (build/dist-venv)
# gets the portable llama.cpp wheel with every CPU variant (scripts/llama_wheel.py: built
# once, then cached; where scripts/setup.sh built this CPU's part, the rest),
# the engine is compiled against it in a staging copy of the sources (build/binary/src),
# and PyInstaller bundles that copy with build.spec. Needs what scripts/setup.sh needs
# (Python 3.11+ with venv, a C/C++ compiler, PyPI); the first run compiles llama.cpp's
# CPU variants (about 6 minutes after setup.sh's part), later runs take about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=build/dist-venv
stage=build/binary/src

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
wheel=$("$venv/bin/python" scripts/llama_wheel.py --variants all)
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip setuptools wheel "Cython>=3.0"
# the portable wheel, even where pip's cache holds a native build of the same version
installed=$(cat "$venv/.llama-wheel" 2>/dev/null || true)
if [ "$installed" != "$wheel" ]; then
    pip install --force-reinstall --no-deps "$wheel"
    echo "$wheel" > "$venv/.llama-wheel"
fi
# shimmy's runtime dependencies (pyproject.toml's, less llama-cpp-python) and its dist extra
"$venv/bin/python" scripts/requirements.py dist > "$venv/requirements.txt"
pip install -r "$venv/requirements.txt"

# a copy of the sources, so that the engine built here never replaces the one in .venv
rm -rf "$stage"
mkdir -p "$stage"
tar --exclude='__pycache__' --exclude='*.so' --exclude='_engine.cpp' \
    -cf - shimmy setup.py pyproject.toml build.spec README.md | tar -xf - -C "$stage"
(cd "$stage" && "../../../$venv/bin/python" setup.py -q build_ext --inplace)

"$venv/bin/pyinstaller" --noconfirm --clean --log-level WARN \
    --distpath dist --workpath build/binary/work "$stage/build.spec"
ls -l dist/shimmy
