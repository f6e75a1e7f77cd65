"""What runs inside a Slurm job started by ``eqv2-plugin submit``.

:class:`FairchemJob` is a submitit :class:`~submitit.helpers.Checkpointable` that runs one
fairchem task (train, predict, validate, run-relaxations) through fairchem's own
``new_trainer_context`` / ``task.setup`` / ``task.run``, with four differences from fairchem's
``--submit`` runner:

* distributed set-up goes through ``torch.distributed``'s ``env://`` rendezvous with the
  config's backend (``gloo`` for ``--cpu``, ``nccl`` otherwise), so CPU nodes work; fairchem's
  SLURM branch hard-codes NCCL and ``torch.cuda.set_device``;
* a training job resumes from its own run's ``checkpoint.pt`` when one exists (requeue after
  preemption, timeout, node failure or ``scontrol requeue``), in preference to a ``--checkpoint``
  it was started from;
* after loading a checkpoint the learning-rate scheduler is put back in step with the step count
  (:func:`align_scheduler_with_step`): fairchem 1.10 writes ``checkpoint.pt`` before its
  ``scheduler.step()``, so a plain resume runs the schedule one step behind;
* on the preemption/timeout signal the checkpoint is written at the next step boundary (the
  signal only sets a flag), so weights, optimizer, EMA, step and scheduler all describe the same
  completed step; fairchem's runner saves inside the signal handler, possibly mid-step.

This module imports fairchem only inside the job.
"""
from __future__ import annotations

import copy
import logging
import os
import signal
import socket
import threading
import warnings
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

log = logging.getLogger(__name__)


def run_paths(config: dict[str, Any]) -> dict[str, Path]:
    """Folders of a fairchem run: ``checkpoints``, ``results`` and ``logs`` for its timestamp id."""
    run_dir = Path(config.get("run_dir") or ".").absolute()
    tid = config["timestamp_id"]
    logger = config.get("logger", "wandb")
    logger_name = logger if isinstance(logger, str) else logger.get("name", "wandb")
    return {
        "checkpoints": run_dir / "checkpoints" / tid,
        "results": run_dir / "results" / tid,
        "logs": run_dir / "logs" / logger_name / tid,
    }


def align_scheduler_with_step(trainer: Any) -> bool:
    """Step the LR scheduler once if it lags the trainer's step count; return whether it did.

    In a consistent training state a per-step scheduler has been stepped once per completed
    optimizer step (``last_epoch == step``). fairchem 1.10 saves ``checkpoint.pt`` inside the
    training loop after the optimizer step but before ``scheduler.step()``, so the loaded state has
    ``last_epoch == step - 1`` and the resumed run would use every learning rate one step late.
    ``ReduceLROnPlateau`` (stepped on validation metrics) and ``Null`` are left alone.
    """
    wrapper = getattr(trainer, "scheduler", None)
    kind = getattr(wrapper, "scheduler_type", "Null")
    if wrapper is None or kind in ("Null", "ReduceLROnPlateau"):
        return False
    scheduler = wrapper.scheduler
    step = int(getattr(trainer, "step", 0))
    if step > 0 and scheduler.last_epoch == step - 1:
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        log.info("eqv2-plugin: scheduler advanced to step %d (checkpoint was written before its step); lr %.6e",
                 step, wrapper.get_lr())
        return True
    return False


def make_saves_atomic(trainer: Any) -> None:
    """Write the trainer's ``.pt`` checkpoints to a temporary name and rename them into place.

    fairchem's ``save_checkpoint`` writes ``checkpoint.pt`` in place, so a job killed while saving
    (``scontrol requeue``, node failure, time limit) leaves a truncated file that the next attempt
    cannot load. With a rename, ``checkpoint.pt`` is always the previous or the new complete file.
    """
    original = trainer.save

    def save(metrics: Any = None, checkpoint_file: str = "checkpoint.pt", training_state: bool = True) -> Any:
        if not checkpoint_file.endswith(".pt"):
            return original(metrics=metrics, checkpoint_file=checkpoint_file, training_state=training_state)
        # per process: a previous attempt that Slurm has not finished killing may still be saving
        partial = original(metrics=metrics, checkpoint_file=f".{checkpoint_file}.{os.getpid()}.partial",
                           training_state=training_state)
        if partial is None:  # not rank 0, or debug mode
            return None
        final = os.path.join(os.path.dirname(partial), checkpoint_file)
        os.replace(partial, final)
        return final

    trainer.save = save


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def set_rank_environment(config: dict[str, Any], env: submitit.JobEnvironment) -> None:
    """Export ``MASTER_ADDR/PORT``, ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` for this Slurm task.

    fairchem's local branch of ``distutils.setup`` then joins the process group with the
    config's ``distributed_backend`` through the ``env://`` rendezvous.
    """
    world = env.num_tasks
    if world != config["world_size"]:
        raise RuntimeError(
            f"the job has {world} Slurm tasks but the run expects world_size={config['world_size']} "
            "(nodes x tasks per node); was it resubmitted with other --nodes/--ntasks?")
    job_id = os.environ.get("SLURM_JOB_ID", "0")
    port = _free_port() if world == 1 else 20000 + int(job_id) % 20000
    os.environ.update({
        "MASTER_ADDR": env.hostnames[0], "MASTER_PORT": str(port), "RANK": str(env.global_rank),
        "LOCAL_RANK": str(env.local_rank), "WORLD_SIZE": str(world),
    })
    config["submit"] = False  # fairchem's own SLURM branch would force NCCL
    if not config.get("cpu"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                f"no GPU is visible on {socket.gethostname()} (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}) but the run uses the NCCL backend: "
                "submit with --cpu for CPU nodes, or ask the partition for GPUs with --gpus-per-node")
    elif os.environ.get("SLURM_CPUS_PER_TASK"):
        import torch

        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))


class FairchemJob(Checkpointable):
    """One fairchem run as a requeueable submitit job.

    ``config`` is a fairchem config as ``fairchem.core.common.utils.build_config`` returns it,
    with a fixed ``timestamp_id`` (so every attempt uses the same run folders).
    ``grace_s``: how long to wait for a step boundary after the preemption/timeout signal
    before checkpointing from the last ``checkpoint.pt`` on disk instead.
    """

    def __init__(self, config: dict[str, Any], grace_s: float = 45.0) -> None:
        if not config.get("timestamp_id"):
            raise ValueError("FairchemJob needs a fixed config['timestamp_id']")
        self.config = config
        self.grace_s = grace_s
        self._trainer: Any = None
        self._pending: tuple[int, Any] | None = None
        self._fallback_due = False
        self._timer: threading.Timer | None = None
        self._boundary_checkpoint: str | None = None

    # ------------------------------------------------------------------ job body
    def __call__(self) -> str:
        from fairchem.core.common.utils import new_trainer_context, setup_logging

        setup_logging()
        env = submitit.JobEnvironment()
        config = copy.deepcopy(self.config)
        set_rank_environment(config, env)
        own = run_paths(config)["checkpoints"] / "checkpoint.pt"
        if config["mode"] == "train" and own.is_file():
            # a requeued attempt continues its own run, not the checkpoint it was started from
            config["checkpoint"] = str(own)
        logging.info("eqv2-plugin: %s, %s, checkpoint %s", env, config["mode"], config.get("checkpoint"))
        with new_trainer_context(config=config) as ctx:
            self._trainer = ctx.trainer
            make_saves_atomic(ctx.trainer)
            ctx.task.setup(ctx.trainer)
            if config["mode"] == "train":
                align_scheduler_with_step(ctx.trainer)
                if env.global_rank == 0:
                    self._defer_preemption_signal(env)
                    self._hook_step_boundary(ctx.trainer)
            ctx.task.run()
        return str(run_paths(config)["checkpoints"])

    # ------------------------------------------------------------------ preemption / timeout
    def _defer_preemption_signal(self, env: submitit.JobEnvironment) -> None:
        """Replace submitit's USR2 handler by one that checkpoints at the next step boundary."""
        signum = getattr(signal, "SIG" + type(env).USR_SIG)
        submitit_handler = signal.getsignal(signum)
        if not callable(submitit_handler):  # not started by submitit's process_job
            return

        def on_signal(sig: int, frame: Any) -> None:
            if self._fallback_due:  # no step boundary in time: let submitit checkpoint now
                submitit_handler(sig, frame)
                return
            if self._pending is None:
                logging.warning("eqv2-plugin: caught %s; checkpointing at the end of the current step",
                                signal.Signals(sig).name)
                self._pending = (sig, submitit_handler)
                self._timer = threading.Timer(self.grace_s, self._fallback, args=(sig,))
                self._timer.daemon = True
                self._timer.start()

        signal.signal(signum, on_signal)

    def _fallback(self, sig: int) -> None:
        logging.warning("eqv2-plugin: no step boundary within %.0f s of the signal; requeueing from the "
                        "last checkpoint.pt", self.grace_s)
        self._fallback_due = True
        os.kill(os.getpid(), sig)

    def _hook_step_boundary(self, trainer: Any) -> None:
        """Call :meth:`_at_boundary` when the training loop starts a step (``model.train()``)."""
        model = trainer.model
        original = model.train

        def train(mode: bool = True) -> Any:
            out = original(mode)
            if mode and self._pending is not None and not self._fallback_due:
                self._at_boundary(trainer)
            return out

        model.train = train  # instance attribute; eval() goes through it with mode=False

    def _at_boundary(self, trainer: Any) -> None:
        """The loop has just set ``trainer.step`` to the next step: save the completed one, requeue."""
        assert self._pending is not None
        sig, submitit_handler = self._pending
        if self._timer is not None:
            self._timer.cancel()
        step, epoch = trainer.step, trainer.epoch
        trainer.step = step - 1
        trainer.epoch = (step - 1) / len(trainer.train_loader)
        try:
            self._boundary_checkpoint = trainer.save(checkpoint_file="checkpoint.pt", training_state=True)
        finally:
            trainer.step, trainer.epoch = step, epoch
        logging.warning("eqv2-plugin: checkpoint at step %d written to %s", step - 1, self._boundary_checkpoint)
        submitit_handler(sig, None)  # submitit: self.checkpoint(), scontrol requeue, exit

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on preemption/timeout: the same run, resuming from its checkpoint."""
        config = copy.deepcopy(self.config)
        own = run_paths(config)["checkpoints"] / "checkpoint.pt"
        if config["mode"] == "train":
            if self._boundary_checkpoint:
                config["checkpoint"] = self._boundary_checkpoint
            elif own.is_file():
                config["checkpoint"] = str(own)
        if self._trainer is not None and getattr(self._trainer, "logger", None) is not None:
            self._trainer.logger.mark_preempting()
        logging.warning("eqv2-plugin: requeueing %s, resuming from %s", config["timestamp_id"], config.get("checkpoint"))
        return DelayedSubmission(FairchemJob(config, grace_s=self.grace_s))
