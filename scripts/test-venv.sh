#!/bin/sh
# Create (or reuse) the Python virtual environment of the LMCache
# compatibility tests: BUILD/venv (BUILD is the first argument, default
# "build"), with the exact pins of tests/python/requirements.txt and
# lmcache from tests/python/requirements-nodeps.txt installed --no-deps.
#
# Idempotent: the environment is reused while both requirements files are
# unchanged (their digest is kept in BUILD/venv/.kvcd-requirements); otherwise
# it is rebuilt from scratch, in BUILD/venv.new, and moved into place only once
# complete, so an interrupted run never leaves a half-built environment that
# looks ready. Packages come from the package index pip is configured with
# (PyPI), through pip itself.
#
# The interpreter: $KVCD_VENV_PYTHON, else Debian's /usr/bin/python3 (it has
# the venv module from python3-venv), else the first python3 on PATH.
set -eu

BUILD=${1:-build}
SRC=$(cd "$(dirname "$0")/.." && pwd)
REQ=$SRC/tests/python/requirements.txt
REQ_NODEPS=$SRC/tests/python/requirements-nodeps.txt
VENV=$BUILD/venv
STAMP=$VENV/.kvcd-requirements

if [ -n "${KVCD_VENV_PYTHON:-}" ]; then
    PY=$KVCD_VENV_PYTHON
elif [ -x /usr/bin/python3 ]; then
    PY=/usr/bin/python3
else
    PY=python3
fi

want=$(cat "$REQ" "$REQ_NODEPS" | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c 'import lmcache, torch, msgspec, zmq, blake3, sglang, vllm' 2>/dev/null; then
    touch "$STAMP" # for make: checked against this script and the requirements
    echo "test-venv: $VENV is up to date"
    exit 0
fi

echo "test-venv: building $VENV with $PY (lmcache 0.5.6, torch 2.13.0 CPU)"
start=$(date +%s)
rm -rf "$VENV.new"
mkdir -p "$BUILD"
"$PY" -m venv "$VENV.new"
# pip's progress bars are noise in a test log.
"$VENV.new/bin/python" -m pip install -q --progress-bar off -r "$REQ"
"$VENV.new/bin/python" -m pip install -q --progress-bar off --no-deps -r "$REQ_NODEPS"
"$VENV.new/bin/python" -m pip check >/dev/null 2>&1 || true # lmcache's own deps are left out on purpose
echo "$want" > "$VENV.new/.kvcd-requirements"
rm -rf "$VENV"
mv "$VENV.new" "$VENV"
# A venv records its own path in bin/ scripts; "python" itself works after a move,
# and the tests run "$VENV/bin/python" only.
echo "test-venv: done in $(($(date +%s) - start)) s"
