#!/usr/bin/env bash
# Per-split prediction: a job array with one task per split, each
# `fairchem --mode predict --checkpoint CHECKPOINT --dataset.test.src=DATA_ROOT/<split>`;
# each split's predictions are copied to OUT_DIR/<split>.npz.
#
# When to use: S2EF/IS2RE predictions of a trained model on several test splits (the OC20
# leaderboard's id, ood_ads, ood_cat, ood_both; OC22's id, ood), e.g. before assembling an EvalAI
# submission file from OUT_DIR/*.npz.
#
# Run from a login node (the script submits itself; settings below come from the environment):
#   CONFIG=configs/oc20/s2ef/all_md/eqv2_31M.yml CHECKPOINT=runs/checkpoints/<id>/best_checkpoint.pt \
#   DATA_ROOT=data/s2ef/all SPLITS="test_id test_ood_ads test_ood_cat test_ood_both" \
#   PARTITION=gpu bash slurm/predict.sh
# or submit it yourself with --array=0-<number of splits - 1> and --export=ALL,CONFIG=...,...

# ---- settings: override any of them from the environment --------------------------------------
export PARTITION="${PARTITION:-}"            # Slurm partition (empty: the cluster's default)
export ACCOUNT="${ACCOUNT:-}"                # Slurm account (empty: your default)
export QOS="${QOS:-}"                        # Slurm QOS (empty: default)
export TIME_LIMIT="${TIME_LIMIT:-04:00:00}"  # per split; [D-]HH:MM:SS or minutes
export GPUS_PER_NODE="${GPUS_PER_NODE:-1}"   # 0: CPU node, fairchem --cpu
export CPUS_PER_TASK="${CPUS_PER_TASK:-8}"
export MEM="${MEM:-}"                        # e.g. 64G (empty: partition default)
export CONFIG="${CONFIG:-}"                  # the model's fairchem YAML (required)
export CHECKPOINT="${CHECKPOINT:-}"          # best_checkpoint.pt (required)
export DATA_ROOT="${DATA_ROOT:-}"            # folder holding one LMDB folder per split (required)
export SPLITS="${SPLITS:-id ood_ads ood_cat ood_both}"  # names of those folders
export RUN_DIR="${RUN_DIR:-$PWD/runs}"       # fairchem's results/<TAG>-<split>/ go here
export OUT_DIR="${OUT_DIR:-$RUN_DIR/predictions}"  # <split>.npz copies
export TAG="${TAG:-}"                        # run id prefix (empty: predict-<date>, fixed at submission)
export LOG_DIR="${LOG_DIR:-$RUN_DIR/slurm_logs}"
export FAIRCHEM="${FAIRCHEM:-fairchem}"      # fairchem of the environment with eqv2-plugin installed
export EXTRA_ARGS="${EXTRA_ARGS:-}"          # more fairchem flags/overrides, e.g. "--optim.eval_batch_size=16"
# -------------------------------------------------------------------------------------------------
set -euo pipefail

read -r -a split_list <<<"$SPLITS"
for var in CONFIG CHECKPOINT DATA_ROOT; do
    [[ -n "${!var}" ]] || { echo "set $var (see the top of $0)" >&2; exit 2; }
done
(( ${#split_list[@]} > 0 )) || { echo "SPLITS is empty" >&2; exit 2; }

if [[ -z "${SLURM_JOB_ID:-}" ]]; then  # login node: submit this script as an array
    for path in "$CONFIG" "$CHECKPOINT"; do [[ -f "$path" ]] || { echo "$path: no such file" >&2; exit 2; }; done
    for split in "${split_list[@]}"; do
        [[ -e "$DATA_ROOT/$split" ]] || { echo "$DATA_ROOT/$split: no such split folder" >&2; exit 2; }
    done
    export CONFIG="$(realpath "$CONFIG")" CHECKPOINT="$(realpath "$CHECKPOINT")" DATA_ROOT="$(realpath "$DATA_ROOT")"
    export RUN_DIR="$(realpath -m "$RUN_DIR")" OUT_DIR="$(realpath -m "$OUT_DIR")" LOG_DIR="$(realpath -m "$LOG_DIR")"
    export TAG="${TAG:-predict-$(date +%Y-%m-%d-%H-%M-%S)}"
    mkdir -p "$LOG_DIR" "$OUT_DIR"
    flags=(--job-name="$TAG" --array="0-$(( ${#split_list[@]} - 1 ))" --nodes=1 --ntasks=1
           --cpus-per-task="$CPUS_PER_TASK" --time="$TIME_LIMIT" --output="$LOG_DIR/%x-%A_%a.out" --export=ALL)
    [[ -n "$PARTITION" ]] && flags+=(--partition="$PARTITION")
    [[ -n "$ACCOUNT" ]] && flags+=(--account="$ACCOUNT")
    [[ -n "$QOS" ]] && flags+=(--qos="$QOS")
    [[ -n "$MEM" ]] && flags+=(--mem="$MEM")
    (( GPUS_PER_NODE > 0 )) && flags+=(--gpus-per-node="$GPUS_PER_NODE")
    job=$(sbatch --parsable "${flags[@]}" "$0")
    echo "job_id: $job"
    echo "splits: ${split_list[*]} (array tasks 0-$(( ${#split_list[@]} - 1 )))"
    echo "logs: $LOG_DIR/$TAG-${job}_<task>.out"
    echo "predictions: $OUT_DIR/<split>.npz"
    exit 0
fi

# ---- inside the job: one split per array task ---------------------------------------------------
task="${SLURM_ARRAY_TASK_ID:-0}"
(( task < ${#split_list[@]} )) || { echo "array task $task but only ${#split_list[@]} splits" >&2; exit 2; }
split="${split_list[$task]}"
TAG="${TAG:-predict-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}"
run_id="$TAG-$split"
device_flags=()
(( GPUS_PER_NODE > 0 )) || device_flags+=(--cpu)
echo "job $SLURM_JOB_ID (task $task) on $(hostname): split $split -> $OUT_DIR/$split.npz"
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
"$FAIRCHEM" --mode predict --config-yml "$CONFIG" --checkpoint "$CHECKPOINT" "${device_flags[@]}" \
    --run-dir "$RUN_DIR" --identifier "$split" --timestamp-id "$run_id" \
    "--dataset.test.src=$DATA_ROOT/$split" $EXTRA_ARGS
shopt -s nullglob
found=("$RUN_DIR/results/$run_id/"*_predictions.npz)
(( ${#found[@]} == 1 )) || { echo "expected one *_predictions.npz in $RUN_DIR/results/$run_id, found ${#found[@]}" >&2; exit 1; }
mkdir -p "$OUT_DIR"
cp "${found[0]}" "$OUT_DIR/$split.npz.tmp$$" && mv "$OUT_DIR/$split.npz.tmp$$" "$OUT_DIR/$split.npz"
echo "wrote $OUT_DIR/$split.npz"
