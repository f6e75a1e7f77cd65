#!/usr/bin/env bash
# Rehearse benchmarks/gpu/run_gpu.sh on this CPU machine, on the GPU image's Python
# packages instead of the project's pins (the GPU machines are lent rarely and briefly,
# so an import or API break should show up here first).
#
# Builds (once) a venv like the GPU image: Python 3.12, torch 2.11.0, triton 3.6.0,
# numpy 2.3, e3nn, torch_geometric, matplotlib, scipy, huggingface_hub (fairchem's
# import needs it; the image has it), pytest, pytest-xdist. torch 2.11 from PyPI is a
# CUDA build (~5 GB in the venv; it runs on the CPU here). numpy stays below 2.4: triton 3.6's
# *interpreter* turns 1-element arrays into Python ints, which numpy 2.5 (the image's)
# refuses (2.5.5 failed, 2.3.5 passed); compiled kernels on a GPU do not go through that code.
#
# Then runs run_gpu.sh with REHEARSAL=1 (fetching the wheels first if .whl/ is missing).
# About 5 minutes plus the venv; results under $OUT (default benchmarks/results/gpu-rehearsal).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${REHEARSAL_VENV:-/tmp/eqv2-gpu-rehearsal}"
PY312="${PY312:-$(command -v python3.12 || true)}"
[[ -n "$PY312" ]] || { echo "python3.12 not found (set PY312=/path/to/python3.12)"; exit 1; }
if [[ ! -f "$VENV/.complete" ]]; then  # marker: a build that failed half-way is redone
  "$PY312" -m venv "$VENV"
  "$VENV/bin/python3" -m pip install -q torch==2.11.0 triton==3.6.0 "numpy>=2,<2.4" e3nn torch-geometric \
    matplotlib scipy pyyaml huggingface_hub pytest pytest-timeout pytest-xdist
  touch "$VENV/.complete"
fi
[[ -d .whl ]] || bash benchmarks/gpu/fetch_wheels.sh
PATH="$VENV/bin:$PATH" REHEARSAL=1 OUT="${OUT:-benchmarks/results/gpu-rehearsal}" bash benchmarks/gpu/run_gpu.sh
