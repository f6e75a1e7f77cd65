"""`eqv2-plugin submit` and the slurm/ templates on a real one-node Slurm cluster (CPU, gloo).

tools/slurm_cluster.sh installs Debian's slurmctld/slurmd/munge if needed and starts them; the
jobs run fairchem with the tiny model of tests/_fairchem_runs.py on the generated data.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _fairchem_runs import TINY_MODEL, deep_update, s2ef_config, write_config
from _slurm import BIN, REPO, parse_keys, restarts, slurm, slurm_cluster, tail, wait_jobs  # noqa: F401

pytestmark = pytest.mark.slow

MODEL = {"name": "eqv2_plugin.EquiformerV2", **TINY_MODEL, "edge_frame": "deterministic"}
STEPS_PER_EPOCH, EPOCHS, CHECKPOINT_EVERY = 48, 3, 6  # 48 training frames, batch 1
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from eqv2_plugin.data import generate_dataset

    out = tmp_path_factory.mktemp("slurm_data") / "data"
    generate_dataset(out, seed=0, workers=2)
    return out


def _submit(cluster: dict, work: Path, config: Path, identifier: str, *extra: str) -> dict:
    proc = subprocess.run(
        [str(BIN / "eqv2-plugin"), "submit", "--config-yml", str(config), "--cpu", "--partition", "debug",
         "--time", "15", "--run-dir", str(work), "--identifier", identifier, "--seed", "1", "--print-every", "1",
         "--signal-delay", "60", *extra],
        capture_output=True, text=True, env=cluster["env"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    keys = parse_keys(proc.stdout)
    return {"stdout": proc.stdout, "job_id": keys["job_id"], "log": Path(keys["logs"].split()[0]),
            "checkpoints": Path(keys["checkpoints"]), "results": Path(keys["results"])}


def _read_checkpoint(path: Path) -> dict | None:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError):
        return None
    return {"step": ckpt["step"], "last_epoch": ckpt["scheduler"]["last_epoch"],
            "lr": ckpt["optimizer"]["param_groups"][0]["lr"]}


def _wait_checkpoint(path: Path, cond, timeout: float, log: Path) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file():
            state = _read_checkpoint(path)
            if state is not None and cond(state):
                return state
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint as expected in {path} after {timeout} s\n{tail(log)}")


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def runs(slurm_cluster, data, tmp_path_factory) -> dict:
    """Two identical trainings: one runs straight through; the other is signalled (USR2, as Slurm
    does before the time limit or on preemption) once it has trained a few steps, requeues itself,
    then is requeued with `scontrol requeue` (killed, no signal handling) in its second attempt."""
    work = tmp_path_factory.mktemp("slurm_runs")
    cfg = s2ef_config(data, MODEL, optim={"batch_size": 1, "max_epochs": EPOCHS, "eval_every": STEPS_PER_EPOCH,
                                          "checkpoint_every": CHECKPOINT_EVERY})
    config = write_config(work / "train.yml", cfg)
    t0 = time.time()
    full = _submit(slurm_cluster, work, config, "full")
    cut = _submit(slurm_cluster, work, config, "cut")
    ckpt = cut["checkpoints"] / "checkpoint.pt"
    seen = {}
    seen["before_signal"] = _wait_checkpoint(ckpt, lambda c: c["step"] >= CHECKPOINT_EVERY, 240, cut["log"])
    slurm(slurm_cluster, "scancel", "--signal=USR2", cut["job_id"])
    _wait_for(lambda: restarts(slurm_cluster, cut["job_id"]) >= 1, 120, "the job to requeue itself after USR2")
    seen["boundary"] = _read_checkpoint(ckpt)  # the next attempt starts >= 10 s later (cred_expire)
    seen["before_requeue"] = _wait_checkpoint(
        ckpt, lambda c: c["step"] >= seen["boundary"]["step"] + CHECKPOINT_EVERY, 240, cut["log"])
    slurm(slurm_cluster, "scontrol", "requeue", cut["job_id"])
    states = wait_jobs(slurm_cluster, [full["job_id"], cut["job_id"]], 400, [full["log"], cut["log"]])
    return {"full": full, "cut": cut, "seen": seen, "states": states, "config": config, "work": work,
            "restarts": restarts(slurm_cluster, cut["job_id"]), "wall_s": time.time() - t0}


def _log(run: dict) -> str:
    """The job's stdout and stderr (every attempt appends to them)."""
    return run["log"].read_text(errors="replace") + run["log"].with_suffix(".err").read_text(errors="replace")


def _lrs(log: str) -> dict[int, str]:
    """Learning rate printed at each step (the last attempt's value for a step logged twice)."""
    return {int(float(s)): lr for lr, s in re.findall(r"lr: ([0-9.e+-]+), epoch: [0-9.e+-]+, step: ([0-9.e+-]+)", log)}


def _final_val(log: str) -> np.ndarray:
    rows = re.findall(r"energy_mae: ([0-9.e+-]+), forces_mae: ([0-9.e+-]+), forces_cosine_similarity: "
                      r"([0-9.e+-]+), energy_forces_within_threshold: [0-9.e+-]+, loss: [0-9.e+-]+, "
                      rf"epoch: {EPOCHS}\.0+", log)
    assert rows, "no validation at the last epoch in the log"
    return np.array(rows[-1], dtype=np.float64)


def test_submitted_cpu_training_completes_and_leaves_its_checkpoint(runs):
    full = runs["full"]
    assert runs["states"][full["job_id"]] == "COMPLETED", tail(full["log"])
    for key in ("job_id", "logs", "checkpoints", "results"):
        assert re.search(rf"^{key}: \S+", full["stdout"], re.M), full["stdout"]
    assert full["log"].is_file()
    final = torch.load(full["checkpoints"] / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert final["step"] == TOTAL_STEPS
    assert (full["checkpoints"] / "best_checkpoint.pt").is_file()
    assert not list(full["checkpoints"].glob(".*partial"))
    assert sorted(_lrs(_log(full))) == list(range(1, TOTAL_STEPS + 1))
    preds = np.load(full["results"] / "s2ef_predictions.npz")
    assert preds["forces"].shape[1] == 3 and np.isfinite(preds["forces"].astype(np.float64)).all()


def test_interrupted_job_resumes_with_the_same_steps_lr_and_metrics(runs):
    full, cut, seen = runs["full"], runs["cut"], runs["seen"]
    assert runs["states"][cut["job_id"]] == "COMPLETED", tail(cut["log"])
    assert runs["restarts"] == 2
    # USR2: checkpoint written at a step boundary, after the scheduler's step (no lag to fix)
    assert seen["before_signal"]["step"] <= seen["boundary"]["step"] < TOTAL_STEPS
    assert seen["boundary"]["last_epoch"] == seen["boundary"]["step"]
    # fairchem's own checkpoint.pt, which the `scontrol requeue`d attempt resumes from, lags by one
    assert seen["before_requeue"]["last_epoch"] == seen["before_requeue"]["step"] - 1
    log = _log(cut)
    assert len(re.findall(r"eqv2-plugin: caught SIGUSR2", log)) == 1
    advanced = [int(s) for s in re.findall(r"scheduler advanced to step (\d+)", log)]
    assert len(advanced) == 1 and seen["before_requeue"]["step"] <= advanced[0] < TOTAL_STEPS, advanced
    assert len(re.findall(r"eqv2-plugin: JobEnvironment", log)) == 3  # three attempts

    a = torch.load(full["checkpoints"] / "checkpoint.pt", map_location="cpu", weights_only=False)
    b = torch.load(cut["checkpoints"] / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert a["step"] == b["step"] == TOTAL_STEPS
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert a["scheduler"]["_last_lr"] == pytest.approx(b["scheduler"]["_last_lr"], rel=1e-12)
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == pytest.approx(
        [g["lr"] for g in b["optimizer"]["param_groups"]], rel=1e-12)
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=1e-5, atol=1e-7, msg=name)
    lr_full, lr_cut = _lrs(_log(full)), _lrs(log)
    assert sorted(lr_cut) == sorted(lr_full) == list(range(1, TOTAL_STEPS + 1))
    assert all(lr_cut[s] == lr_full[s] for s in lr_full), {s: (lr_full[s], lr_cut[s]) for s in lr_full
                                                           if lr_cut[s] != lr_full[s]}
    np.testing.assert_allclose(_final_val(log), _final_val(_log(full)), rtol=1e-3)
    pa, pb = np.load(full["results"] / "s2ef_predictions.npz"), np.load(cut["results"] / "s2ef_predictions.npz")
    assert list(pa["ids"]) == list(pb["ids"])
    np.testing.assert_allclose(pa["forces"].astype(np.float64), pb["forces"].astype(np.float64), atol=2e-3)


def _template(cluster: dict, name: str, env: dict[str, str]) -> dict[str, str]:
    proc = subprocess.run(["bash", str(REPO / "slurm" / name)], capture_output=True, text=True,
                          env={**cluster["env"], **env}, timeout=120, cwd=env.get("RUN_DIR"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return parse_keys(proc.stdout)


CPU_JOB = {"PARTITION": "debug", "GPUS_PER_NODE": "0", "CPUS_PER_TASK": "1", "MEM": "1G", "TIME_LIMIT": "10",
           "FAIRCHEM": str(BIN / "fairchem"), "EQV2_PLUGIN": str(BIN / "eqv2-plugin")}


def test_relaxation_job_array_writes_every_shard_and_the_merged_file(runs, data, slurm_cluster):
    from ase.io import read

    from eqv2_plugin.launch.relax_shards import lmdb_system_ids

    work = runs["work"] / "relax"
    work.mkdir()
    cfg = deep_update(yaml.safe_load(runs["config"].read_text()), {
        "dataset": {"relax": {"src": str(data / "is2re" / "val"), "format": "lmdb"}},
        "task": {"relaxation_steps": 4, "relaxation_fmax": 0.05, "write_pos": True,
                 "relax_opt": {"maxstep": 0.04, "memory": 50, "damping": 1.0, "alpha": 70.0}},
    })
    config = write_config(work / "relax.yml", cfg)
    out = work / "merged.npz"
    keys = _template(slurm_cluster, "relax_array.sh", {
        **CPU_JOB, "CONFIG": str(config), "CHECKPOINT": str(runs["full"]["checkpoints"] / "best_checkpoint.pt"),
        "SHARDS": "2", "RUN_DIR": str(work), "OUT": str(out), "TRAJ_DIR": str(work / "trajs"), "TAG": "relax",
        "RELAX_SRC": str(data / "is2re" / "val")})
    logs = sorted((work / "slurm_logs").glob("*")) if (work / "slurm_logs").exists() else []
    states = wait_jobs(slurm_cluster, [keys["job_id"], keys["merge_job_id"]], 300, logs)
    logs = sorted((work / "slurm_logs").glob("*"))
    assert set(states.values()) == {"COMPLETED"}, (states, [tail(p) for p in logs])
    assert len(states) == 3  # two array tasks and the merge job

    sids = lmdb_system_ids(data / "is2re" / "val")
    shard_ids = []
    for i in range(2):
        shard = np.load(work / "results" / f"relax-shard{i}" / "relaxed_positions.npz")
        shard_ids.append(list(shard["ids"]))
    assert sorted(shard_ids[0] + shard_ids[1]) == sorted(sids) and not set(shard_ids[0]) & set(shard_ids[1])
    assert all(shard_ids)
    merged = np.load(out)
    assert list(merged["ids"]) == sorted(sids)
    blocks = np.split(merged["pos"], merged["chunk_idx"])
    assert len(blocks) == len(sids)
    for sid, block, energy in zip(merged["ids"], blocks, merged["energy"]):
        last = read(work / "trajs" / f"{sid}.traj", index=-1)  # each system's relaxation, last frame
        assert block.shape == (len(last), 3)
        frac = (block - last.positions) @ np.linalg.inv(last.cell.array)  # trajectories wrap into the cell
        np.testing.assert_allclose((frac - np.round(frac)) @ last.cell.array, 0.0, atol=1e-5)
        assert energy == pytest.approx(last.get_potential_energy(), rel=1e-6)


def test_prediction_template_runs_unchanged_with_overridden_variables(runs, data, slurm_cluster):
    work = runs["work"] / "predict"
    work.mkdir()
    keys = _template(slurm_cluster, "predict.sh", {
        **CPU_JOB, "CONFIG": str(runs["config"]), "CHECKPOINT": str(runs["full"]["checkpoints"] / "best_checkpoint.pt"),
        "DATA_ROOT": str(data / "s2ef"), "SPLITS": "test val_ood", "RUN_DIR": str(work), "TAG": "pred"})
    states = wait_jobs(slurm_cluster, [keys["job_id"]], 300)
    logs = sorted((work / "slurm_logs").glob("*"))
    assert sorted(states.values()) == ["COMPLETED", "COMPLETED"], (states, [tail(p) for p in logs])
    out = work / "predictions"
    # the test split predicted from best_checkpoint.pt equals the prediction made during training
    during = np.load(runs["full"]["results"] / "s2ef_predictions.npz")
    test = np.load(out / "test.npz")
    assert list(test["ids"]) == list(during["ids"])
    for key in ("energy", "forces", "chunk_idx"):
        np.testing.assert_allclose(test[key].astype(np.float64), during[key].astype(np.float64), rtol=1e-6, atol=1e-6)
    val_ood = np.load(out / "val_ood.npz")
    assert val_ood["energy"].shape == (len(val_ood["ids"]), 1) and len(val_ood["ids"]) == 12  # 3 systems x 4 frames


def test_single_node_template_runs_fairchem_ranks_inside_the_allocation(runs, slurm_cluster):
    """train_single_node.sh with GPUS_PER_NODE=0: `fairchem --num-gpus 2 --cpu` (gloo) in the job."""
    work = runs["work"] / "single_node"
    work.mkdir()
    keys = _template(slurm_cluster, "train_single_node.sh", {
        **CPU_JOB, "CPUS_PER_TASK": "2", "RANKS": "2", "CONFIG": str(runs["config"]), "RUN_DIR": str(work),
        "IDENTIFIER": "ddp", "EXTRA_ARGS": "--seed 1 --print-every 1 --optim.max_epochs=1 --optim.batch_size=4 "
                                          "--optim.eval_every=6 --optim.checkpoint_every=6 "
                                          "--optim.scheduler_params.warmup_epochs=0.5"})
    log = Path(keys["log"])
    states = wait_jobs(slurm_cluster, [keys["job_id"]], 300, [log])
    assert states == {keys["job_id"]: "COMPLETED"}, tail(log)
    ckpt = torch.load(Path(keys["checkpoints"]) / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 6  # 48 frames / (2 ranks x 4)
    assert "Running in local mode with 2 ranks" in log.read_text()


def test_wrong_partition_is_named_with_the_fix(slurm_cluster, tmp_path):
    config = write_config(tmp_path / "c.yml", {"trainer": "equiformerv2_forces"})
    proc = subprocess.run([str(BIN / "eqv2-plugin"), "submit", "--config-yml", str(config), "--cpu",
                           "--partition", "gpu_nonexistent", "--run-dir", str(tmp_path)],
                          capture_output=True, text=True, env=slurm_cluster["env"], timeout=120)
    assert proc.returncode == 2
    assert "gpu_nonexistent" in proc.stderr and "debug" in proc.stderr and "--partition" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_sbatch_says_so(tmp_path):
    config = write_config(tmp_path / "c.yml", {"trainer": "equiformerv2_forces"})
    proc = subprocess.run([str(BIN / "eqv2-plugin"), "submit", "--config-yml", str(config), "--cpu"],
                          capture_output=True, text=True, env={"PATH": str(BIN), "HOME": str(tmp_path)}, timeout=120)
    assert proc.returncode == 2
    assert "`sbatch`" in proc.stderr and "not found on PATH" in proc.stderr and "Traceback" not in proc.stderr


def test_gpu_request_on_a_cpu_only_cluster_is_refused_with_the_fix(slurm_cluster, tmp_path):
    config = write_config(tmp_path / "c.yml", {"trainer": "equiformerv2_forces", "optim": {"num_workers": 0}})
    proc = subprocess.run([str(BIN / "eqv2-plugin"), "submit", "--config-yml", str(config), "--partition", "debug",
                           "--gpus-per-node", "1", "--time", "5", "--run-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, env=slurm_cluster["env"], timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("eqv2-plugin submit: error: 1 GPU(s) per node") and "--cpu" in message, proc.stderr
    assert not any((tmp_path / "runs" / "checkpoints").iterdir())  # no run folder left behind


def test_scheduler_alignment_steps_only_a_lagging_scheduler():
    """On fairchem's own cosine scheduler: a state saved before scheduler.step() is advanced to
    the uninterrupted run's learning rate; a consistent state is left alone."""
    from types import SimpleNamespace

    from fairchem.core.models.equiformer_v2.trainers.lr_scheduler import LRScheduler

    from eqv2_plugin.launch.job import align_scheduler_with_step

    optim = {"scheduler": "LambdaLR", "scheduler_params": {"lambda_type": "cosine", "warmup_factor": 0.2,
                                                           "warmup_epochs": 2, "epochs": 20, "lr_min_factor": 0.01}}

    def trainer_at(step: int, lagging: bool) -> SimpleNamespace:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
        sched = LRScheduler(opt, optim)
        for _ in range(step - 1 if lagging else step):
            opt.step()
            sched.step()
        return SimpleNamespace(scheduler=sched, step=step)

    for step in (1, 5, 19):
        reference = trainer_at(step, lagging=False)
        lagging = trainer_at(step, lagging=True)
        assert lagging.scheduler.get_lr() != pytest.approx(reference.scheduler.get_lr())
        assert align_scheduler_with_step(lagging) is True
        assert lagging.scheduler.get_lr() == reference.scheduler.get_lr()
        assert lagging.scheduler.scheduler.last_epoch == step
        assert align_scheduler_with_step(reference) is False
        assert align_scheduler_with_step(lagging) is False  # idempotent
    assert align_scheduler_with_step(trainer_at(0, lagging=False)) is False


def test_time_limits_parse_like_slurm():
    from eqv2_plugin.errors import UserInputError
    from eqv2_plugin.launch.submit import parse_time

    assert [parse_time(t) for t in ("90", "01:30:00", "1-00:00:00", "2-12", "10:30", "00:00:01")] == \
        [90, 90, 1440, 3600, 11, 1]
    for bad in ("", "1h", "0", "00:00:00"):
        with pytest.raises(UserInputError):
            parse_time(bad)
