"""Test and label LMDBs: where a split's folder is (``--test-data`` / ``--labels``) and what it holds.

A split is read with fairchem's own ``LmdbDataset`` (a folder of ``*.lmdb`` files or one
``.lmdb`` file; old PyG pickles of the released OC20 LMDBs included), so ids, atom counts and
free atoms are exactly what ``fairchem --mode predict`` sees.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from eqv2_plugin.errors import UserInputError
from eqv2_plugin.leaderboard.formats import BENCHMARK_SPLITS, DATA_GROUP, system_id

#: label attributes per task, first found wins (OC20's released LMDBs use y / force / y_relaxed)
LABEL_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "s2ef": {"energy": ("energy", "y"), "forces": ("forces", "force")},
    "is2re": {"energy": ("y_relaxed", "energy_relaxed")},
    "is2rs": {"pos_relaxed": ("pos_relaxed",)},
}


@dataclass
class SplitEntries:
    """What a submission is checked or scored against: one LMDB split, in dataset order."""

    path: Path
    ids: list[str]
    natoms: np.ndarray  # atoms per entry
    free: list[np.ndarray]  # per entry: boolean mask of free atoms (fixed == 0)
    labels: dict[str, Any] = field(default_factory=dict)  # per task, see read_split

    @property
    def n_free(self) -> np.ndarray:
        return np.array([int(m.sum()) for m in self.free], dtype=np.int64)


def _close(dataset: Any) -> None:
    for env in getattr(dataset, "envs", None) or [getattr(dataset, "env", None)]:
        if env is not None:
            env.close()


def _first(data: Any, names: Sequence[str]) -> Any:
    for name in names:
        value = getattr(data, name, None)
        if value is not None:
            return value
    return None


def read_split(path: Path, task: str, split: str, flag: str, labels: bool = False) -> SplitEntries:
    """Ids, atom counts and free atoms of one split; with ``labels`` also its targets.

    Labels (numpy, float64): S2EF ``energy`` [n] and ``forces`` (list of [natoms, 3]); IS2RE
    ``energy`` [n]; IS2RS ``pos_relaxed`` (list of [natoms, 3]) and ``cell`` [n, 3, 3].
    """
    from fairchem.core.datasets.lmdb_dataset import LmdbDataset

    path = Path(path)
    where = f"{flag}: split {split!r} ({path})"
    try:
        dataset = LmdbDataset({"src": str(path)})
    except Exception as exc:  # fairchem raises AssertionError/ValueError/lmdb.Error for non-LMDB paths
        raise UserInputError(f"{where}: not a fairchem LMDB split ({type(exc).__name__}: {exc})") from None
    ids: list[str] = []
    natoms: list[int] = []
    free: list[np.ndarray] = []
    found: dict[str, list[Any]] = {name: [] for name in LABEL_KEYS[task]} if labels else {}
    cells: list[np.ndarray] = []
    try:
        for index in range(len(dataset)):
            data = dataset[index]
            if getattr(data, "sid", None) is None:
                raise UserInputError(f"{where}: entry {index} has no sid, which fairchem uses as its id")
            fixed = getattr(data, "fixed", None)
            if fixed is None:
                raise UserInputError(
                    f"{where}: entry {index} (sid {system_id(data, False)}) has no `fixed` attribute; "
                    "fairchem needs it to tell free atoms from fixed ones"
                )
            ids.append(system_id(data, with_fid=task == "s2ef"))
            n = int(data.natoms)
            natoms.append(n)
            free.append(np.asarray(fixed).reshape(-1) == 0)
            for name, candidates in LABEL_KEYS[task].items() if labels else ():
                value = _first(data, candidates)
                if value is None:
                    raise UserInputError(
                        f"{where}: entry {index} (id {ids[-1]}) has no {task.upper()} label "
                        f"({' or '.join(candidates)}). Test splits are unlabelled; give labelled data "
                        "(make-data keeps labelled copies of its test splits under OUT/labels/)"
                    )
                found[name].append(np.asarray(value, dtype=np.float64))
            if labels and task == "is2rs":
                cells.append(np.asarray(data.cell, dtype=np.float64).reshape(3, 3))
    finally:
        _close(dataset)
    entries = SplitEntries(path=path, ids=ids, natoms=np.array(natoms, dtype=np.int64), free=free)
    if labels:
        for name, values in found.items():
            entries.labels[name] = (
                np.array([float(v.reshape(-1)[0]) for v in values]) if name == "energy" else
                [v.reshape(-1, 3) for v in values]
            )
        if task == "is2rs":
            entries.labels["cell"] = np.stack(cells) if cells else np.zeros((0, 3, 3))
    return entries


def resolve_splits(
    specs: Sequence[str],
    task: str,
    benchmark: str | None,
    flag: str,
    labelled: bool = False,
    required: Iterable[str] | None = None,
) -> dict[str, Path]:
    """Split name -> LMDB path from ``ROOT`` (an ``eqv2-plugin make-data`` folder) or ``SPLIT=PATH`` items.

    ``benchmark`` restricts the names to its splits (``None``: any name).  From a make-data
    folder, ``labelled`` picks the labelled copies of the test splits.  ``required`` names the
    splits that must be given.
    """
    specs = [s for s in specs if s]
    if not specs:
        raise UserInputError(f"{flag}: missing; give a make-data folder or SPLIT=PATH (once per split)")
    allowed = BENCHMARK_SPLITS[benchmark] if benchmark else None
    out: dict[str, Path] = {}
    if len(specs) == 1 and "=" not in specs[0]:
        out = _from_make_data(Path(specs[0]).expanduser(), task, benchmark, flag, labelled)
    else:
        for spec in specs:
            name, sep, value = spec.partition("=")
            name = name.strip()
            if not sep or not name or not value.strip():
                raise UserInputError(
                    f"{flag}: expected SPLIT=PATH (e.g. {flag} id=data/s2ef/test_id) or a single make-data "
                    f"folder, got {spec!r}"
                )
            if allowed is not None and name not in allowed:
                raise UserInputError(
                    f"{flag}: unknown split {name!r} for {benchmark.upper()}; its splits are {', '.join(allowed)}"
                )
            if name in out:
                raise UserInputError(f"{flag}: split {name!r} given twice")
            out[name] = Path(value.strip()).expanduser()
    for name, path in out.items():
        if not path.exists():
            raise UserInputError(f"{flag}: split {name!r}: {path} does not exist")
    missing = [s for s in (required or ()) if s not in out]
    if missing:
        raise UserInputError(
            f"{flag}: no data for split(s) {', '.join(missing)}; give {' '.join(f'{flag} {m}=PATH' for m in missing)}"
        )
    order = list(allowed or ()) + sorted(set(out) - set(allowed or ()))
    return {name: out[name] for name in order if name in out}


def _from_make_data(root: Path, task: str, benchmark: str | None, flag: str, labelled: bool) -> dict[str, Path]:
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise UserInputError(
            f"{flag}: {root} is not an `eqv2-plugin make-data` folder (no manifest.json); give one "
            f"SPLIT=PATH per split instead, e.g. {flag} id=PATH {flag} ood_ads=PATH ..."
        )
    manifest = json.loads(manifest_path.read_text())
    group = manifest.get("leaderboard_splits", {}).get(DATA_GROUP[task])
    if not group:
        raise UserInputError(
            f"{flag}: {root} has no leaderboard test splits (made by an older eqv2-plugin make-data); "
            "regenerate it or give SPLIT=PATH items"
        )
    if benchmark is not None and not set(BENCHMARK_SPLITS[benchmark]) <= set(group):
        raise UserInputError(
            f"{flag}: {root} has OC20-named test splits ({', '.join(group)}), not the {benchmark.upper()} ones "
            f"({', '.join(BENCHMARK_SPLITS[benchmark])}); give SPLIT=PATH items, e.g. "
            f"{flag} id={root / group['id']} {flag} ood={root / group['ood_both']}"
        )
    copies = manifest.get("labelled_copies", {})
    out = {}
    for name, rel in group.items():
        if labelled:
            if rel not in copies:
                raise UserInputError(f"{flag}: {root} keeps no labelled copy of {rel}")
            rel = copies[rel]
        out[name] = root / rel
    return out
