"""Generate the OC20-like synthetic data set: splits, checks, atomic output.

``generate_dataset`` is what ``eqv2-plugin make-data`` runs; ``summarize``
renders the table it prints.  Layout of the output folder::

    OUT/manifest.json            parameters (seed, sizes, metals, held-out ...)
    OUT/s2ef/train/              data.0000.lmdb + metadata.npz
    OUT/s2ef/val_id/             in-domain validation
    OUT/s2ef/val_ood/            held-out metal and/or adsorbate
    OUT/s2ef/test/               no energy/forces (like the OC20 test split)
    OUT/is2re/train/, is2re/val/ y_init, y_relaxed, pos_relaxed
    OUT/s2ef/test_{id,ood_ads,ood_cat,ood_both}/    leaderboard-style test splits,
    OUT/is2re/test_{id,ood_ads,ood_cat,ood_both}/   unlabelled (IS2RE and IS2RS)
    OUT/labels/s2ef/test_*/, labels/is2re/test_*/   the same entries with their labels

Choices:

* **Sizes** count *systems*; an S2EF system contributes ``frames`` entries
  (default 4), an IS2RE system one entry.  Defaults (``DEFAULT_SIZES``) are
  small enough for a few seconds of CPU time.
* **Held-out** (``val_ood`` and the ood test splits): one metal and one
  adsorbate, chosen from the seed, never appear in ``s2ef/train``, ``val_id``,
  ``test``, ``test_id`` or the IS2RE train/val/test_id splits.  ``val_ood``
  systems cycle through (held-out metal, seen adsorbate), (seen metal,
  held-out adsorbate) and (both held out), like OC20's ood_cat / ood_ads /
  ood_both.
* **Leaderboard test splits** carry OC20's names: ``test_id`` (seen metals and
  adsorbates), ``test_ood_ads`` (held-out adsorbate on seen metals),
  ``test_ood_cat`` (seen adsorbates on the held-out metal), ``test_ood_both``.
  As on the leaderboard they hold no labels (S2EF: no energy/forces; IS2RE: no
  y_init/y_relaxed/pos_relaxed); ``OUT/labels/<split path>/`` holds the same
  entries (same order, sids, positions) *with* labels, so ``eqv2-plugin
  evaluate`` can score a submission offline.  ``manifest.json`` maps the names
  (``leaderboard_splits``) and the labelled copies (``labelled_copies``).
* **IS2RE entries** hold the *initial* structure in ``pos`` (the model input),
  ``y_init`` (EMT energy of ``pos``), ``y_relaxed`` and ``pos_relaxed``, and no
  ``energy``/``forces`` attributes, like OC20's IS2RE LMDBs.  To train on the
  relaxed energy with fairchem 1.x, map it with
  ``dataset: {key_mapping: {y_relaxed: energy}}``.  ``fid`` is 0.
* **Ids**: ``sid = split code * 1_000_000 + system index`` (codes: train 1,
  val_id 2, val_ood 3, test 4, is2re train 5, is2re val 6, s2ef test_id,
  test_ood_ads, test_ood_cat, test_ood_both 7-10, is2re test_* 11-14), unique across the
  whole data set; ``fid`` is the optimizer step of an S2EF frame.
* **Atomic output**: everything is written into a hidden temporary sibling of
  ``OUT`` and renamed into place at the end; on any error (or Ctrl-C) the
  temporary folder, and any parent folders this call created, are removed.
  An existing non-empty ``OUT`` is replaced only with ``overwrite=True``.
* **Parallelism**: systems are independent tasks (``oc20_like.compute_system``);
  with ``workers > 1`` they run in a pool of *spawned* processes (clean
  interpreters: no forked torch/OpenMP state) and come back in task order, so
  the output does not depend on the number of workers.
* **Determinism**: see ``oc20_like`` (per-system random streams) and
  ``lmdb_writer``: the same arguments store the same values, whatever
  ``workers`` is, and give byte-identical ``manifest.json`` and
  ``metadata.npz``.  The ``.lmdb`` bytes differ between runs only because
  torch's tensor pickles embed memory addresses; ``manifest.json`` records a
  SHA-256 of the stored values per split (``value_sha256``) to check instead.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from eqv2_plugin.data import lmdb_writer, oc20_like
from eqv2_plugin.errors import UserInputError


@dataclass(frozen=True)
class Split:
    key: str  # name in --sizes
    path: str  # folder relative to OUT
    code: int  # sid prefix and random-stream id
    task: str  # "s2ef" or "is2re"
    labelled: bool  # the split itself stores its targets (S2EF energy/forces, IS2RE y_*/pos_relaxed)
    pool: str = "seen"  # metals/adsorbates: "seen", "val_ood" (cycles the three below), "ood_ads", "ood_cat", "ood_both"
    twin: bool = False  # unlabelled, with a labelled copy under LABELS_DIR/<path> (leaderboard test splits)

    @property
    def energy_forces(self) -> bool:
        """Whether AtomsToGraphs stores ``energy``/``forces`` (labelled S2EF entries)."""
        return self.labelled and self.task == "s2ef"


#: Leaderboard split names (OC20) and the pool of each: id = seen metals and adsorbates,
#: ood_ads = held-out adsorbate on a seen metal, ood_cat = seen adsorbate on the held-out
#: metal, ood_both = both held out.
TEST_SPLIT_NAMES: tuple[str, ...] = ("id", "ood_ads", "ood_cat", "ood_both")
_TEST_POOLS = {"id": "seen", "ood_ads": "ood_ads", "ood_cat": "ood_cat", "ood_both": "ood_both"}
LABELS_DIR = "labels"

SPLITS: tuple[Split, ...] = (
    Split("train", "s2ef/train", 1, "s2ef", True),
    Split("val_id", "s2ef/val_id", 2, "s2ef", True),
    Split("val_ood", "s2ef/val_ood", 3, "s2ef", True, "val_ood"),
    Split("test", "s2ef/test", 4, "s2ef", False),
    Split("is2re_train", "is2re/train", 5, "is2re", True),
    Split("is2re_val", "is2re/val", 6, "is2re", True),
    *(
        Split(f"test_{name}", f"s2ef/test_{name}", 7 + i, "s2ef", False, _TEST_POOLS[name], True)
        for i, name in enumerate(TEST_SPLIT_NAMES)
    ),
    *(
        Split(f"is2re_test_{name}", f"is2re/test_{name}", 11 + i, "is2re", False, _TEST_POOLS[name], True)
        for i, name in enumerate(TEST_SPLIT_NAMES)
    ),
)
SPLIT_KEYS: tuple[str, ...] = tuple(s.key for s in SPLITS)
DEFAULT_SIZES: dict[str, int] = {
    "train": 12,
    "val_id": 3,
    "val_ood": 3,
    "test": 3,
    "is2re_train": 6,
    "is2re_val": 3,
    **{f"test_{name}": 2 for name in TEST_SPLIT_NAMES},
    **{f"is2re_test_{name}": 2 for name in TEST_SPLIT_NAMES},
}
DEFAULT_FRAMES = 4
SID_STRIDE = 1_000_000
MAX_SYSTEMS = SID_STRIDE - 1
MAX_FRAMES = 1000
FORMAT_VERSION = 2


# ----------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_sizes(text: str) -> dict[str, int]:
    """Parse ``"train=200,val_id=20"`` (keys as in ``SPLIT_KEYS``; ``is2re/train`` also works)."""
    sizes: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserInputError(
                f"--sizes: expected KEY=N pairs separated by commas (e.g. train=200,val_id=20), got {item!r}"
            )
        try:
            sizes[key] = int(value.strip())
        except ValueError:
            raise UserInputError(
                f"--sizes: {key} must be a whole number of systems, got {value.strip()!r}"
            ) from None
    return sizes


def validate_sizes(sizes: Mapping[str, int] | None) -> dict[str, int]:
    """Defaults completed with ``sizes``; every size a positive integer."""
    out = dict(DEFAULT_SIZES)
    for raw_key, value in (sizes or {}).items():
        key = str(raw_key).replace("/", "_")
        if key == "is2re_val_id":
            key = "is2re_val"
        if key not in DEFAULT_SIZES:
            raise UserInputError(
                f"--sizes: unknown split {raw_key!r}; use one of {', '.join(SPLIT_KEYS)}"
            )
        if not _is_int(value) or value <= 0:
            raise UserInputError(
                f"--sizes: {key} must be a positive number of systems, got {value!r}"
            )
        if value > MAX_SYSTEMS:
            raise UserInputError(f"--sizes: {key} is at most {MAX_SYSTEMS} systems, got {value}")
        out[key] = value
    return out


def _validate_names(values: Iterable[str] | str, known: tuple[str, ...], flag: str, what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [v for v in values.split(",")]
    by_lower = {k.lower(): k for k in known}
    chosen: set[str] = set()
    for value in values:
        name = str(value).strip()
        if not name:
            continue
        if name.lower() not in by_lower:
            raise UserInputError(
                f"{flag}: unknown {what} {name!r}; choose from {', '.join(known)}"
            )
        chosen.add(by_lower[name.lower()])
    if len(chosen) < 2:
        raise UserInputError(
            f"{flag}: give at least 2 {what}s (one is held out for s2ef/val_ood), got {len(chosen)}"
        )
    return tuple(k for k in known if k in chosen)  # canonical order: same set, same data


def validate_metals(metals: Iterable[str] | str) -> tuple[str, ...]:
    return _validate_names(metals, oc20_like.METALS, "--metals", "metal")


def validate_adsorbates(adsorbates: Iterable[str] | str) -> tuple[str, ...]:
    return _validate_names(adsorbates, oc20_like.ADSORBATE_NAMES, "--adsorbates", "adsorbate")


def _validate_seed(seed: Any) -> int:
    if not _is_int(seed) or seed < 0:
        raise UserInputError(f"--seed: must be a non-negative integer, got {seed!r}")
    return int(seed)


def _validate_frames(frames: Any) -> int:
    if not _is_int(frames) or not 1 <= frames <= MAX_FRAMES:
        raise UserInputError(f"--frames: must be an integer from 1 to {MAX_FRAMES}, got {frames!r}")
    return int(frames)


def _validate_workers(workers: Any) -> int:
    if not _is_int(workers) or workers < 1:
        raise UserInputError(f"--workers: must be a positive integer, got {workers!r}")
    return int(workers)


# ----------------------------------------------------------------------------- output folder


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_symlink() and not out.exists():
        raise UserInputError(f"--out: {out} is a broken symbolic link; remove it or choose another folder")
    if out.exists():
        if not out.is_dir():
            raise UserInputError(f"--out: {out} exists and is not a folder; choose a folder path")
        if any(out.iterdir()) and not overwrite:
            raise UserInputError(
                f"--out: {out} already exists and is not empty; pass --overwrite to replace it "
                "(its contents are deleted) or choose another folder"
            )
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserInputError(f"--out: cannot create {out}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserInputError(f"--out: cannot write in {ancestor} (permission denied); choose a writable folder")


def _make_parents(parent: Path) -> list[Path]:
    """Create missing parents of the output; return those created (deepest first)."""
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir()
        except OSError as exc:
            _remove_created(missing)
            raise UserInputError(f"--out: cannot create folder {p}: {exc.strerror or exc}") from None
    return missing


def _remove_created(created: list[Path]) -> None:
    for p in created:  # deepest first; only if still empty
        try:
            p.rmdir()
        except OSError:
            pass


def _install(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out`` (replacing an existing one)."""
    if out.exists() or out.is_symlink():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, trash)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(trash, out)
            raise
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink()
    else:
        os.rename(tmp, out)


# ----------------------------------------------------------------------------- generation


def _pools(split: Split, index: int, metals, adsorbates, held_metal, held_ads):
    seen_metals = tuple(m for m in metals if m != held_metal)
    seen_ads = tuple(a for a in adsorbates if a != held_ads)
    pool = split.pool
    if pool == "val_ood":  # cycle: held-out metal, held-out adsorbate, both
        pool = ("ood_cat", "ood_ads", "ood_both")[index % 3]
    held_m = pool in ("ood_cat", "ood_both")
    held_a = pool in ("ood_ads", "ood_both")
    return ((held_metal,) if held_m else seen_metals), ((held_ads,) if held_a else seen_ads)


def _tasks(split: Split, n_systems: int, seed: int, frames: int, metals, adsorbates, held_out):
    tasks = []
    for index in range(n_systems):
        pool_m, pool_a = _pools(split, index, metals, adsorbates, *held_out)
        tasks.append(
            oc20_like.SystemTask(
                seed=seed,
                split_code=split.code,
                index=index,
                sid=split.code * SID_STRIDE + index,
                task=split.task,
                metals=pool_m,
                adsorbates=pool_a,
                frames=frames,
            )
        )
    return tasks


def default_workers() -> int:
    """Worker processes of ``make-data`` when ``--workers`` is not given: one per CPU, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _to_data(frame: oc20_like.Frame, converter: Any, labelled: bool = True) -> Any:
    """One stored entry; ``labelled=False`` drops the IS2RE targets (``frame.extra``)."""
    import torch

    extra = dict(frame.extra) if labelled else {}
    if "pos_relaxed" in extra:
        extra["pos_relaxed"] = torch.as_tensor(extra["pos_relaxed"], dtype=torch.float32)
    return lmdb_writer.atoms_to_data(converter, frame.to_atoms(), frame.sid, frame.fid, extra)


def labelled_copy_path(split: Split) -> str:
    """Folder (relative to OUT) of the labelled copy of a leaderboard test split."""
    return f"{LABELS_DIR}/{split.path}"


def leaderboard_splits() -> dict[str, dict[str, str]]:
    """``{"s2ef": {"id": "s2ef/test_id", ...}, "is2re": {...}}``: the OC20-named test splits.

    The IS2RE folders also serve IS2RS (as in OC20, where both tasks share the LMDBs).
    """
    out: dict[str, dict[str, str]] = {}
    for split in SPLITS:
        if split.twin:
            out.setdefault(split.task, {})[split.key.rsplit("test_", 1)[1]] = split.path
    return out


def generate_dataset(
    out: Path | str,
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    metals: Iterable[str] | str = oc20_like.METALS,
    adsorbates: Iterable[str] | str = oc20_like.ADSORBATE_NAMES,
    overwrite: bool = False,
    frames: int = DEFAULT_FRAMES,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build every split into ``out``; return the summary (see ``dataset_summary``).

    ``sizes`` maps split keys (``SPLIT_KEYS``) to numbers of systems; missing
    keys keep ``DEFAULT_SIZES``.  ``metals``/``adsorbates`` are names or a
    comma-separated string (at least two each).  ``workers > 1`` runs systems
    in spawned processes: as with any ``multiprocessing`` use, a calling script
    needs an ``if __name__ == "__main__":`` guard.  Raises ``UserInputError``
    for bad arguments before anything is written.
    """
    seed = _validate_seed(seed)
    sizes_ = validate_sizes(sizes)
    metals_ = validate_metals(metals)
    adsorbates_ = validate_adsorbates(adsorbates)
    frames = _validate_frames(frames)
    workers = _validate_workers(workers)
    out = Path(os.path.abspath(os.path.expanduser(str(out))))
    _check_out(out, bool(overwrite))
    held_out = oc20_like.choose_held_out(seed, metals_, adsorbates_)

    started = time.perf_counter()
    created = _make_parents(out.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        _remove_created(created)
        raise UserInputError(f"--out: cannot write in {out.parent}: {exc.strerror or exc}") from None
    pool = None
    try:
        converters = {True: lmdb_writer.make_converter(True), False: lmdb_writer.make_converter(False)}
        per_split = [
            (split, _tasks(split, sizes_[split.key], seed, frames, metals_, adsorbates_, held_out))
            for split in SPLITS
        ]
        all_tasks = [t for _, tasks in per_split for t in tasks]
        digests: dict[str, str] = {}
        n_workers = min(workers, len(all_tasks))
        if n_workers > 1:
            # "spawn": workers start clean (no forked torch/OpenMP state); results come back in order.
            pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn"))
            results = pool.map(oc20_like.compute_system, all_tasks, chunksize=1)
        else:
            results = map(oc20_like.compute_system, all_tasks)
        for split, tasks in per_split:
            t0 = time.perf_counter()
            frames_list = [frame for _, frames_ in zip(tasks, results) for frame in frames_]
            data_list = [_to_data(f, converters[split.energy_forces], split.labelled) for f in frames_list]
            lmdb_writer.write_split(tmp / split.path, data_list)
            digests[split.path] = lmdb_writer.data_digest(data_list)
            if split.twin:  # the leaderboard keeps these labels; we keep them beside, for `evaluate`
                labelled = [_to_data(f, converters[split.task == "s2ef"], True) for f in frames_list]
                lmdb_writer.write_split(tmp / labelled_copy_path(split), labelled)
                digests[labelled_copy_path(split)] = lmdb_writer.data_digest(labelled)
            if progress is not None:
                progress(
                    f"{split.path}: {len(tasks)} systems, {len(data_list)} entries "
                    f"(+{time.perf_counter() - t0:.1f}s, {time.perf_counter() - started:.1f}s total)"
                )
        if pool is not None:
            pool.shutdown()
            pool = None
        manifest = {
            "format_version": FORMAT_VERSION,
            "generator": "eqv2-plugin make-data",
            "labels": "ASE EMT: total energy (eV), unconstrained forces (eV/A)",
            "seed": seed,
            "sizes": sizes_,
            "frames_per_system": frames,
            "metals": list(metals_),
            "adsorbates": list(adsorbates_),
            "held_out": {"metal": held_out[0], "adsorbate": held_out[1]},
            "splits": {s.key: s.path for s in SPLITS},
            "leaderboard_splits": leaderboard_splits(),
            "labelled_copies": {s.path: labelled_copy_path(s) for s in SPLITS if s.twin},
            "value_sha256": digests,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _install(tmp, out)
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise
    summary = dataset_summary(out)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


# ----------------------------------------------------------------------------- summaries


def split_summary(split_dir: Path) -> dict[str, Any]:
    """Systems, entries, atom-count range and mean target energy of one split folder."""
    sids, natoms, energies = set(), [], []
    target = None
    for data in lmdb_writer.iter_split(split_dir):
        sids.add(int(data.sid))
        natoms.append(int(data.natoms))
        for key in ("energy", "y_relaxed"):
            value = getattr(data, key, None)
            if value is not None:
                target = key
                energies.append(float(value))
                break
    return {
        "systems": len(sids),
        "frames": len(natoms),
        "natoms_min": min(natoms) if natoms else 0,
        "natoms_max": max(natoms) if natoms else 0,
        "target": target,
        "energy_mean": (sum(energies) / len(energies)) if energies else None,
    }


def _split_dirs(out: Path) -> list[tuple[str, Path]]:
    names = [s.path for s in SPLITS] + [labelled_copy_path(s) for s in SPLITS if s.twin]
    known = [(name, out / name) for name in names if (out / name).is_dir()]
    seen = {p for _, p in known}
    extra = sorted(
        p for p in out.rglob("*") if p.is_dir() and p not in seen and any(p.glob(lmdb_writer.LMDB_GLOB))
    )
    return known + [(p.relative_to(out).as_posix(), p) for p in extra]


def dataset_summary(out: Path | str) -> dict[str, Any]:
    """``{"out", "manifest", "splits": {path: split_summary}}`` read back from disk."""
    out = Path(out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return {
        "out": str(out),
        "manifest": manifest,
        "splits": {name: split_summary(path) for name, path in _split_dirs(out)},
    }


def summarize(out: Path | str) -> str:
    """A plain-text table of the data set in ``out`` (what ``make-data`` prints)."""
    out = Path(out)
    if not out.is_dir():
        raise UserInputError(f"--out: {out} is not a folder")
    summary = dataset_summary(out)
    rows = [("split", "systems", "frames", "atoms min/max", "energy mean (eV)")]
    for name, s in summary["splits"].items():
        if s["energy_mean"] is None or not math.isfinite(s["energy_mean"]):
            energy = "- (unlabelled)"
        else:
            energy = f"{s['energy_mean']:.3f}" + (" (y_relaxed)" if s["target"] == "y_relaxed" else "")
        rows.append(
            (name, str(s["systems"]), str(s["frames"]), f"{s['natoms_min']}/{s['natoms_max']}", energy)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    held = summary["manifest"].get("held_out")
    if held:
        lines.append(
            f"held out of training (only in s2ef/val_ood and the test_ood_* splits): "
            f"metal {held['metal']}, adsorbate {held['adsorbate']}"
        )
    return "\n".join(lines)
