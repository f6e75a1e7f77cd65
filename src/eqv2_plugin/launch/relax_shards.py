"""Merge the ``relaxed_positions.npz`` files of a sharded ``fairchem --mode run-relaxations``.

Each shard of a job array relaxes ``dataset.relax.shard=i`` of ``total_shards=N`` (fairchem's
``LmdbDataset`` splits the systems into N contiguous blocks) and writes
``results/<timestamp_id>/relaxed_positions.npz`` with ``ids``, ``pos`` (all atoms, concatenated)
and ``chunk_idx`` (``np.split`` indices). The merged file has the same keys, ids sorted as fairchem
sorts them (``np.unique`` of the id strings), and, given the trajectories folder
(``task.relax_opt.traj_dir``), ``energy``: the last frame's energy of each relaxation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from eqv2_plugin.errors import UserInputError


def _shard_file(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "relaxed_positions.npz"
    if not path.is_file():
        raise UserInputError(f"shard {path}: no such file (did that array task fail? see its Slurm log)")
    return path


def merge_relaxed_positions(
    shards: list[Path], traj_dir: Path | None = None, expect_ids: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Merge shard files (or their results folders) into one fairchem-style relaxation result."""
    ids: list[str] = []
    positions: list[np.ndarray] = []
    origin: dict[str, Path] = {}
    for shard in shards:
        path = _shard_file(shard)
        with np.load(path) as data:
            shard_ids = [str(i) for i in data["ids"]]
            blocks = np.split(data["pos"], data["chunk_idx"]) if len(shard_ids) else []
        if len(blocks) != len(shard_ids):
            raise UserInputError(f"shard {path}: {len(shard_ids)} ids but {len(blocks)} position blocks")
        for sid, block in zip(shard_ids, blocks):
            if sid in origin:
                raise UserInputError(f"system {sid} is in two shards: {origin[sid]} and {path}")
            origin[sid] = path
            ids.append(sid)
            positions.append(np.asarray(block))
    if expect_ids is not None:
        missing = sorted(set(map(str, expect_ids)) - set(ids))
        extra = sorted(set(ids) - set(map(str, expect_ids)))
        if missing or extra:
            raise UserInputError(f"merged shards do not match the relaxation set: missing {missing[:10]}"
                                 f"{'...' if len(missing) > 10 else ''}, unexpected {extra[:10]}")
    order = np.argsort(np.array(ids))
    merged = {
        "ids": np.array(ids)[order],
        "pos": np.concatenate([positions[i] for i in order]) if ids else np.zeros((0, 3)),
        "chunk_idx": np.cumsum([len(positions[i]) for i in order])[:-1],
    }
    if traj_dir is not None:
        from ase.io import read

        energies = []
        for sid in merged["ids"]:
            traj = Path(traj_dir) / f"{sid}.traj"
            if not traj.is_file():
                raise UserInputError(f"no trajectory {traj} for system {sid} (task.relax_opt.traj_dir)")
            energies.append(read(traj, index=-1).get_potential_energy())
        merged["energy"] = np.array(energies, dtype=np.float64)
    return merged


def relax_src_from_config(config_yml: Path) -> Path:
    """``dataset.relax.src`` of a fairchem config (``includes:`` resolved as fairchem does)."""
    from fairchem.core.common.utils import load_config

    config, _, _ = load_config(str(config_yml))
    dataset = config.get("dataset") or {}
    relax = dataset.get("relax") if isinstance(dataset, dict) else None
    if not relax or "src" not in relax:
        raise UserInputError(f"{config_yml}: no dataset.relax.src (the relaxation set)")
    return Path(relax["src"])


def write_shard_metadata(src: Path, shard: int, total: int, out: Path) -> Path | None:
    """Write the ``metadata.npz`` of one shard of ``src``; ``None`` if ``src`` has none.

    fairchem's ``LmdbDataset`` shards with ``np.array_split`` of the indices, but reads the whole
    set's ``metadata.npz`` and then fails ("Loaded metadata and dataset size mismatch"); give the
    shard job ``--dataset.relax.metadata_path=<this file>``.
    """
    if not 0 <= shard < total:
        raise UserInputError(f"shard {shard} of {total}: need 0 <= shard < shards")
    src = Path(src)
    meta = (src.parent if src.is_file() else src) / "metadata.npz"
    if not meta.is_file():
        return None
    with np.load(meta, allow_pickle=True) as data:
        fields = {key: data[key] for key in data.files}
    count = len(fields["natoms"])
    keep = np.array_split(np.arange(count), total)[shard]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **{key: (value[keep] if len(value) == count else value) for key, value in fields.items()})
    return out


def lmdb_system_ids(src: Path) -> list[str]:
    """The ``sid`` of every entry of a fairchem LMDB folder or file (as fairchem writes them)."""
    from fairchem.core.datasets.lmdb_dataset import LmdbDataset

    dataset = LmdbDataset({"src": str(src)})
    sids = (dataset[i].sid for i in range(len(dataset)))
    return [str(s.item() if hasattr(s, "item") else s) for s in sids]
