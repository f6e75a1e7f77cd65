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
# step; fp32 and AMP fp16), as text tables and JSON, how far AMP moves the energies
# and forces of each implementation (amp_accuracy.txt), and torch.profiler tables of the
# reference and of our Triton path (profile.txt).
#
# REHEARSAL=1 runs the same steps on this CPU (kernels in triton's interpreter, a
# one-layer 31M benchmark of the torch path, no AMP) to catch import and API breaks
# before a GPU is lent; benchmarks/gpu/rehearse_on_cpu.sh sets up the stack for it.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ "${REHEARSAL:-0}" == 1 ]]; then
  export TRITON_INTERPRET=1  # set before triton is imported; --noconftest skips the tests' own set-up
  device=cpu; tests_timeout=900; precisions=(fp32); workers=2; profile_timeout=300
  profile=(--device cpu --config 31M --layers 1 --systems 1 --warmup 1 --steps 1 --rows 10 --timeline 2 --cases ours:torch:inference)
  config=31M; bench=(--layers 1 --systems 1 --backend torch --reps 1 --warmup 0 --timeout 300); bench_timeout=600
  variants=(--device cpu --config 31M --layers 1 --systems 1 --backend torch --warmup 1 --steps 1); variants_timeout=600
else
  device=cuda; tests_timeout=100; precisions=(fp32 amp); workers=8; profile_timeout=120
  profile=(--device cuda --config 83M --systems 8 --timeline 12 --cases ref:train ours:triton:train ours:triton:inference ref:inference)
  config=83M; bench=(--systems 8 --backend torch triton --reps 5 --warmup 2 --timeout 150); bench_timeout=200
  variants=(--device cuda --config 83M --systems 8 --warmup 2 --steps 8); variants_timeout=200
fi
# PRECISIONS="amp" (say) measures only those, STEPS="profile" (say) runs only those of
# tests, bench, profile (and graphs and variants, which only run when named): e.g. to redo one
# part after a fix within the device budget
[[ -n "${PRECISIONS:-}" ]] && read -r -a precisions <<< "$PRECISIONS"
steps=" ${STEPS:-tests bench profile} "
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed: run benchmarks/gpu/fetch_wheels.sh here and carry .whl"; exit 1; }
# our package from the working tree; fairchem and friends from the wheels; the torch_scatter placeholder last
export PYTHONPATH="$PWD/src:/tmp/site:$PWD/benchmarks/gpu/placeholder"

{
  [[ $device == cuda ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys, numpy, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  python3 -c "import fairchem.core, eqv2_plugin; from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2; print('fairchem reference importable')"
} 2>&1 | tee "$OUT/versions.txt"

# 1. the kernels compiled for this GPU against the torch path (values, gradients, whole model);
# the ~50 cases compile on the order of a hundred kernel variants, one CPU core each: spread
# them over pytest-xdist workers where it is installed (the GPU image has it)
if [[ $steps == *" tests "* ]]; then
  xdist=(); python3 -c "import xdist" 2>/dev/null && xdist=(-n "$workers")
  timeout "$tests_timeout" python3 -m pytest -q -p no:cacheprovider --noconftest ${xdist[@]+"${xdist[@]}"} \
    tests/test_triton_kernels.py tests/test_cuda_graphs.py 2>&1 | tail -40 | tee "$OUT/kernel_tests.txt"
fi

# 2. the benchmark: fp32 then AMP
if [[ $steps == *" bench "* ]]; then
  for precision in "${precisions[@]}"; do
    extra=""; [[ $precision == amp ]] && extra="--amp"
    timeout "$bench_timeout" python3 benchmarks/bench_model.py --device "$device" --config "$config" "${bench[@]}" $extra \
      --out "$OUT/bench_${config}_$precision.json" 2>&1 | tee "$OUT/bench_${config}_$precision.txt"
  done
  # 3. what AMP does to each implementation's energies and forces (same weights, batch and frames)
  if [[ -f "$OUT/bench_${config}_fp32.json" && -f "$OUT/bench_${config}_amp.json" ]]; then
    python3 benchmarks/gpu/amp_accuracy.py "$OUT/bench_${config}_fp32.json" "$OUT/bench_${config}_amp.json" 2>&1 \
      | tee "$OUT/amp_accuracy.txt"
  fi
fi
# 3b. (only when STEPS names it) inference replayed from CUDA graphs (`cuda_graphs: true`), our
# torch and Triton paths against the reference, per precision
if [[ $steps == *" graphs "* ]]; then
  for precision in "${precisions[@]}"; do
    extra=""; [[ $precision == amp ]] && extra="--amp"
    timeout "$bench_timeout" python3 benchmarks/bench_model.py --device "$device" --config "$config" "${bench[@]}" $extra \
      --mode inference --set cuda_graphs=true --out "$OUT/bench_${config}_graphs_$precision.json" 2>&1 \
      | tee "$OUT/bench_${config}_graphs_$precision.txt"
  done
fi
# 4. where the time goes: torch.profiler tables (self device time per operator / kernel), per
# precision, in one file (a device run brings back at most 8 files from $OUT)
if [[ $steps == *" profile "* ]]; then
  : > "$OUT/profile.txt"
  for precision in "${precisions[@]}"; do
    extra=""; [[ $precision == amp ]] && extra="--amp"
    timeout "$profile_timeout" python3 benchmarks/gpu/profile_model.py "${profile[@]}" $extra >> "$OUT/profile.txt" 2>&1
  done
  grep -E "^====|time total" "$OUT/profile.txt"
fi
# 5. (only when STEPS names it) one process per precision timing our step under variants that
# switch one execution choice each, next to the reference (gpu/variants.py): VARIANTS and
# MODES (train, inference) override its defaults
if [[ $steps == *" variants "* ]]; then
  for precision in "${precisions[@]}"; do
    extra=""; [[ $precision == amp ]] && extra="--amp"
    timeout "$variants_timeout" python3 benchmarks/gpu/variants.py "${variants[@]}" $extra ${MODES:+--modes $MODES} \
      --variants ${VARIANTS:-ref base recompute_conv1 no_gc no_edge_recompute no_ffn_recompute} 2>&1 \
      | grep -v "^WARNING" | tee -a "$OUT/variants.txt"
  done
fi
ls -la "$OUT"
