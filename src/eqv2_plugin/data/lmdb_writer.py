"""Write and read data splits in fairchem 1.x's LMDB format, reproducibly.

Format (what ``fairchem.core.datasets.lmdb_dataset.LmdbDataset`` reads):

* a split is a folder of ``*.lmdb`` files, read in sorted name order; ours are
  ``data.0000.lmdb``, ``data.0001.lmdb``, ... (a new file every
  ``entries_per_file`` entries);
* each file is a single-file LMDB (``subdir=False``) whose keys are the ASCII
  strings ``"0"`` .. ``"n-1"`` with values ``pickle.dumps(Data, protocol=-1)``
  (``torch_geometric.data.Data``), plus ``"length"`` -> ``pickle.dumps(n)``;
* ``metadata.npz`` with ``natoms`` (atom count of every entry, in dataset
  order) sits in the split folder, which is where fairchem looks for it
  (``<src>/metadata.npz``) for its atom-count load balancing.

Structures become ``Data`` through fairchem's own ``AtomsToGraphs(max_neigh=50,
radius=6, r_energy, r_forces, r_distances=False, r_edges=False, r_fixed=True)``
(no stored graph: the models build it on the fly, ``otf_graph=True``).  On top
of that every entry gets ``sid``/``fid`` (Python ints) and ``tags`` as int64;
``pos`` is set to the structure's own float32 positions (already wrapped by
``oc20_like``), which AtomsToGraphs' re-wrapping could move by a float32 ulp or
a lattice vector for atoms on a cell face.  Other dtypes are AtomsToGraphs'
(fairchem 1.10): ``atomic_numbers`` uint8, ``fixed`` int32, ``energy`` a Python
float, ``forces`` float32.

Reproducibility: everything we control is deterministic.  Entries go in one
write transaction in key order; the map size (recorded in LMDB's meta pages)
is a function of the payload only; ``lock=False`` (single writer, no ``-lock``
file) and ``meminit=True`` (unused page bytes are zeros, not leftover memory);
``metadata.npz`` is written with a fixed zip timestamp (``numpy.savez`` stamps
the current time).  The ``.lmdb`` files are nevertheless *not* byte-identical
between runs: torch pickles a tensor's storage through its legacy
``torch.save`` format, which names the storage by its memory address, so the
pickled bytes of equal tensors differ from process to process (and can differ
in length, which moves LMDB pages).  We keep fairchem's plain
``pickle.dumps(data, protocol=-1)`` rather than a custom tensor reduction, and
instead guarantee equal *values*: ``data_digest`` hashes the decoded values
(dtype, shape and bytes of every tensor; every scalar), its result is stored in
``manifest.json``, and the tests compare every stored value of two runs.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms
    from torch_geometric.data import Data

ENTRIES_PER_FILE = 5000
LMDB_GLOB = "*.lmdb"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def make_converter(labelled: bool) -> Any:
    """fairchem's ``AtomsToGraphs`` with the settings of this data set."""
    from fairchem.core.preprocessing import AtomsToGraphs

    return AtomsToGraphs(
        max_neigh=50,
        radius=6,
        r_energy=labelled,
        r_forces=labelled,
        r_distances=False,
        r_edges=False,
        r_fixed=True,
    )


def atoms_to_data(
    converter: Any, atoms: Atoms, sid: int, fid: int, extra: dict[str, Any] | None = None
) -> Data:
    """Convert one structure; ``extra`` attributes (e.g. IS2RE targets) are added as given."""
    import torch

    data = converter.convert(atoms)
    # AtomsToGraphs wraps positions into the cell; ours are already wrapped and
    # float32-exact, and are the positions the labels belong to: keep them bit for bit.
    data.pos = torch.as_tensor(atoms.positions, dtype=torch.float32)
    data.tags = torch.as_tensor(atoms.get_tags(), dtype=torch.long)
    data.sid = int(sid)
    data.fid = int(fid)
    for key, value in (extra or {}).items():
        setattr(data, key, value)
    return data


def _map_size(payload: int, entries: int) -> int:
    """A deterministic LMDB map size with ample room for the B-tree and overflow pages."""
    need = 2 * payload + 4096 * (4 * entries + 64)
    mib = 1 << 20
    return max(mib, -(-need // mib) * mib)


def write_lmdb(path: Path, values: Sequence[bytes]) -> None:
    """One single-file LMDB with keys "0".."n-1" and "length"."""
    import lmdb

    env = lmdb.open(
        str(path),
        map_size=_map_size(sum(len(v) for v in values), len(values)),
        subdir=False,
        lock=False,
        meminit=True,
        readahead=False,
        max_dbs=0,
    )
    try:
        with env.begin(write=True) as txn:
            for i, value in enumerate(values):
                txn.put(str(i).encode("ascii"), value, overwrite=False)
            txn.put(b"length", pickle.dumps(len(values), protocol=-1))
        env.sync(True)
    finally:
        env.close()


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like ``numpy.savez`` (uncompressed), but with a fixed timestamp: same arrays, same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def write_split(split_dir: Path, data_list: Sequence[Data], entries_per_file: int = ENTRIES_PER_FILE) -> None:
    """Write ``data_list`` (in order) as a fairchem LMDB split folder with ``metadata.npz``."""
    if entries_per_file <= 0:
        raise ValueError("entries_per_file must be positive")
    split_dir.mkdir(parents=True, exist_ok=False)
    values = [pickle.dumps(d, protocol=-1) for d in data_list]
    for shard, start in enumerate(range(0, max(len(values), 1), entries_per_file)):
        write_lmdb(split_dir / f"data.{shard:04d}.lmdb", values[start : start + entries_per_file])
    natoms = np.array([int(d.natoms) for d in data_list], dtype=np.int64)
    write_npz(split_dir / "metadata.npz", natoms=natoms)


def iter_split(split_dir: Path) -> Iterator[Data]:
    """Every stored ``Data`` of a split, in dataset order (as fairchem indexes it)."""
    import lmdb

    for path in sorted(Path(split_dir).glob(LMDB_GLOB)):
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False)
        try:
            with env.begin() as txn:
                raw = txn.get(b"length")
                n = pickle.loads(raw) if raw is not None else env.stat()["entries"]
                for i in range(n):
                    yield pickle.loads(txn.get(str(i).encode("ascii")))
        finally:
            env.close()


def iter_raw(split_dir: Path) -> Iterator[tuple[str, bytes, bytes]]:
    """``(file name, key, value)`` of every stored record, for exact comparisons."""
    import lmdb

    for path in sorted(Path(split_dir).glob(LMDB_GLOB)):
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False)
        try:
            with env.begin() as txn:
                for key, value in txn.cursor():
                    yield path.name, bytes(key), bytes(value)
        finally:
            env.close()


def _canonical(value: Any) -> bytes:
    import torch

    if torch.is_tensor(value):
        array = value.detach().cpu().contiguous().numpy()
        return f"tensor|{array.dtype.str}|{array.shape}|".encode() + array.tobytes()
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return f"ndarray|{array.dtype.str}|{array.shape}|".encode() + array.tobytes()
    if isinstance(value, (bool, int, float, str, type(None))):
        return f"{type(value).__name__}|{value!r}".encode()
    raise TypeError(f"no canonical form for {type(value).__name__}")


def data_digest(data_list: Iterable[Data]) -> str:
    """SHA-256 of the stored values (attribute names, dtypes, shapes, bytes) in order.

    Equal for two data sets exactly when they store the same values, unlike the
    file bytes (see the module docstring).
    """
    digest = hashlib.sha256()
    for index, data in enumerate(data_list):
        digest.update(f"#{index}".encode())
        for key in sorted(data.keys()):
            digest.update(f"|{key}=".encode())
            digest.update(_canonical(data[key]))
    return digest.hexdigest()
