#!/usr/bin/env bash
# ML relaxations as a job array: SHARDS array tasks each relax one shard of the relaxation set
# (`fairchem --mode run-relaxations --dataset.relax.shard=i --dataset.relax.total_shards=SHARDS`),
# then a job that starts when all of them succeeded merges the shards' relaxed_positions.npz
# into OUT (`eqv2-plugin merge-relaxations`: ids, pos, chunk_idx, and energy when TRAJ_DIR is set).
#
# When to use: IS2RS/IS2RE-by-relaxation on a large set (OC20 has ~25k systems per test split):
# the shards run in parallel and the merged file is what the leaderboard tools take.
#
# Run from a login node (the script submits the array and the merge job; settings below come
# from the environment):
#   CONFIG=configs/oc20/is2re/eqv2_relax.yml CHECKPOINT=/path/to/eq2_153M_ec4_allmd.pt \
#   RELAX_SRC=/data/is2re/all/test_id/data.lmdb SHARDS=16 PARTITION=gpu \
#   OUT=runs/relax/test_id.npz TRAJ_DIR=runs/relax/test_id_trajs bash slurm/relax_array.sh
# CONFIG must have the task's relaxation keys (relaxation_steps, relax_opt, ...) and
# dataset.relax.src unless RELAX_SRC is given.

# ---- settings: override any of them from the environment --------------------------------------
export PARTITION="${PARTITION:-}"            # Slurm partition (empty: the cluster's default)
export ACCOUNT="${ACCOUNT:-}"                # Slurm account (empty: your default)
export QOS="${QOS:-}"                        # Slurm QOS (empty: default)
export TIME_LIMIT="${TIME_LIMIT:-04:00:00}"  # per shard; [D-]HH:MM:SS or minutes
export GPUS_PER_NODE="${GPUS_PER_NODE:-1}"   # 0: CPU node, fairchem --cpu
export CPUS_PER_TASK="${CPUS_PER_TASK:-8}"
export MEM="${MEM:-}"                        # e.g. 64G (empty: partition default)
export SHARDS="${SHARDS:-8}"                 # array size: the relaxation set is split into SHARDS blocks
export MAX_PARALLEL="${MAX_PARALLEL:-}"      # at most this many shards at once (empty: no limit)
export CONFIG="${CONFIG:-}"                  # fairchem YAML with dataset.relax (required)
export CHECKPOINT="${CHECKPOINT:-}"          # best_checkpoint.pt (required)
export RUN_DIR="${RUN_DIR:-$PWD/runs}"       # fairchem's results/<TAG>-shard<i>/ go here
export OUT="${OUT:-$RUN_DIR/relaxed_positions.npz}"  # the merged file
export TRAJ_DIR="${TRAJ_DIR:-}"              # task.relax_opt.traj_dir (empty: the config's; a fresh folder per run)
export RELAX_SRC="${RELAX_SRC:-}"            # the relaxation set (dataset.relax.src; empty: the config's); the merge checks it is complete
export TAG="${TAG:-}"                        # run id prefix (empty: relax-<date>, fixed at submission)
export LOG_DIR="${LOG_DIR:-$RUN_DIR/slurm_logs}"
export FAIRCHEM="${FAIRCHEM:-fairchem}"      # fairchem of the environment with eqv2-plugin installed
export EQV2_PLUGIN="${EQV2_PLUGIN:-eqv2-plugin}"  # eqv2-plugin of the same environment
export EXTRA_ARGS="${EXTRA_ARGS:-}"          # more fairchem flags/overrides, e.g. "--task.relaxation_steps=200"
# -------------------------------------------------------------------------------------------------
set -euo pipefail

for var in CONFIG CHECKPOINT; do
    [[ -n "${!var}" ]] || { echo "set $var (see the top of $0)" >&2; exit 2; }
done
(( SHARDS >= 1 )) || { echo "SHARDS=$SHARDS: at least 1" >&2; exit 2; }

common_flags() {
    [[ -n "$PARTITION" ]] && flags+=(--partition="$PARTITION")
    [[ -n "$ACCOUNT" ]] && flags+=(--account="$ACCOUNT")
    [[ -n "$QOS" ]] && flags+=(--qos="$QOS")
    return 0
}

if [[ -z "${SLURM_JOB_ID:-}" ]]; then  # login node: submit the array, then the merge job
    for path in "$CONFIG" "$CHECKPOINT"; do [[ -f "$path" ]] || { echo "$path: no such file" >&2; exit 2; }; done
    export CONFIG="$(realpath "$CONFIG")" CHECKPOINT="$(realpath "$CHECKPOINT")" RUN_DIR="$(realpath -m "$RUN_DIR")"
    export OUT="$(realpath -m "$OUT")" LOG_DIR="$(realpath -m "$LOG_DIR")"
    [[ -n "$TRAJ_DIR" ]] && export TRAJ_DIR="$(realpath -m "$TRAJ_DIR")"
    [[ -n "$RELAX_SRC" ]] && export RELAX_SRC="$(realpath "$RELAX_SRC")"
    export TAG="${TAG:-relax-$(date +%Y-%m-%d-%H-%M-%S)}"
    mkdir -p "$LOG_DIR"
    array="0-$(( SHARDS - 1 ))${MAX_PARALLEL:+%$MAX_PARALLEL}"
    flags=(--job-name="$TAG" --array="$array" --nodes=1 --ntasks=1 --cpus-per-task="$CPUS_PER_TASK"
           --time="$TIME_LIMIT" --output="$LOG_DIR/%x-%A_%a.out" --export=ALL,EQV2_STAGE=shard)
    common_flags
    [[ -n "$MEM" ]] && flags+=(--mem="$MEM")
    (( GPUS_PER_NODE > 0 )) && flags+=(--gpus-per-node="$GPUS_PER_NODE")
    array_job=$(sbatch --parsable "${flags[@]}" "$0")
    flags=(--job-name="$TAG-merge" --dependency="afterok:$array_job" --kill-on-invalid-dep=yes --nodes=1
           --ntasks=1 --cpus-per-task=1 --time=30 --output="$LOG_DIR/%x-%j.out" --export=ALL,EQV2_STAGE=merge)
    common_flags
    merge_job=$(sbatch --parsable "${flags[@]}" "$0")
    echo "job_id: $array_job"
    echo "merge_job_id: $merge_job"
    echo "shards: $SHARDS -> $RUN_DIR/results/$TAG-shard<i>/relaxed_positions.npz"
    echo "merged: $OUT"
    echo "logs: $LOG_DIR/$TAG-${array_job}_<i>.out, $LOG_DIR/$TAG-merge-$merge_job.out"
    exit 0
fi

# ---- inside the jobs ---------------------------------------------------------------------------
TAG="${TAG:-relax-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}"
case "${EQV2_STAGE:-shard}" in
    shard)
        shard="${SLURM_ARRAY_TASK_ID:?run the shards as a job array (bash $0 submits one)}"
        device_flags=()
        (( GPUS_PER_NODE > 0 )) || device_flags+=(--cpu)
        relax_flags=()
        [[ -n "$TRAJ_DIR" ]] && { mkdir -p "$TRAJ_DIR"; relax_flags+=("--task.relax_opt.traj_dir=$TRAJ_DIR"); }
        # fairchem checks the whole set's metadata.npz against the shard: give it the shard's own
        if [[ -n "$RELAX_SRC" ]]; then
            relax_flags+=("--dataset.relax.src=$RELAX_SRC")
            set_flags=(--src "$RELAX_SRC")
        else
            set_flags=(--config-yml "$CONFIG")
        fi
        meta=$("$EQV2_PLUGIN" shard-metadata "${set_flags[@]}" --shard "$shard" --shards "$SHARDS" \
            --out "$RUN_DIR/results/$TAG-shard$shard.metadata.npz")
        [[ -n "$meta" ]] && relax_flags+=("--dataset.relax.metadata_path=$meta")
        echo "job $SLURM_JOB_ID on $(hostname): shard $shard of $SHARDS"
        # shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
        exec "$FAIRCHEM" --mode run-relaxations --config-yml "$CONFIG" --checkpoint "$CHECKPOINT" \
            "${device_flags[@]}" --run-dir "$RUN_DIR" --identifier "shard$shard" \
            --timestamp-id "$TAG-shard$shard" "--dataset.relax.shard=$shard" \
            "--dataset.relax.total_shards=$SHARDS" --task.write_pos=True "${relax_flags[@]}" $EXTRA_ARGS
        ;;
    merge)
        shards=()
        for (( i = 0; i < SHARDS; i++ )); do shards+=("$RUN_DIR/results/$TAG-shard$i"); done
        merge_flags=(--out "$OUT")
        [[ -n "$TRAJ_DIR" ]] && merge_flags+=(--traj-dir "$TRAJ_DIR")
        [[ -n "${RELAX_SRC:-}" ]] && merge_flags+=(--relax-src "$RELAX_SRC")
        echo "job $SLURM_JOB_ID on $(hostname): merging $SHARDS shards"
        exec "$EQV2_PLUGIN" merge-relaxations "${shards[@]}" "${merge_flags[@]}"
        ;;
    *) echo "unknown EQV2_STAGE=$EQV2_STAGE" >&2; exit 2 ;;
esac
