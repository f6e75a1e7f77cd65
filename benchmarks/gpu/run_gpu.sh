#!/usr/bin/env bash
# The GPU check and benchmark, as one script for an NVIDIA H100/H200 device machine
# (Python 3.12, torch 2.11, triton 3.6, e3nn, torch_geometric; no fairchem, no network).
#
# Here, once:   bash benchmarks/gpu/fetch_wheels.sh        (fills .whl/, ~6 MB)
# There:        device run --carry .whl -- "bash benchmarks/gpu/run_gpu.sh"   (timeout ~540 s)
#
# Writes to $OUT (or benchmarks/results/gpu): versions + GPU, the Triton-vs-torch
# kernel tests compiled on the GPU, and the 83M benchmark (8 OC20-like systems;
# reference vs ours with kernel_backend torch and triton; inference and training
# step; fp32 and AMP fp16), as text tables and JSON.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed: run benchmarks/gpu/fetch_wheels.sh here and carry .whl"; exit 1; }
# our package from the working tree; fairchem and friends from the wheels; the torch_scatter placeholder last
export PYTHONPATH="$PWD/src:/tmp/site:$PWD/benchmarks/gpu/placeholder"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
  python3 -c "import fairchem.core, eqv2_plugin; from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2; print('fairchem reference importable')"
} 2>&1 | tee "$OUT/versions.txt"

# 1. the kernels compiled for this GPU against the torch path (values, gradients, whole model)
timeout 180 python3 -m pytest -q -p no:cacheprovider --noconftest tests/test_triton_kernels.py 2>&1 \
  | tail -40 | tee "$OUT/kernel_tests.txt"

# 2. the benchmark: 83M config, 8 systems; fp32 then AMP
for precision in fp32 amp; do
  extra=""; [[ $precision == amp ]] && extra="--amp"
  timeout 150 python3 benchmarks/bench_model.py --device cuda --config 83M --systems 8 \
    --backend torch triton --reps 5 --warmup 2 $extra --timeout 120 \
    --out "$OUT/bench_83M_$precision.json" 2>&1 | tee "$OUT/bench_83M_$precision.txt"
done
ls -la "$OUT"
