"""Running fairchem's own CLI (`fairchem --mode ...`) on small configs in subprocesses."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

# a model small enough that a training step takes well under a second on 2 cores
TINY_MODEL = dict(
    use_pbc=True, regress_forces=True, otf_graph=True, max_neighbors=12, max_radius=5.0, max_num_elements=90,
    num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4,
    attn_value_channels=4, ffn_hidden_channels=8, norm_type="layer_norm_sh", lmax_list=[2], mmax_list=[1],
    grid_resolution=None, edge_channels=8, use_grid_mlp=True, use_sep_s2_act=True, alpha_drop=0.0,
    drop_path_rate=0.0, weight_init="uniform",
)

S2EF_OUTPUTS = {
    "energy": {"shape": 1, "level": "system"},
    "forces": {"irrep_dim": 1, "level": "atom", "train_on_free_atoms": True, "eval_on_free_atoms": True},
}


def s2ef_config(data: Path, model: dict, **overrides) -> dict:
    cfg = {
        "trainer": "equiformerv2_forces",
        "logger": "tensorboard",
        "dataset": {
            "train": {
                "format": "lmdb",
                "src": str(data / "s2ef" / "train"),
                "transforms": {
                    "normalizer": {
                        "energy": {"mean": 10.0, "stdev": 3.0},
                        "forces": {"mean": 0.0, "stdev": 3.0},
                    }
                },
            },
            "val": {"src": str(data / "s2ef" / "val_id")},
            "test": {"src": str(data / "s2ef" / "test")},
        },
        "outputs": S2EF_OUTPUTS,
        "loss_functions": [
            {"energy": {"fn": "mae", "coefficient": 1}},
            {"forces": {"fn": "l2mae", "coefficient": 10}},
        ],
        "evaluation_metrics": {
            "metrics": {"energy": ["mae"], "forces": ["mae", "cosine_similarity"], "misc": ["energy_forces_within_threshold"]},
            "primary_metric": "forces_mae",
        },
        "model": model,
        "optim": {
            "batch_size": 4, "eval_batch_size": 4, "num_workers": 0, "lr_initial": 1e-3, "optimizer": "AdamW",
            "optimizer_params": {"weight_decay": 1e-3}, "scheduler": "LambdaLR",
            "scheduler_params": {"lambda_type": "cosine", "warmup_factor": 0.2, "warmup_epochs": 0.1, "lr_min_factor": 0.01},
            "max_epochs": 1, "eval_every": 6, "clip_grad_norm": 100, "ema_decay": 0.999,
        },
    }
    return deep_update(cfg, overrides)


def deep_update(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# fairchem's local multi-rank mode (`--num-gpus N`) rendezvous on this fixed port (torch elastic's default)
RENDEZVOUS_PORT = 29400


def run_fairchem(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``fairchem ARGS`` with this interpreter.

    Several local ranks get ``OMP_NUM_THREADS`` = cores / ranks (as torchrun sets it; fairchem's launcher
    does not) and start only once no other job holds the rendezvous port. A run past ``timeout`` is
    stopped with SIGABRT, so every process of it prints its Python stacks (faulthandler), and the
    error carries the log tails.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", "WANDB_MODE": "offline"}
    ranks = int(args[args.index("--num-gpus") + 1]) if "--num-gpus" in args else 1
    if ranks > 1:
        full_env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // ranks)))
        _wait_until_port_is_free(RENDEZVOUS_PORT, 300)
    full_env.update(env or {})
    exe = Path(sys.executable).with_name("fairchem")
    proc = subprocess.Popen([str(exe), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        raise AssertionError(f"fairchem {' '.join(args)} still running after {timeout} s; stopped with SIGABRT "
                             f"(Python stacks of every process at the end of stderr):\n"
                             f"{out[-3000:]}\n{err[-12000:]}") from None
    finally:
        _signal_group(proc.pid, signal.SIGKILL)  # no rank outlives its test
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the whole group has exited
        pass


def _wait_until_port_is_free(port: int, patience_s: float) -> None:
    """Another local multi-rank run on this machine holds the port: our ranks would join its store and
    fail when it ends. Wait for it (then go on regardless: the run will say what went wrong)."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", port))
                return
            except OSError:
                pass
        time.sleep(2)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise AssertionError(f"fairchem failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_dir_files(run_dir: Path, identifier: str) -> dict[str, Path]:
    """checkpoint / results folders of the run whose timestamp id ends with ``identifier``."""
    ckpt = next(p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(identifier))
    results = run_dir / "results" / ckpt.name
    return {"checkpoints": ckpt, "results": results, "timestamp_id": ckpt.name}
