"""The one-node Slurm cluster of tools/slurm_cluster.sh, for tests/test_slurm.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "slurm_cluster.sh"
BIN = Path(sys.executable).parent  # fairchem, eqv2-plugin of the test environment
SKIP_VAR = "EQV2_SKIP_SLURM"


def _cluster_env(conf: str) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": conf, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the test cluster (installing Debian's packages if needed); stop it afterwards.

    Never skipped silently: if it cannot start, the tests that use it fail with the reason.
    ``EQV2_SKIP_SLURM=1`` skips them, loudly.
    """
    if os.environ.get(SKIP_VAR) == "1":
        message = (f"{SKIP_VAR}=1: the Slurm tests are SKIPPED. They need a one-node Slurm cluster that "
                   "tools/slurm_cluster.sh installs (apt) and starts as root.")
        sys.stderr.write(f"\n{'!' * 80}\n{message}\n{'!' * 80}\n")
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    dir_ = os.environ.get("EQV2_SLURM_DIR", "/tmp/eqv2-slurm")
    conf = f"{dir_}/slurm.conf"
    was_running = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0
    t0 = time.time()
    proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        pytest.fail(f"the Slurm test cluster did not start (tools/slurm_cluster.sh start, rc {proc.returncode}); "
                    f"set {SKIP_VAR}=1 to skip these tests.\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    info = {"conf": conf, "env": _cluster_env(conf), "start_s": time.time() - t0, "log": proc.stdout + proc.stderr}
    sys.stderr.write(f"\nslurm test cluster: {proc.stdout.strip()} {proc.stderr.strip()} "
                     f"({info['start_s']:.1f} s)\n")
    yield info
    if not was_running:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)


def slurm(cluster: dict, *args: str, check: bool = True) -> str:
    """Run a Slurm client command against the test cluster; return its stdout."""
    proc = subprocess.run(list(args), capture_output=True, text=True, env=cluster["env"], timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def job_states(cluster: dict, job_id: str) -> dict[str, str]:
    """``{job id (array tasks as ID_i): state}`` from ``scontrol show job``."""
    out = slurm(cluster, "scontrol", "-o", "show", "job", job_id, check=False)
    states = {}
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobState" not in fields:
            continue
        key = fields["JobId"]
        if fields.get("ArrayTaskId") not in (None, "N/A"):
            key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
        states[key] = fields["JobState"]
    return states


def restarts(cluster: dict, job_id: str) -> int:
    out = slurm(cluster, "scontrol", "-o", "show", "job", job_id)
    return int(dict(f.split("=", 1) for f in out.split() if "=" in f)["Restarts"])


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}


def wait_jobs(cluster: dict, job_ids: list[str], timeout: float, logs: list[Path] = ()) -> dict[str, str]:
    """Wait until every job (and array task) has ended; return their states."""
    deadline = time.time() + timeout
    while True:
        states: dict[str, str] = {}
        for job_id in job_ids:
            states.update(job_states(cluster, job_id))
        if states and all(s in FINAL for s in states.values()):
            return states
        if time.time() > deadline:
            tails = "\n".join(f"--- {p}\n{tail(p)}" for p in logs)
            raise AssertionError(f"jobs {job_ids} not done after {timeout:.0f} s: {states}\n{tails}")
        time.sleep(0.5)


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"({exc})"


def parse_keys(stdout: str) -> dict[str, str]:
    """``key: value`` lines printed by eqv2-plugin submit and the slurm/ templates."""
    out = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep and " " not in key:
            out[key] = value.strip()
    return out
