"""``eqv2-plugin predict-splits``: fairchem's own CLI once per test split, outputs in one layout.

For every split, in a subprocess (the same ``fairchem`` a user would type)::

    fairchem --mode predict --config-yml CFG --checkpoint CKPT --run-dir OUT/runs \\
        --identifier <task>-<split>-<token> --dataset.test.src=<split LMDB> [extra fairchem args]
    fairchem --mode run-relaxations ... --dataset.relax.src=<split LMDB> \\
        --task.write_pos=True --task.relax_opt.traj_dir=OUT/is2re/<split>

and the results land in the layout ``submission --predictions OUT`` reads:

    OUT/s2ef/<split>.npz        s2ef_predictions.npz   (--mode predict, S2EF model)
    OUT/is2re/<split>.npz       is2re_predictions.npz  (--mode predict --task is2re, IS2RE-direct model)
    OUT/is2re/<split>/<sid>.traj                       (--mode run-relaxations: IS2RE, last frames)
    OUT/is2rs/<split>.npz       relaxed_positions.npz  (--mode run-relaxations: IS2RS)
    OUT/logs/<identifier>.log   each fairchem run's output; OUT/runs/ its run folder

fairchem skips a relaxation batch whose trajectories already exist (and then leaves those
systems out of ``relaxed_positions.npz``), so a split's trajectory folder must start empty:
existing outputs are replaced only with ``overwrite``.  Every run gets a unique identifier
(fairchem's timestamp ids are quantised to 128 s, and a run that shares one resumes the other).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Callable, Mapping, Sequence

from eqv2_plugin.errors import UserInputError

RESULT_FILES = {"predict": "*_predictions.npz", "run-relaxations": "relaxed_positions.npz"}


def fairchem_executable() -> str:
    """The ``fairchem`` console script of this environment."""
    beside = Path(sys.executable).with_name("fairchem")
    if beside.is_file():
        return str(beside)
    found = shutil.which("fairchem")
    if found is None:
        raise UserInputError("cannot find the `fairchem` command; install fairchem-core 1.10 in this environment")
    return found


def outputs_for(out: Path, mode: str, task: str, split: str) -> dict[str, Path]:
    """Where ``predict-splits`` leaves one split's results."""
    if mode == "run-relaxations":
        return {"is2rs": out / "is2rs" / f"{split}.npz", "is2re": out / "is2re" / split}
    return {task: out / task / f"{split}.npz"}


def _run(args: list[str], log: Path, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.run(args, stdout=fh, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise UserInputError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")


def predict_splits(
    mode: str,
    config: Path,
    checkpoint: Path,
    splits: Mapping[str, Path],
    out: Path,
    task: str = "s2ef",
    fairchem_args: Sequence[str] = (),
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Path]]:
    """Run ``fairchem --mode {mode}`` on every split; return ``{split: {task: output path}}``.

    ``mode`` is ``predict`` (``task`` names the output folder: ``s2ef`` or ``is2re``) or
    ``run-relaxations`` (IS2RE trajectories and IS2RS positions).  ``fairchem_args`` are passed
    on unchanged (``--cpu``, ``--num-gpus 4``, ``--amp``, ``--optim.eval_batch_size=8`` ...).
    """
    if mode not in RESULT_FILES:
        raise UserInputError(f"--mode: choose predict or run-relaxations, got {mode!r}")
    for flag, path in (("--config-yml", config), ("--checkpoint", checkpoint)):
        if not Path(path).is_file():
            raise UserInputError(f"{flag}: {path} is not a file")
    out = Path(out).expanduser().resolve()
    planned = {split: outputs_for(out, mode, task, split) for split in splits}
    existing = [p for paths in planned.values() for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise UserInputError(
            f"--out: {existing[0]} exists (fairchem would skip relaxations whose trajectories exist); "
            "pass --overwrite to replace the outputs of these splits, or choose another folder"
        )
    exe = fairchem_executable()
    results: dict[str, dict[str, Path]] = {}
    for split, src in splits.items():
        for path in planned[split].values():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        ident = f"{'relax' if mode == 'run-relaxations' else task}-{split}-{uuid.uuid4().hex[:8]}"
        args = [exe, "--mode", mode, "--config-yml", str(Path(config).resolve()), "--checkpoint",
                str(Path(checkpoint).resolve()), "--run-dir", str(out / "runs"), "--identifier", ident]
        if mode == "predict":
            args.append(f"--dataset.test.src={Path(src).resolve()}")
        else:
            args += [f"--dataset.relax.src={Path(src).resolve()}", "--task.write_pos=True",
                     f"--task.relax_opt.traj_dir={planned[split]['is2re']}"]
        args += list(fairchem_args)
        if progress is not None:
            progress(f"{split}: fairchem --mode {mode} on {src}")
        log = out / "logs" / f"{ident}.log"
        _run(args, log, f"fairchem --mode {mode} on split {split!r}")
        found = sorted((out / "runs" / "results").glob(f"*{ident}/{RESULT_FILES[mode]}"))
        if not found:
            raise UserInputError(
                f"fairchem --mode {mode} on split {split!r} wrote no {RESULT_FILES[mode]} under {out / 'runs' / 'results'} "
                f"(log: {log}). For predictions the config needs a trainer that writes them (e.g. equiformerv2_forces)"
            )
        target = planned[split]["is2rs" if mode == "run-relaxations" else task]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[0], target)
        if mode == "run-relaxations" and not planned[split]["is2re"].is_dir():
            raise UserInputError(f"fairchem wrote no trajectories for split {split!r} into {planned[split]['is2re']} (log: {log})")
        results[split] = planned[split]
    return results
