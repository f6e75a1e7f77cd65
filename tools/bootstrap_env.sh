#!/usr/bin/env bash
# Build (or reuse) the project's virtual environment in .venv.
#
# The environment is keyed on the dependency files: when pyproject.toml or
# tools/constraints.txt change, the venv is rebuilt. torch_scatter/torch_sparse
# are compiled from source against the installed torch (PyPI ships them only
# as sdists); pip's wheel cache makes every later build of the same versions
# a copy.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-.venv}"
KEY="$(cat pyproject.toml tools/constraints.txt tools/bootstrap_env.sh | sha256sum | cut -c1-16)"
STAMP="$VENV/.eqv2-env-$KEY"

if [[ -f "$STAMP" ]]; then
  exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

start=$(date +%s)
echo "[env] building $VENV (key $KEY); a first build takes about 15 minutes (compiling torch_scatter/torch_sparse), later ones a few"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
export PIP_CONSTRAINT="$PWD/tools/constraints.txt"
"${PIP[@]}" install -q --upgrade "pip>=24" wheel setuptools ninja
# torch first: the compiled extensions build against it.
"${PIP[@]}" install -q "torch~=2.4.0"
echo "[env] torch installed ($(( $(date +%s) - start ))s)"
# --no-build-isolation: the extensions must see the torch that is installed.
MAX_JOBS="${MAX_JOBS:-2}" FORCE_ONLY_CPU=1 "${PIP[@]}" install -q --no-build-isolation torch-scatter torch-sparse
echo "[env] torch_scatter/torch_sparse built ($(( $(date +%s) - start ))s)"
"${PIP[@]}" install -q -e ".[dev]"
touch "$STAMP"
echo "[env] ready in $(( $(date +%s) - start ))s"
