"""The EvalAI submission format of the Open Catalyst leaderboards, as fairchem 1.10 writes it.

A submission is one ``.npz`` whose keys are ``f"{split}_{field}"``; every split of the
benchmark must be there (OC20: ``id``, ``ood_ads``, ``ood_cat``, ``ood_both``; OC22: ``id``,
``ood``).  Fields per task (what ``fairchem --mode predict`` / ``run-relaxations`` write for one
split, prefixed with the split name):

=====  ==============  =========================================================  ==============
task   field           content                                                    dtype
=====  ==============  =========================================================  ==============
S2EF   ``ids``         ``"{sid}_{fid}"`` per frame (``"{sid}"`` without fid)      str (``<U``)
       ``energy``      one energy per frame, ``[n, 1]`` (``[n]`` accepted)       OC20 float16
                                                                                  (float32 kept
                                                                                  with --dtype),
                                                                                  OC22 float32
       ``forces``      forces of the *free* atoms (``fixed == 0``) of every       as energy
                       frame, concatenated in ``ids`` order, ``[sum free, 3]``
       ``chunk_idx``   ``np.split`` indices of ``forces``: cumulative free-atom    int64
                       counts without the last, ``[n - 1]``
IS2RE  ``ids``         ``"{sid}"`` per system                                     str
       ``energy``      relaxed energy (last frame of the ML relaxation), ``[n]``  float64 from
                                                                                  trajectories;
                                                                                  float16/32 as
                                                                                  predicted
                                                                                  (OC22: not 16)
IS2RS  ``ids``         ``"{sid}"`` per system                                     str
       ``pos``         relaxed positions of *all* atoms, ``[sum atoms, 3]``       float64 (as
                                                                                  written), or
                                                                                  float32
       ``chunk_idx``   ``np.split`` indices of ``pos`` (atom counts), ``[n - 1]``  int64
=====  ==============  =========================================================  ==============

``ids`` may come in any order (fairchem sorts them as strings); each must appear once.
OC22 energies are total energies (hundreds of eV): float16 cannot hold them (its spacing is
0.25-0.5 eV there), hence float32, as fairchem forces for ``task.dataset: oc22_lmdb``.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from eqv2_plugin.errors import UserInputError

BENCHMARK_SPLITS: dict[str, tuple[str, ...]] = {
    "oc20": ("id", "ood_ads", "ood_cat", "ood_both"),
    "oc22": ("id", "ood"),
}
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "s2ef": ("ids", "energy", "forces", "chunk_idx"),
    "is2re": ("ids", "energy"),
    "is2rs": ("ids", "pos", "chunk_idx"),
}
TASKS: tuple[str, ...] = tuple(TASK_FIELDS)
BENCHMARKS: tuple[str, ...] = tuple(BENCHMARK_SPLITS)
#: make-data's manifest groups the leaderboard test splits by the LMDBs they use
DATA_GROUP: dict[str, str] = {"s2ef": "s2ef", "is2re": "is2re", "is2rs": "is2re"}
_ALL_FIELDS = sorted({f for fields in TASK_FIELDS.values() for f in fields}, key=len, reverse=True)


def float_dtypes(task: str, benchmark: str, field: str) -> tuple[str, ...]:
    """Floating dtypes a submission may use for ``field`` (``check-submission`` accepts these)."""
    if task == "is2rs":
        return ("float32", "float64")  # float16 positions: 0.016 A steps at 16-32 A
    if task == "s2ef":
        return ("float32",) if benchmark == "oc22" else ("float16", "float32")
    return ("float32", "float64") if benchmark == "oc22" else ("float16", "float32", "float64")


def default_s2ef_dtype(benchmark: str) -> str:
    """What ``submission`` writes S2EF energies and forces as: fairchem's default for OC20, float32 for OC22."""
    return "float32" if benchmark == "oc22" else "float16"


def key(split: str, field: str) -> str:
    """The submission key of one split's field, e.g. ``ood_ads_chunk_idx``."""
    return f"{split}_{field}"


def split_fields(keys: Iterable[str]) -> dict[str, set[str]]:
    """``{"id": {"ids", "energy", ...}, ...}`` from submission keys; unknown keys under ``""``."""
    out: dict[str, set[str]] = {}
    for name in keys:
        for field in _ALL_FIELDS:
            if name.endswith("_" + field) and len(name) > len(field) + 1:
                out.setdefault(name[: -len(field) - 1], set()).add(field)
                break
        else:
            out.setdefault("", set()).add(name)
    return out


def infer_task(fields: Iterable[str], where: str) -> str:
    """The task of a set of field names (``forces`` -> S2EF, ``pos`` -> IS2RS, else IS2RE)."""
    fields = set(fields)
    if "forces" in fields:
        return "s2ef"
    if "pos" in fields:
        return "is2rs"
    if "energy" in fields:
        return "is2re"
    raise UserInputError(
        f"{where}: cannot tell the task from its arrays {sorted(fields)}; expected S2EF (ids, energy, "
        "forces, chunk_idx), IS2RE (ids, energy) or IS2RS (ids, pos, chunk_idx), or pass --task"
    )


def infer_benchmark(splits: Iterable[str]) -> str:
    """``oc22`` when the splits are OC22's (id, ood), else ``oc20``."""
    return "oc22" if set(splits) <= set(BENCHMARK_SPLITS["oc22"]) and "ood" in set(splits) else "oc20"


def system_id(data: object, with_fid: bool) -> str:
    """The id fairchem writes for one LMDB entry: ``"{sid}_{fid}"`` (S2EF, when there is a fid) or ``"{sid}"``."""
    sid = _plain(getattr(data, "sid"))
    fid = getattr(data, "fid", None) if with_fid else None
    return f"{sid}_{_plain(fid)}" if fid is not None else f"{sid}"


def _plain(value: object) -> object:
    if hasattr(value, "tolist"):  # a tensor or numpy scalar, as some LMDBs store it
        value = value.tolist()
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
    return value


def read_npz(path: Path, where: str = "", expected: str = "") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, without pickled objects (as EvalAI loads it).

    Failures raise ``UserInputError`` starting with ``where`` (e.g. ``"split 'id': "``) and
    ending with ``expected`` (what the file should have been)."""
    hint = f"; expected {expected}" if expected else ""
    if not path.is_file():
        raise UserInputError(f"{where}{path}: no such file{hint}")
    if not zipfile.is_zipfile(path):
        raise UserInputError(f"{where}{path}: not a readable .npz file (not a zip archive){hint}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserInputError(
                f"{where}{path}: holds Python object arrays (pickled); store ids as a numpy string array, "
                f"e.g. np.array(ids, dtype=str){hint}"
            ) from None
        raise UserInputError(f"{where}{path}: not a readable .npz file ({exc}){hint}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserInputError(f"{where}{path}: not a readable .npz file ({exc}){hint}") from None
