#!/usr/bin/env bash
# Single-node training: one Slurm job on one node, `fairchem --mode train --num-gpus N` inside it
# (fairchem starts the N ranks itself, NCCL on GPUs or gloo with GPUS_PER_NODE=0).
#
# When to use: a model that trains on the GPUs of one node (up to 8), when you want the plain
# fairchem command in the job. For several nodes use slurm/train_multinode.sh (GPU) or
# `eqv2-plugin submit --nodes N` (GPU or CPU); for requeue with an exact learning-rate schedule
# after preemption, use `eqv2-plugin submit`.
#
# Run from a login node (the script submits itself; settings below come from the environment):
#   CONFIG=configs/oc20/s2ef/all_md/eqv2_31M.yml PARTITION=gpu GPUS_PER_NODE=4 TIME_LIMIT=24:00:00 \
#       bash slurm/train_single_node.sh
# or submit it yourself (the sbatch options then come from your command line):
#   sbatch --partition=gpu --gpus-per-node=4 --time=24:00:00 --export=ALL,CONFIG=...,GPUS_PER_NODE=4 \
#       slurm/train_single_node.sh
# The job is requeueable: a requeued job (preemption, node failure) continues the same run
# (same TIMESTAMP_ID) from its last checkpoint.pt (fairchem 1.10 runs the learning-rate schedule
# one step behind after such a resume; see the README).

# ---- settings: override any of them from the environment --------------------------------------
export PARTITION="${PARTITION:-}"            # Slurm partition (empty: the cluster's default)
export ACCOUNT="${ACCOUNT:-}"                # Slurm account (empty: your default)
export QOS="${QOS:-}"                        # Slurm QOS (empty: default)
export TIME_LIMIT="${TIME_LIMIT:-24:00:00}"  # [D-]HH:MM:SS or minutes
export GPUS_PER_NODE="${GPUS_PER_NODE:-4}"   # 0: CPU node, fairchem --cpu (gloo)
export RANKS="${RANKS:-$(( GPUS_PER_NODE > 0 ? GPUS_PER_NODE : 1 ))}"  # fairchem --num-gpus (ranks)
export CPUS_PER_TASK="${CPUS_PER_TASK:-$(( 8 * RANKS ))}"  # CPU cores for the whole job
export MEM="${MEM:-}"                        # memory per node, e.g. 128G (empty: partition default)
export EXCLUSIVE="${EXCLUSIVE:-$(( RANKS > 1 ))}"  # 1: whole node; fairchem's ranks meet on the fixed
                                             # port 29400, so two such jobs must not share a node
export CONFIG="${CONFIG:-}"                  # fairchem YAML naming eqv2_plugin.* models (required)
export RUN_DIR="${RUN_DIR:-$PWD/runs}"       # checkpoints/ results/ logs/ go here (shared file system)
export IDENTIFIER="${IDENTIFIER:-eqv2}"      # suffix of the run id
export TIMESTAMP_ID="${TIMESTAMP_ID:-}"      # run id (empty: date + IDENTIFIER, fixed at submission)
export LOG_DIR="${LOG_DIR:-$RUN_DIR/slurm_logs}"
export FAIRCHEM="${FAIRCHEM:-fairchem}"      # fairchem of the environment with eqv2-plugin installed
export EXTRA_ARGS="${EXTRA_ARGS:-}"          # more fairchem flags/overrides, e.g. "--optim.max_epochs=2 --amp"
# -------------------------------------------------------------------------------------------------
set -euo pipefail

[[ -n "$CONFIG" ]] || { echo "set CONFIG=path/to/config.yml" >&2; exit 2; }

if [[ -z "${SLURM_JOB_ID:-}" ]]; then  # login node: submit this script
    [[ -f "$CONFIG" ]] || { echo "CONFIG=$CONFIG: no such file" >&2; exit 2; }
    export CONFIG="$(realpath "$CONFIG")" RUN_DIR="$(realpath -m "$RUN_DIR")" LOG_DIR="$(realpath -m "$LOG_DIR")"
    export TIMESTAMP_ID="${TIMESTAMP_ID:-$(date +%Y-%m-%d-%H-%M-%S)-$IDENTIFIER}"
    mkdir -p "$LOG_DIR"
    flags=(--job-name="train-$IDENTIFIER" --nodes=1 --ntasks=1 --cpus-per-task="$CPUS_PER_TASK"
           --time="$TIME_LIMIT" --requeue --output="$LOG_DIR/%x-%j.out" --export=ALL)
    [[ -n "$PARTITION" ]] && flags+=(--partition="$PARTITION")
    [[ -n "$ACCOUNT" ]] && flags+=(--account="$ACCOUNT")
    [[ -n "$QOS" ]] && flags+=(--qos="$QOS")
    [[ -n "$MEM" ]] && flags+=(--mem="$MEM")
    (( GPUS_PER_NODE > 0 )) && flags+=(--gpus-per-node="$GPUS_PER_NODE")
    (( EXCLUSIVE )) && flags+=(--exclusive)
    job=$(sbatch --parsable "${flags[@]}" "$0")
    echo "job_id: $job"
    echo "log: $LOG_DIR/train-$IDENTIFIER-$job.out"
    echo "checkpoints: $RUN_DIR/checkpoints/$TIMESTAMP_ID"
    echo "results: $RUN_DIR/results/$TIMESTAMP_ID"
    exit 0
fi

# ---- inside the job ------------------------------------------------------------------------------
export TIMESTAMP_ID="${TIMESTAMP_ID:-$(date +%Y-%m-%d-%H-%M-%S)-$IDENTIFIER}"
device_flags=()
(( GPUS_PER_NODE > 0 )) || device_flags+=(--cpu)
# one share of the job's cores per rank (fairchem starts RANKS processes on this node)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( CPUS_PER_TASK / RANKS > 0 ? CPUS_PER_TASK / RANKS : 1 ))}"
echo "job $SLURM_JOB_ID on $(hostname): restart ${SLURM_RESTART_COUNT:-0}, run $TIMESTAMP_ID"
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
exec "$FAIRCHEM" --mode train --config-yml "$CONFIG" --num-gpus "$RANKS" "${device_flags[@]}" \
    --run-dir "$RUN_DIR" --identifier "$IDENTIFIER" --timestamp-id "$TIMESTAMP_ID" $EXTRA_ARGS
