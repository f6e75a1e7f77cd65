"""``eqv2-plugin submit``, ``merge-relaxations`` and ``shard-metadata``.

Only argparse lives here; fairchem and submitit are imported when a command runs.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

_SUBMIT_EPILOG = """\
examples:
  # 2 GPU nodes x 4 GPUs (NCCL), 12 h, requeued up to 3 times on timeout:
  eqv2-plugin submit --config-yml configs/oc20/s2ef/all_md/eqv2_31M.yml --partition gpu --account proj \\
      --nodes 2 --gpus-per-node 4 --time 12:00:00 --identifier eqv2_31M

  # CPU nodes (gloo), 2 ranks per node, a config override after `--`:
  eqv2-plugin submit --config-yml configs/demo/s2ef.yml --cpu --tasks-per-node 2 --partition cpu \\
      --time 30 -- --optim.max_epochs=2

The job runs fairchem's trainer with this Python (the environment must exist on the compute nodes,
with eqv2-plugin installed). On preemption or when the time limit nears, Slurm signals the job
(USR2, --signal-delay seconds before the end); the job writes checkpoint.pt at the end of the
current step and requeues itself; the next attempt resumes from it with the same step count and
learning-rate schedule. A job requeued without a signal (node failure, `scontrol requeue`)
resumes from the last checkpoint.pt fairchem wrote (optim.checkpoint_every steps).
To continue a finished or cancelled run by hand, submit again with its --timestamp-id.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``submit``, ``merge-relaxations`` and ``shard-metadata`` to the ``eqv2-plugin`` subcommands."""
    p = subparsers.add_parser(
        "submit",
        help="run fairchem training/prediction/relaxations as a requeueable Slurm job (submitit)",
        description=(
            "Submit a fairchem run (the same flags as `fairchem`) to Slurm through submitit, on GPU\n"
            "nodes (NCCL) or CPU nodes (--cpu, gloo). Prints the job id and where the logs,\n"
            "checkpoints and results will be."
        ),
        epilog=_SUBMIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fc = p.add_argument_group("fairchem run")
    fc.add_argument("--config-yml", required=True, type=Path, metavar="YML", help="fairchem config")
    fc.add_argument("--mode", default="train", choices=["train", "predict", "validate", "run-relaxations"])
    fc.add_argument("--run-dir", type=Path, default=Path("."), metavar="DIR",
                    help="parent of checkpoints/ results/ logs/ (default: .); must be on a shared file system")
    fc.add_argument("--identifier", default="", help="appended to the run's timestamp id and the job name")
    fc.add_argument("--timestamp-id", default=None, metavar="ID",
                    help="run id (default: now + identifier); an existing run's id continues that run")
    fc.add_argument("--checkpoint", default=None, metavar="PT",
                    help="start from this checkpoint (needed for predict/validate/run-relaxations)")
    fc.add_argument("--seed", type=int, default=0)
    fc.add_argument("--print-every", type=int, default=10, metavar="N")
    fc.add_argument("--amp", action="store_true", help="mixed precision (GPU only)")
    fc.add_argument("overrides", nargs="*", metavar="-- --KEY=VALUE",
                    help="config overrides after `--`, as for fairchem: -- --optim.max_epochs=2")

    sl = p.add_argument_group("Slurm")
    sl.add_argument("--partition", default=None, help="default: the cluster's default partition")
    sl.add_argument("--account", default=None)
    sl.add_argument("--qos", default=None)
    sl.add_argument("--time", default="60", metavar="T", help="time limit: minutes or [D-]HH:MM:SS (default: 60)")
    sl.add_argument("--nodes", type=int, default=1)
    sl.add_argument("--gpus-per-node", type=int, default=1, metavar="G", help="default: 1 (ignored with --cpu)")
    sl.add_argument("--cpu", action="store_true", help="CPU nodes: no GPUs, gloo backend")
    sl.add_argument("--tasks-per-node", type=int, default=None, metavar="K",
                    help="ranks per node (default: one per GPU; 1 with --cpu)")
    sl.add_argument("--cpus-per-task", type=int, default=None, metavar="C",
                    help="default: optim.num_workers + 1")
    sl.add_argument("--mem-gb", type=float, default=None, metavar="GB", help="memory per node")
    sl.add_argument("--constraint", default=None, help="Slurm --constraint (node features)")
    sl.add_argument("--max-requeues", type=int, default=3, metavar="N",
                    help="requeues after a timeout (preemptions are not counted; default: 3)")
    sl.add_argument("--signal-delay", type=int, default=120, metavar="S",
                    help="seconds before the time limit at which the job checkpoints (default: 120)")
    sl.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                    help="any other sbatch option, e.g. --sbatch mail-type=END (repeatable)")
    sl.add_argument("--logdir", type=Path, default=None, metavar="DIR",
                    help="submitit folder: scripts, pickles and logs in DIR/<job id>/ (default: RUN_DIR/slurm)")
    p.set_defaults(func=_run_submit)

    m = subparsers.add_parser(
        "merge-relaxations",
        help="merge the relaxed_positions.npz of a sharded run-relaxations job array",
        description=(
            "Merge the results of `fairchem --mode run-relaxations` run on shards of the relaxation\n"
            "set (dataset.relax.shard=i, total_shards=N), e.g. by slurm/relax_array.sh, into one file\n"
            "with fairchem's keys (ids, pos, chunk_idx) and, with --traj-dir, the relaxed energies."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("shards", nargs="+", type=Path, metavar="SHARD",
                   help="relaxed_positions.npz files, or the results folders that hold them")
    m.add_argument("--out", required=True, type=Path, help="merged .npz to write")
    m.add_argument("--traj-dir", type=Path, default=None, metavar="DIR",
                   help="task.relax_opt.traj_dir of the runs: adds `energy` (last frame of each relaxation)")
    m.add_argument("--relax-src", type=Path, default=None, metavar="LMDB",
                   help="the relaxation set (dataset.relax.src): check that every system is in exactly one shard")
    m.set_defaults(func=_run_merge)

    sm = subparsers.add_parser(
        "shard-metadata",
        help="metadata.npz for one shard of a relaxation set (for fairchem's dataset.relax.shard)",
        description=(
            "fairchem 1.10 shards a relaxation set (dataset.relax.shard/total_shards) but checks the\n"
            "whole set's metadata.npz against the shard and fails. This writes the shard's own\n"
            "metadata.npz and prints its path (nothing when the set has no metadata.npz); pass it\n"
            "to fairchem as --dataset.relax.metadata_path=PATH. Used by slurm/relax_array.sh."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = sm.add_mutually_exclusive_group(required=True)
    src.add_argument("--config-yml", type=Path, metavar="YML", help="fairchem config with dataset.relax.src")
    src.add_argument("--src", type=Path, metavar="LMDB", help="the relaxation set itself")
    sm.add_argument("--shard", type=int, required=True)
    sm.add_argument("--shards", type=int, required=True)
    sm.add_argument("--out", type=Path, required=True, help="metadata .npz to write")
    sm.set_defaults(func=_run_shard_metadata)


def _run_submit(args: argparse.Namespace) -> int:
    from eqv2_plugin.errors import UserInputError
    from eqv2_plugin.launch.job import run_paths
    from eqv2_plugin.launch.submit import SlurmRequest, build_fairchem_config, check_slurm, parse_time, submit

    extra = {}
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"--sbatch {item!r}: give KEY=VALUE, e.g. --sbatch mail-type=END")
        extra[key.lstrip("-")] = value
    for name in ("nodes", "tasks_per_node", "cpus_per_task", "max_requeues"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "max_requeues" else 1):
            raise UserInputError(f"--{name.replace('_', '-')} {value}: must be positive")
    request = SlurmRequest(
        partition=args.partition, account=args.account, qos=args.qos, time_min=parse_time(args.time),
        nodes=args.nodes, gpus_per_node=0 if args.cpu else args.gpus_per_node, tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, max_requeues=args.max_requeues,
        signal_delay_s=args.signal_delay, constraint=args.constraint, extra=extra,
    )
    if not args.cpu and args.gpus_per_node < 1:
        raise UserInputError("--gpus-per-node must be at least 1 (use --cpu for CPU nodes)")
    check_slurm(args.partition)
    run_dir = args.run_dir.absolute()
    config = build_fairchem_config(
        args.config_yml, args.mode, run_dir, args.identifier, request, cpu=args.cpu,
        timestamp_id=args.timestamp_id, checkpoint=args.checkpoint, seed=args.seed,
        print_every=args.print_every, amp=args.amp, overrides=args.overrides,
    )
    logdir = (args.logdir or run_dir / "slurm").absolute()
    paths = run_paths(config)
    try:
        job = submit(config, request, logdir)
    except BaseException:
        if args.timestamp_id is None:  # the run folder claimed for this submission stays empty
            try:
                paths["checkpoints"].rmdir()
            except OSError:
                pass
        raise
    ranks = request.nodes * request.ranks_per_node
    device = "cpu (gloo)" if args.cpu else f"{request.gpus_per_node} GPU(s)/node (nccl)"
    print(f"job_id: {job.job_id}")
    print(f"run: {config['mode']} {config['timestamp_id']}, {request.nodes} node(s) x "
          f"{request.ranks_per_node} rank(s) = {ranks}, {device}, partition {args.partition or '(default)'}, "
          f"{request.time_min} min")
    print(f"logs: {job.paths.stdout} (stderr: {job.paths.stderr})")
    print(f"checkpoints: {paths['checkpoints']}")
    print(f"results: {paths['results']}")
    print(f"logger: {paths['logs']}")
    print(f"resume: requeued automatically on preemption/timeout; by hand: the same command with "
          f"--timestamp-id {config['timestamp_id']}")
    print(f"watch: squeue -j {job.job_id}; tail -f {job.paths.stdout}")
    return 0


def _run_shard_metadata(args: argparse.Namespace) -> int:
    from eqv2_plugin.launch.relax_shards import relax_src_from_config, write_shard_metadata

    src = args.src if args.src is not None else relax_src_from_config(args.config_yml)
    out = write_shard_metadata(src, args.shard, args.shards, args.out)
    if out is not None:
        print(out)
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    import numpy as np

    from eqv2_plugin.launch.relax_shards import lmdb_system_ids, merge_relaxed_positions

    expect = lmdb_system_ids(args.relax_src) if args.relax_src else None
    merged = merge_relaxed_positions(args.shards, traj_dir=args.traj_dir, expect_ids=expect)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **merged)
    tmp.replace(args.out)
    print(f"wrote {args.out}: {len(merged['ids'])} systems from {len(args.shards)} shard(s)"
          + (", with energies" if "energy" in merged else ""))
    return 0
