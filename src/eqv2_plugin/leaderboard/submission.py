"""``eqv2-plugin submission``: one EvalAI file from the per-split prediction files.

Inputs per split (what fairchem 1.10 writes; see ``formats`` for the output):

* S2EF: ``s2ef_predictions.npz`` of ``fairchem --mode predict`` (``ids``, ``energy``, ``forces``
  of free atoms, ``chunk_idx``);
* IS2RE: the ``relax_opt.traj_dir`` folder of ``fairchem --mode run-relaxations`` (one
  ``<sid>.traj`` per system; the relaxed energy is the last frame's), or the
  ``*_predictions.npz`` of an IS2RE-direct model (``--mode predict``; ids ``sid_fid`` become ``sid``);
* IS2RS: ``relaxed_positions.npz`` of ``--mode run-relaxations`` with ``task.write_pos: True``.

``eqv2-plugin predict-splits`` leaves them as ``PRED/s2ef/<split>.npz``, ``PRED/is2re/<split>/``
(trajectories) and ``PRED/is2rs/<split>.npz``; ``--predictions PRED`` reads that layout.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from eqv2_plugin.errors import UserInputError
from eqv2_plugin.leaderboard.formats import BENCHMARK_SPLITS, default_s2ef_dtype, float_dtypes, key, read_npz

FLOAT16_MAX = float(np.finfo(np.float16).max)


def prediction_path(root: Path, task: str, split: str) -> Path:
    """Where ``predict-splits`` leaves a split's predictions for ``task`` under ``root``."""
    root = Path(root)
    if task == "is2re":
        traj_dir = root / "is2re" / split
        return traj_dir if traj_dir.is_dir() else root / "is2re" / f"{split}.npz"
    return root / task / f"{split}.npz"


def _load_npz(path: Path, split: str, what: str) -> dict[str, np.ndarray]:
    return read_npz(path, where=f"split {split!r}: ", expected=what)


def _need(arrays: dict, names: tuple[str, ...], path: Path, split: str, what: str) -> None:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UserInputError(
            f"split {split!r}: {path} has no {', '.join(missing)} (it has {', '.join(sorted(arrays)) or 'nothing'}); "
            f"expected {what}"
        )


def _ids(values: np.ndarray, path: Path, split: str) -> np.ndarray:
    if values.ndim != 1 or values.dtype.kind not in "US":
        raise UserInputError(f"split {split!r}: {path}: ids must be a 1-D array of strings, got {values.dtype} {values.shape}")
    return values.astype(str)


def _chunks(chunk_idx: np.ndarray, n_ids: int, n_rows: int, path: Path, split: str, rows: str) -> np.ndarray:
    c = np.asarray(chunk_idx)
    if c.shape != (max(n_ids - 1, 0),) or (c.size and c.dtype.kind not in "iu"):
        raise UserInputError(
            f"split {split!r}: {path}: chunk_idx must hold {max(n_ids - 1, 0)} integers (one fewer than the ids), "
            f"got {c.dtype} {c.shape}"
        )
    if c.size and (np.any(np.diff(c) < 0) or c[0] < 0 or c[-1] > n_rows):
        raise UserInputError(f"split {split!r}: {path}: chunk_idx must be non-decreasing within 0..{n_rows} {rows}")
    return c.astype(np.int64)


def _as_float(values: np.ndarray, dtype: str, split: str, field: str, path: Path, fix: str) -> np.ndarray:
    if values.dtype.kind != "f":
        raise UserInputError(f"split {split!r}: {path}: {field} must be floating point, got {values.dtype}")
    if np.dtype(dtype).itemsize > values.dtype.itemsize:
        raise UserInputError(
            f"split {split!r}: {path}: {field} is {values.dtype} and the submission needs {dtype}: the lost digits "
            f"cannot be recovered. {fix}"
        )
    if dtype == "float16":
        big = np.isfinite(values) & (np.abs(values) > FLOAT16_MAX)
        if big.any():
            raise UserInputError(
                f"split {split!r}: {path}: {field} has values beyond float16's range (|x| > {FLOAT16_MAX:g}, "
                f"e.g. {float(values[big].reshape(-1)[0]):g}); write float32 with --dtype float32"
            )
    return values.astype(dtype, copy=False)


_FLOAT32_FIX = (
    "Predict again with float32 outputs (fairchem: --task.prediction_dtype=float32 or "
    "--outputs.<target>.prediction_dtype=float32)"
)


def load_s2ef(path: Path, split: str, dtype: str) -> dict[str, np.ndarray]:
    """``ids``, ``energy`` [n, 1], ``forces`` [free, 3] (``dtype``) and ``chunk_idx`` of one split."""
    what = "the s2ef_predictions.npz of `fairchem --mode predict` (ids, energy, forces, chunk_idx)"
    a = _load_npz(path, split, what)
    _need(a, ("ids", "energy", "forces", "chunk_idx"), path, split, what)
    ids = _ids(a["ids"], path, split)
    energy, forces = a["energy"], a["forces"]
    if energy.shape not in ((len(ids),), (len(ids), 1)):
        raise UserInputError(f"split {split!r}: {path}: energy has shape {energy.shape}, expected ({len(ids)}, 1)")
    if forces.ndim != 2 or forces.shape[1] != 3:
        raise UserInputError(f"split {split!r}: {path}: forces has shape {forces.shape}, expected (free atoms, 3)")
    chunk_idx = _chunks(a["chunk_idx"], len(ids), len(forces), path, split, "force rows")
    return {
        "ids": ids,
        "energy": _as_float(energy.reshape(len(ids), 1), dtype, split, "energy", path, _FLOAT32_FIX),
        "forces": _as_float(forces, dtype, split, "forces", path, _FLOAT32_FIX),
        "chunk_idx": chunk_idx,
    }


def load_is2rs(path: Path, split: str) -> dict[str, np.ndarray]:
    """``ids``, ``pos`` [atoms, 3] and ``chunk_idx`` of one split (``relaxed_positions.npz``)."""
    what = "the relaxed_positions.npz of `fairchem --mode run-relaxations` with task.write_pos: True"
    a = _load_npz(path, split, what)
    _need(a, ("ids", "pos", "chunk_idx"), path, split, what)
    ids = _ids(a["ids"], path, split)
    pos = a["pos"]
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise UserInputError(f"split {split!r}: {path}: pos has shape {pos.shape}, expected (atoms, 3)")
    if pos.dtype.name not in float_dtypes("is2rs", "oc20", "pos"):
        raise UserInputError(f"split {split!r}: {path}: pos is {pos.dtype}; positions need float32 or float64")
    return {"ids": ids, "pos": pos, "chunk_idx": _chunks(a["chunk_idx"], len(ids), len(pos), path, split, "rows")}


_SID_FID = re.compile(r"^(.*)_(\d+)$")


def _sort_key(sid: str) -> tuple:
    return (0, int(sid), "") if sid.isdigit() else (1, 0, sid)


def load_is2re(path: Path, split: str, benchmark: str) -> dict[str, np.ndarray]:
    """``ids`` and relaxed ``energy`` [n] of one split, from a trajectory folder or a predictions file."""
    if path.is_dir():
        return _is2re_from_trajectories(path, split)
    what = "a folder of relaxation trajectories (<sid>.traj) or the is2re_predictions.npz of an IS2RE-direct model"
    a = _load_npz(path, split, what)
    _need(a, ("ids", "energy"), path, split, what)
    ids = _ids(a["ids"], path, split)
    matches = [_SID_FID.match(i) for i in ids]
    if ids.size and all(matches) and len({m.group(1) for m in matches}) == len(ids):
        ids = np.array([m.group(1) for m in matches])  # "sid_fid" -> "sid" (one frame per system)
    energy = a["energy"]
    if energy.shape not in ((len(ids),), (len(ids), 1)):
        raise UserInputError(f"split {split!r}: {path}: energy has shape {energy.shape}, expected ({len(ids)},)")
    dtype = energy.dtype.name if energy.dtype.name in float_dtypes("is2re", benchmark, "energy") else None
    if dtype is None:
        raise UserInputError(
            f"split {split!r}: {path}: energy is {energy.dtype}; {benchmark.upper()} IS2RE needs "
            f"{' or '.join(float_dtypes('is2re', benchmark, 'energy'))}. {_FLOAT32_FIX}"
        )
    return {"ids": ids, "energy": energy.reshape(len(ids))}


def _is2re_from_trajectories(folder: Path, split: str) -> dict[str, np.ndarray]:
    from ase.io import read

    unfinished = sorted(folder.glob("*.traj_tmp"))
    if unfinished:
        raise UserInputError(
            f"split {split!r}: the relaxation of sid {unfinished[0].name[: -len('.traj_tmp')]} did not finish "
            f"({unfinished[0]} is fairchem's partial file); rerun run-relaxations for this split into an empty traj_dir"
        )
    files = sorted(folder.glob("*.traj"), key=lambda p: _sort_key(p.stem))
    if not files:
        raise UserInputError(f"split {split!r}: {folder} holds no .traj files (set task.relax_opt.traj_dir to it)")
    ids, energies = [], []
    for path in files:
        try:
            last = read(path, index=-1)
            energy = float(last.get_potential_energy())
        except Exception as exc:  # ASE raises several types for empty/corrupt files and missing energies
            raise UserInputError(
                f"split {split!r}, id {path.stem!r}: cannot read the relaxed energy from {path} "
                f"({type(exc).__name__}: {exc})"
            ) from None
        ids.append(path.stem)
        energies.append(energy)
    return {"ids": np.array(ids), "energy": np.array(energies, dtype=np.float64)}


def build_submission(
    task: str, benchmark: str, sources: Mapping[str, Path], dtype: str | None = None
) -> dict[str, np.ndarray]:
    """The submission's arrays, ``{f"{split}_{field}": array}``, from one source per split.

    ``dtype`` (S2EF energies and forces) defaults to ``formats.default_s2ef_dtype(benchmark)``.
    """
    splits = BENCHMARK_SPLITS[benchmark]
    missing = [s for s in splits if s not in sources]
    if missing:
        flags = " ".join(f"--{s.replace('_', '-')} PATH" for s in missing)
        raise UserInputError(f"{benchmark.upper()} {task.upper()} needs every split: missing {', '.join(missing)} ({flags})")
    extra = [s for s in sources if s not in splits]
    if extra:
        raise UserInputError(
            f"split(s) {', '.join(extra)} are not {benchmark.upper()} splits ({', '.join(splits)}); "
            "OC22 (id, ood) needs --benchmark oc22"
        )
    if task == "s2ef":
        dtype = dtype or default_s2ef_dtype(benchmark)
        if dtype not in float_dtypes("s2ef", benchmark, "energy"):
            raise UserInputError(
                f"--dtype: {benchmark.upper()} S2EF needs {' or '.join(float_dtypes('s2ef', benchmark, 'energy'))}, "
                f"not {dtype} (float16 cannot hold OC22's total energies)"
            )
    elif dtype is not None:
        raise UserInputError(f"--dtype: only for S2EF (IS2RE and IS2RS keep the dtype of their predictions)")
    arrays: dict[str, np.ndarray] = {}
    for split in splits:
        path = Path(sources[split]).expanduser()
        if not path.exists():
            raise UserInputError(f"split {split!r}: {path} does not exist")
        if task == "s2ef":
            part = load_s2ef(path, split, dtype)
        elif task == "is2rs":
            part = load_is2rs(path, split)
        else:
            part = load_is2re(path, split, benchmark)
        for field, values in part.items():
            arrays[key(split, field)] = values
    return arrays


def write_submission(arrays: Mapping[str, np.ndarray], out: Path) -> Path:
    """Write ``arrays`` to ``out`` (``.npz``, compressed) atomically; returns the path written."""
    out = Path(out).expanduser()
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    if out.is_dir():
        raise UserInputError(f"--out: {out} is a folder; give a file name ending in .npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".npz", dir=out.parent)
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
