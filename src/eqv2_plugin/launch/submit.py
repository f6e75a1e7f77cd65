"""``eqv2-plugin submit``: build the fairchem config here, run it as a requeueable Slurm job.

The config is built with fairchem's own ``build_config`` (``includes:``, ``--a.b=c`` overrides),
given a timestamp id now (so the run's folders are known before the job starts and stay the same
across requeues) and pickled by submitit together with :class:`~eqv2_plugin.launch.job.FairchemJob`.
The job runs with this interpreter (``sys.executable``), so the environment that runs
``eqv2-plugin submit`` must exist on the compute nodes with eqv2-plugin installed in it.
"""
from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqv2_plugin.errors import UserInputError

MODES = ("train", "predict", "validate", "run-relaxations")


@dataclass
class SlurmRequest:
    """What to ask Slurm for. ``gpus_per_node == 0`` means CPU nodes (gloo backend)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int | None = None  # default: one per GPU, or 1 on CPU nodes
    cpus_per_task: int | None = None  # default: optim.num_workers + 1
    mem_gb: float | None = None
    max_requeues: int = 3
    signal_delay_s: int = 120
    constraint: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)


def parse_time(text: str) -> int:
    """Slurm time limit in minutes from ``MIN``, ``HH:MM:SS``, ``MM:SS`` or ``D-HH[:MM[:SS]]``."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise UserInputError(f"--time {text!r}: give minutes (90) or HH:MM:SS (01:30:00) or D-HH:MM:SS")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is None and b is None:
        minutes = a
    elif days is None and c is None:  # MM:SS
        minutes = a + (b > 0)
    else:
        hours = a + 24 * (days or 0)
        minutes = hours * 60 + (b or 0) + ((c or 0) > 0)
    if minutes < 1:
        raise UserInputError(f"--time {text!r}: Slurm's smallest time limit is 1 minute")
    return minutes


def check_slurm(partition: str | None) -> list[str]:
    """Fail with a clear message if Slurm's client commands or the partition are missing.

    Returns the partitions ``sinfo`` lists (empty if ``sinfo`` could not answer).
    """
    missing = [exe for exe in ("sbatch", "srun", "scontrol") if shutil.which(exe) is None]
    if missing:
        raise UserInputError(
            f"{' and '.join(f'`{m}`' for m in missing)} not found on PATH: `eqv2-plugin submit` must run "
            "where Slurm's client commands work (a login node; `module load slurm` on clusters with "
            "modules). To train without Slurm, run fairchem directly: "
            "fairchem --mode train --config-yml CONFIG [--cpu] [--num-gpus N]")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    partitions = sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})
    if partition is not None and partitions and partition not in partitions:
        raise UserInputError(
            f"partition {partition!r} does not exist on this cluster (sinfo lists: {', '.join(partitions)}); "
            "pass one of them with --partition, or leave --partition out for the cluster's default")
    return partitions


def new_timestamp_id(identifier: str) -> str:
    """A run id like fairchem's (``YYYY-mm-dd-HH-MM-SS[-identifier]``), made at submission."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    return f"{stamp}-{identifier}" if identifier else stamp


def build_fairchem_config(
    config_yml: Path, mode: str, run_dir: Path, identifier: str, request: SlurmRequest, *,
    cpu: bool, timestamp_id: str | None = None, checkpoint: str | None = None, seed: int = 0,
    print_every: int = 10, amp: bool = False, overrides: list[str] | None = None,
) -> dict[str, Any]:
    """The config fairchem's CLI would build for these flags, with a fixed timestamp id."""
    if not config_yml.is_file():
        raise UserInputError(f"--config-yml {config_yml}: no such file")
    if mode not in MODES:
        raise UserInputError(f"--mode {mode!r}: one of {', '.join(MODES)}")
    if mode != "train" and not checkpoint:
        raise UserInputError(f"--mode {mode} needs --checkpoint (the trained model's best_checkpoint.pt)")
    if checkpoint and not Path(checkpoint).exists():
        raise UserInputError(f"--checkpoint {checkpoint}: no such file")
    bad = [o for o in overrides or [] if not (o.startswith("--") and "=" in o)]
    if bad:
        raise UserInputError(f"config overrides must look like --optim.max_epochs=2, got {bad}")

    from fairchem.core.common.flags import flags
    from fairchem.core.common.utils import build_config

    argv = ["--mode", mode, "--config-yml", str(config_yml), "--run-dir", str(run_dir),
            "--identifier", identifier, "--seed", str(seed), "--print-every", str(print_every),
            "--num-gpus", str(request.ranks_per_node), "--num-nodes", str(request.nodes)]
    argv += ["--cpu"] if cpu else []
    argv += ["--amp"] if amp else []
    argv += ["--checkpoint", str(Path(checkpoint).absolute())] if checkpoint else []
    args, _ = flags.get_parser().parse_known_args(argv)
    try:
        config = build_config(args, list(overrides or []))
    except (ValueError, KeyError) as exc:
        raise UserInputError(f"--config-yml {config_yml}: {exc}") from exc
    if timestamp_id is None:  # claim a new run folder now (two submissions in the same second)
        base = new_timestamp_id(identifier)
        for n in range(1, 1000):
            timestamp_id = base if n == 1 else f"{base}-{n}"
            try:
                (run_dir / "checkpoints" / timestamp_id).mkdir(parents=True)
                break
            except FileExistsError:
                continue
        else:
            raise UserInputError(f"--run-dir {run_dir}: could not claim a new run folder for {base}")
    config["timestamp_id"] = timestamp_id
    config["run_dir"] = str(run_dir.absolute())
    config["slurm"] = {}
    return config


def _translate_sbatch_error(message: str, request: SlurmRequest) -> UserInputError:
    text = message.strip().splitlines()
    reason = next((line for line in reversed(text) if "error" in line.lower()), text[-1] if text else message)
    reason = re.sub(r"^(sbatch: )?error: (Batch job submission failed: )?", "", reason.strip())
    low = reason.lower()
    if "partition" in low and request.partition:
        hint = f"partition {request.partition!r}: {reason} (list partitions with `sinfo -s`; fix --partition)"
    elif "account" in low:
        hint = f"account {request.account!r}: {reason} (your accounts: `sacctmgr show assoc user=$USER`; fix --account)"
    elif "qos" in low:
        hint = f"qos {request.qos!r}: {reason} (fix --qos)"
    elif "time limit" in low:
        hint = f"time limit {request.time_min} min: {reason} (`sinfo -o '%P %l'` shows each partition's limit; fix --time)"
    elif "gres" in low or "gpu" in low:
        hint = f"{request.gpus_per_node} GPU(s) per node: {reason} (is it a GPU partition? use --cpu for CPU nodes)"
    else:
        hint = f"sbatch refused the job: {reason}"
    return UserInputError(hint)


def submit(config: dict[str, Any], request: SlurmRequest, logdir: Path) -> Any:
    """Submit ``config`` as a :class:`FairchemJob`; return the submitit job."""
    import submitit
    from submitit.core.utils import FailedJobError

    from eqv2_plugin.launch.job import FairchemJob

    executor = submitit.SlurmExecutor(folder=logdir / "%j", max_num_timeout=request.max_requeues,
                                      python=sys.executable)
    params: dict[str, Any] = dict(
        job_name=f"eqv2-{config['identifier'] or config['mode']}", time=request.time_min, nodes=request.nodes,
        ntasks_per_node=request.ranks_per_node,
        cpus_per_task=request.cpus_per_task or int(config.get("optim", {}).get("num_workers", 0)) + 1,
        signal_delay_s=request.signal_delay_s,
    )
    if request.gpus_per_node > 0:
        params["gpus_per_node"] = request.gpus_per_node
    for key, value in (("partition", request.partition), ("account", request.account), ("qos", request.qos),
                       ("constraint", request.constraint)):
        if value:
            params[key] = value
    if request.mem_gb:
        params["mem"] = f"{int(request.mem_gb * 1024)}MB"
    if request.extra:
        params["additional_parameters"] = dict(request.extra)
    executor.update_parameters(**params)
    job = FairchemJob(config, grace_s=min(60.0, request.signal_delay_s / 2))
    try:
        return executor.submit(job)
    except FailedJobError as exc:
        raise _translate_sbatch_error(str(exc), request) from exc
