#!/usr/bin/env bash
# Multi-node GPU training through fairchem's own `--submit` (submitit): run this on a login node;
# fairchem writes the sbatch script, submits NODES x GPUS_PER_NODE ranks and prints the job id.
#
# When to use: large models (31M/153M) on several GPU nodes with fairchem's stock launcher.
# GPU nodes only: fairchem 1.10's --submit path hard-codes the NCCL backend and
# torch.cuda.set_device. For CPU nodes, or to requeue with the exact learning-rate schedule,
# use `eqv2-plugin submit --nodes N --gpus-per-node G` (or `--cpu`) instead.
#
# Run (not through sbatch):
#   CONFIG=configs/oc20/s2ef/all_md/eqv2_153M.yml PARTITION=gpu NODES=4 GPUS_PER_NODE=8 TIME_HOURS=48 \
#       bash slurm/train_multinode.sh
# fairchem's job requeues itself on preemption/timeout (up to 3 timeouts) and resumes from
# checkpoint.pt with the same run id.

# ---- settings: override any of them from the environment --------------------------------------
export PARTITION="${PARTITION:-}"            # Slurm partition (empty: the cluster's default)
export ACCOUNT="${ACCOUNT:-}"                # Slurm account (empty: your default)
export QOS="${QOS:-}"                        # Slurm QOS (empty: default)
export TIME_HOURS="${TIME_HOURS:-72}"        # time limit in whole hours (fairchem --slurm-timeout)
export NODES="${NODES:-2}"                   # nodes
export GPUS_PER_NODE="${GPUS_PER_NODE:-8}"   # GPUs (= ranks) per node
export MEM_GB="${MEM_GB:-480}"               # memory per node in GB (fairchem --slurm-mem)
export CONFIG="${CONFIG:-}"                  # fairchem YAML naming eqv2_plugin.* models (required)
export RUN_DIR="${RUN_DIR:-$PWD/runs}"       # checkpoints/ results/ logs/ (shared file system)
export IDENTIFIER="${IDENTIFIER:-eqv2}"      # job name and run id suffix
export LOG_DIR="${LOG_DIR:-$RUN_DIR/slurm}"  # submitit folder: LOG_DIR/<job id>/
export FAIRCHEM="${FAIRCHEM:-fairchem}"      # fairchem of the environment with eqv2-plugin installed
export EXTRA_ARGS="${EXTRA_ARGS:-}"          # more fairchem flags/overrides, e.g. "--amp --optim.batch_size=4"
# -------------------------------------------------------------------------------------------------
set -euo pipefail

[[ -n "$CONFIG" && -f "$CONFIG" ]] || { echo "set CONFIG=path/to/config.yml (got '$CONFIG')" >&2; exit 2; }
if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    echo "run this on a login node, not inside a job: fairchem --submit submits its own job" >&2
    exit 2
fi
command -v sbatch >/dev/null || { echo "sbatch not found: run on a Slurm login node" >&2; exit 2; }

flags=(--submit --num-nodes "$NODES" --num-gpus "$GPUS_PER_NODE" --slurm-timeout "$TIME_HOURS"
       --slurm-mem "$MEM_GB" --logdir "$(realpath -m "$LOG_DIR")")
[[ -n "$PARTITION" ]] && flags+=(--slurm-partition "$PARTITION")
[[ -n "$ACCOUNT" ]] && flags+=(--slurm-account "$ACCOUNT")
[[ -n "$QOS" ]] && flags+=(--slurm-qos "$QOS")
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
exec "$FAIRCHEM" --mode train --config-yml "$(realpath "$CONFIG")" --run-dir "$(realpath -m "$RUN_DIR")" \
    --identifier "$IDENTIFIER" "${flags[@]}" $EXTRA_ARGS
