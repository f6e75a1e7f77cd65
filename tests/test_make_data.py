"""`eqv2-plugin make-data`: OC20-like LMDBs that fairchem 1.10 reads, with exact EMT labels.

One default-size data set is generated per module (a few seconds); the
determinism test generates it a second time.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from eqv2_plugin.cli import main
from eqv2_plugin.data import dataset as ds_mod
from eqv2_plugin.data import lmdb_writer, oc20_like

TEST_SPLITS = tuple(s.path for s in ds_mod.SPLITS if s.twin)  # leaderboard-style, unlabelled
LABEL_COPIES = tuple(ds_mod.labelled_copy_path(s) for s in ds_mod.SPLITS if s.twin)
S2EF_LABELLED = ("s2ef/train", "s2ef/val_id", "s2ef/val_ood") + tuple(p for p in LABEL_COPIES if "s2ef" in p)
IS2RE_LABELLED = ("is2re/train", "is2re/val") + tuple(p for p in LABEL_COPIES if "is2re" in p)
ALL_SPLITS = tuple(s.path for s in ds_mod.SPLITS) + LABEL_COPIES
TINY = ",".join(f"{key}=1" for key in ds_mod.SPLIT_KEYS).replace("train=1", "train=2", 1)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("make_data") / "oc20_like"
    summary = ds_mod.generate_dataset(out, seed=0, workers=2)
    return out, summary


def _close(dataset) -> None:
    """py-lmdb allows one open handle per file and process: release fairchem's."""
    envs = getattr(dataset, "envs", None) or [getattr(dataset, "env", None)]
    for env in envs:
        if env is not None:
            env.close()


def _read(split_dir: Path) -> list:
    from fairchem.core.datasets.lmdb_dataset import LmdbDataset

    dataset = LmdbDataset({"src": str(split_dir)})
    try:
        return [dataset[i] for i in range(len(dataset))]
    finally:
        _close(dataset)


def _atoms(data, positions=None):
    from ase import Atoms

    pos = data.pos if positions is None else positions
    return Atoms(
        numbers=data.atomic_numbers.long().numpy(),
        positions=pos.double().numpy(),
        cell=data.cell.reshape(3, 3).double().numpy(),
        pbc=True,
    )


def _emt(atoms):
    from ase.calculators.emt import EMT

    atoms.calc = EMT()
    return atoms.get_potential_energy(), atoms.get_forces()


def _metal_and_adsorbate(data) -> tuple[str, str]:
    from ase import Atoms

    numbers = data.atomic_numbers.long().numpy()
    tags = data.tags.numpy()
    metals = {Atoms(numbers=[z]).get_chemical_symbols()[0] for z in numbers[tags < 2]}
    assert len(metals) == 1
    return metals.pop(), Atoms(numbers=numbers[tags == 2]).get_chemical_formula()


def _formula(adsorbate: str) -> str:
    from ase import Atoms

    return Atoms([s for s, _ in oc20_like.ADSORBATES[adsorbate]]).get_chemical_formula()


# --------------------------------------------------------------------------- light import / CLI


def test_cli_import_is_light():
    code = (
        "import sys, eqv2_plugin.cli, eqv2_plugin.data.cli; "
        "print(sorted(m for m in ('ase', 'torch', 'fairchem', 'lmdb', 'numpy') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_cli_defaults_match_library():
    from eqv2_plugin.data import cli

    assert ds_mod.parse_sizes(cli._DEFAULT_SIZES) == ds_mod.DEFAULT_SIZES
    assert tuple(cli._METALS.split(",")) == oc20_like.METALS
    assert tuple(cli._ADSORBATES.split(",")) == oc20_like.ADSORBATE_NAMES


def test_python_api_entry_points():
    from eqv2_plugin.data import generate_dataset as a, summarize as b
    from eqv2_plugin.data.oc20_like import generate_dataset as c, summarize as d

    assert a is c is ds_mod.generate_dataset and b is d is ds_mod.summarize


def test_help_documents_sizes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["make-data", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--sizes", "train=12", "is2re_train", "test_ood_cat", "is2re_test_ood_both", "labels/",
                 "--metals", "--adsorbates", "--overwrite"):
        assert word in text


# --------------------------------------------------------------------------- layout / fairchem


def test_layout_and_summary(generated):
    out, summary = generated
    assert (out / "manifest.json").is_file()
    for split in ds_mod.SPLITS:
        d = out / split.path
        assert sorted(p.name for p in d.iterdir()) == ["data.0000.lmdb", "metadata.npz"]
        s = summary["splits"][split.path]
        n = ds_mod.DEFAULT_SIZES[split.key]
        assert s["systems"] == n
        assert s["frames"] == n * (ds_mod.DEFAULT_FRAMES if split.task == "s2ef" else 1)
        assert 40 <= s["natoms_min"] <= s["natoms_max"] <= 100
        if split.twin:
            copy = ds_mod.labelled_copy_path(split)
            assert sorted(p.name for p in (out / copy).iterdir()) == ["data.0000.lmdb", "metadata.npz"]
            assert {k: v for k, v in summary["splits"][copy].items() if k not in ("target", "energy_mean")} == {
                k: v for k, v in s.items() if k not in ("target", "energy_mean")}
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary leftovers
    manifest = summary["manifest"]
    names = ("id", "ood_ads", "ood_cat", "ood_both")
    assert manifest["leaderboard_splits"] == {
        "s2ef": {n: f"s2ef/test_{n}" for n in names}, "is2re": {n: f"is2re/test_{n}" for n in names}}
    assert manifest["labelled_copies"] == {p: f"labels/{p}" for p in TEST_SPLITS}
    assert sorted(manifest["value_sha256"]) == sorted(ALL_SPLITS)
    table = ds_mod.summarize(out)
    for path in ALL_SPLITS:
        assert path in table
    assert "unlabelled" in table


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_fairchem_reads_and_collates(generated, split):
    import torch
    from fairchem.core.datasets.lmdb_dataset import data_list_collater

    out, _ = generated
    items = _read(out / split)
    assert len(items) == generated[1]["splits"][split]["frames"]
    for d in items:
        assert d.pos.dtype == torch.float32 and d.pos.shape == (d.natoms, 3)
        assert d.cell.dtype == torch.float32 and d.cell.shape == (1, 3, 3)
        assert d.atomic_numbers.shape == (d.natoms,)
        assert d.tags.dtype == torch.long and set(d.tags.tolist()) == {0, 1, 2}
        assert torch.equal(d.fixed.bool(), d.tags == 0)
        assert isinstance(d.sid, int) and isinstance(d.fid, int)
    batch = data_list_collater(items, otf_graph=True)
    n, b = int(batch.natoms.sum()), len(items)
    assert batch.pos.shape == (n, 3) and batch.pos.dtype == torch.float32
    assert batch.atomic_numbers.shape == (n,)
    assert batch.cell.shape == (b, 3, 3)
    assert batch.natoms.shape == (b,)
    assert batch.tags.dtype == torch.long and batch.tags.shape == (n,)
    assert batch.fixed.shape == (n,)
    assert batch.sid.shape == (b,) and batch.fid.shape == (b,)
    assert batch.sid.dtype == torch.long and batch.fid.dtype == torch.long
    if split in S2EF_LABELLED:
        assert batch.energy.shape == (b,) and batch.energy.is_floating_point()
        assert batch.forces.shape == (n, 3) and batch.forces.dtype == torch.float32
    else:
        assert all(getattr(d, "energy", None) is None and getattr(d, "forces", None) is None for d in items)
    if split in IS2RE_LABELLED:
        assert batch.y_init.shape == (b,) and batch.y_relaxed.shape == (b,)
        assert batch.pos_relaxed.shape == (n, 3) and batch.pos_relaxed.dtype == torch.float32
    # metadata.npz: natoms of every entry in dataset order (fairchem's load balancing)
    meta = np.load(out / split / "metadata.npz")
    assert meta["natoms"].tolist() == [int(d.natoms) for d in items]
    from fairchem.core.datasets.lmdb_dataset import LmdbDataset

    fc = LmdbDataset({"src": str(out / split)})
    assert fc.metadata_hasattr("natoms")
    assert list(fc.get_metadata("natoms", list(range(len(fc))))) == meta["natoms"].tolist()
    _close(fc)
    # the manifest's value digest matches what is stored
    assert generated[1]["manifest"]["value_sha256"][split] == lmdb_writer.data_digest(
        lmdb_writer.iter_split(out / split)
    )


def test_split_sharded_over_several_lmdb_files(generated, tmp_path):
    import pickle

    out, _ = generated
    stored = list(lmdb_writer.iter_split(out / "s2ef/train"))
    lmdb_writer.write_split(tmp_path / "sharded", stored, entries_per_file=20)
    names = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert names == ["data.0000.lmdb", "data.0001.lmdb", "data.0002.lmdb", "metadata.npz"]
    items = _read(tmp_path / "sharded")
    assert [(d.sid, d.fid) for d in items] == [(d.sid, d.fid) for d in stored]
    assert np.load(tmp_path / "sharded" / "metadata.npz")["natoms"].tolist() == [d.natoms for d in stored]
    lengths = [pickle.loads(v) for _, k, v in lmdb_writer.iter_raw(tmp_path / "sharded") if k == b"length"]
    assert lengths == [20, 20, len(stored) - 40]


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("split", S2EF_LABELLED)
def test_s2ef_labels_equal_fresh_emt(generated, split):
    out, _ = generated
    frames = defaultdict(list)
    for d in _read(out / split):
        energy, forces = _emt(_atoms(d))
        assert abs(float(d.energy) - energy) < 1e-5
        np.testing.assert_allclose(d.forces.double().numpy(), forces, rtol=0, atol=1e-5)
        frames[d.sid].append(d)
    for sid, items in frames.items():  # short relaxation trajectories
        assert len(items) == ds_mod.DEFAULT_FRAMES
        fids = [d.fid for d in items]
        assert fids == sorted(set(fids))
        fixed = items[0].fixed.bool()
        for d in items[1:]:
            assert np.array_equal(d.pos[fixed].numpy(), items[0].pos[fixed].numpy())
            assert not np.array_equal(d.pos[~fixed].numpy(), items[0].pos[~fixed].numpy())
        assert float(items[-1].energy) < float(items[0].energy)


@pytest.mark.parametrize("split", ("s2ef/test",) + TEST_SPLITS)
def test_test_split_is_unlabelled_but_sane(generated, split):
    out, _ = generated
    items = _read(out / split)
    for d in items:
        for key in ("energy", "forces", "y", "force", "y_init", "y_relaxed", "pos_relaxed"):
            assert getattr(d, key, None) is None, key
        energy, forces = _emt(_atoms(d))
        assert np.isfinite(energy) and np.abs(forces).max() < 50.0
    if split in TEST_SPLITS:  # the labelled copy: the same entries, plus labels
        twin = _read(out / "labels" / split)
        assert len(twin) == len(items)
        for d, t in zip(items, twin):
            assert (d.sid, d.fid) == (t.sid, t.fid)
            for key in ("pos", "cell", "atomic_numbers", "tags", "fixed", "natoms"):
                assert np.array_equal(np.asarray(d[key]), np.asarray(t[key])), key
            labels = ("energy", "forces") if split.startswith("s2ef") else ("y_init", "y_relaxed", "pos_relaxed")
            assert all(getattr(t, key, None) is not None for key in labels)


@pytest.mark.parametrize("split", IS2RE_LABELLED)
def test_is2re_relaxed(generated, split):
    out, _ = generated
    for d in _read(out / split):
        assert d.y_relaxed < d.y_init
        e_init, _ = _emt(_atoms(d))
        assert abs(e_init - d.y_init) < 1e-5
        relaxed = _atoms(d, d.pos_relaxed)
        e_rel, forces = _emt(relaxed)
        assert abs(e_rel - d.y_relaxed) < 1e-5
        free = ~d.fixed.bool().numpy()
        assert np.linalg.norm(forces[free], axis=1).max() < 0.05
        fixed = d.fixed.bool()
        assert np.array_equal(d.pos_relaxed[fixed].numpy(), d.pos[fixed].numpy())


def test_held_out_metal_and_adsorbate_only_in_the_ood_splits(generated):
    out, summary = generated
    held = summary["manifest"]["held_out"]
    held_formula = _formula(held["adsorbate"])
    seen = defaultdict(set)
    for split in ALL_SPLITS:
        for d in _read(out / split):
            metal, formula = _metal_and_adsorbate(d)
            seen[split].add((metal, formula))
    ood_splits = {"s2ef/val_ood"} | {p for p in ALL_SPLITS if "test_ood_" in p}
    for split in ALL_SPLITS:
        if split not in ood_splits:  # training, validation, test and test_id splits
            assert all(m != held["metal"] and f != held_formula for m, f in seen[split]), split
    train_metals = {m for m, _ in seen["s2ef/train"]}
    train_formulas = {f for _, f in seen["s2ef/train"]}
    ood = seen["s2ef/val_ood"]
    assert all(m not in train_metals or f not in train_formulas for m, f in ood)
    assert any(m == held["metal"] for m, _ in ood) and any(f == held_formula for _, f in ood)
    # OC20's test splits: ood_ads = held-out adsorbate on seen metals, ood_cat = seen
    # adsorbates on the held-out metal, ood_both = both held out (labelled copies alike)
    for split in ood_splits - {"s2ef/val_ood"}:
        kind = split.rsplit("test_", 1)[1]
        for metal, formula in seen[split]:
            assert (metal == held["metal"]) == (kind in ("ood_cat", "ood_both")), (split, metal)
            assert (formula == held_formula) == (kind in ("ood_ads", "ood_both")), (split, formula)


# --------------------------------------------------------------------------- determinism


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _values(split_dir: Path) -> list[tuple[str, bytes, dict]]:
    """Every record of a split: (file, key, decoded value as {attribute: value})."""
    import pickle

    records = []
    for name, key, raw in lmdb_writer.iter_raw(split_dir):
        value = pickle.loads(raw)
        records.append((name, key, value if isinstance(value, int) else {k: value[k] for k in value.keys()}))
    return records


def _assert_same_value(a, b, where):
    import torch

    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            _assert_same_value(a[k], b[k], f"{where}.{k}")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    else:
        assert type(a) is type(b) and a == b, where


def test_same_seed_gives_identical_values(generated, tmp_path):
    """Same seed (in-process this time, 2 workers before) -> the same stored values.

    The .lmdb bytes themselves differ between runs because torch's tensor
    pickles embed storage memory addresses (see lmdb_writer); every other file
    is compared byte for byte, and every stored record value for value.
    """
    out, _ = generated
    again = tmp_path / "again"
    ds_mod.generate_dataset(again, seed=0, workers=1)
    first, second = _files(out), _files(again)
    assert sorted(first) == sorted(second)
    for name in first:
        if not name.endswith(".lmdb"):
            assert first[name] == second[name], name  # manifest.json (value digests), metadata.npz
    for split in ALL_SPLITS:
        a, b = _values(out / split), _values(again / split)
        assert [(f, k) for f, k, _ in a] == [(f, k) for f, k, _ in b]
        for (name, key, va), (_, _, vb) in zip(a, b):
            _assert_same_value(va, vb, f"{split}/{name}[{key.decode()}]")


def test_other_seed_differs_and_overwrite_replaces(generated, tmp_path, capsys):
    out, _ = generated
    target = tmp_path / "seed1"
    target.mkdir()
    (target / "old.txt").write_text("stale")
    rc = main(["make-data", "--out", str(target), "--seed", "1", "--sizes", TINY, "--frames", "2",
               "--overwrite", "--quiet"])
    assert rc == 0
    assert not (target / "old.txt").exists()
    printed = capsys.readouterr().out
    assert "s2ef/train" in printed and "energy mean" in printed
    digests0 = generated[1]["manifest"]["value_sha256"]
    digests1 = ds_mod.dataset_summary(target)["manifest"]["value_sha256"]
    assert all(digests0[k] != digests1[k] for k in digests0)
    for split in ("s2ef/train", "is2re/train"):
        a = {d.sid: d for d in _read(out / split) if d.fid == 0}
        b = {d.sid: d for d in _read(target / split) if d.fid == 0}
        assert b and set(b) <= set(a)
        for sid, d in b.items():
            same = d.atomic_numbers.shape == a[sid].atomic_numbers.shape and np.array_equal(
                d.pos.numpy(), a[sid].pos.numpy()
            )
            assert not same, (split, sid)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--sizes", "train=-3"], ["--sizes", "train", "-3"]),
        (["--sizes", "val_id=0"], ["--sizes", "val_id"]),
        (["--sizes", "trian=5"], ["--sizes", "trian", "val_ood"]),
        (["--sizes", "train=many"], ["--sizes", "train", "many"]),
        (["--metals", "Cu,Fe"], ["--metals", "'Fe'", "Pt"]),
        (["--metals", "Cu"], ["--metals", "at least 2"]),
        (["--adsorbates", "CO,XYZ"], ["--adsorbates", "'XYZ'"]),
        (["--seed", "-1"], ["--seed"]),
        (["--frames", "0"], ["--frames"]),
        (["--workers", "0"], ["--workers"]),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, capsys, extra, needles):
    out = tmp_path / "new" / "data"
    rc = main(["make-data", "--out", str(out), *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("eqv2-plugin make-data: error: ")
    for needle in needles:
        assert needle in err
    assert list(tmp_path.iterdir()) == []


def test_out_under_a_regular_file(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for out in (blocker / "sub" / "data", blocker):
        assert main(["make-data", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "not a folder" in err
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_out_in_read_only_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["make-data", "--out", str(locked / "data")]) == 2
        assert "--out" in capsys.readouterr().err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_existing_folder_needs_overwrite(tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    assert main(["make-data", "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--overwrite" in err
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_failure_midway_leaves_nothing_partial(tmp_path, monkeypatch):
    calls = []
    real = lmdb_writer.write_split

    def flaky(split_dir, data_list, **kw):
        calls.append(split_dir)
        if len(calls) == 2:
            raise RuntimeError("disk full (simulated)")
        return real(split_dir, data_list, **kw)

    monkeypatch.setattr(lmdb_writer, "write_split", flaky)
    sizes = ds_mod.parse_sizes(TINY)
    fresh = tmp_path / "parent" / "fresh"
    with pytest.raises(RuntimeError, match="simulated"):
        ds_mod.generate_dataset(fresh, sizes=sizes, frames=1, workers=2)  # pool path
    assert list(tmp_path.iterdir()) == []  # neither the output nor its new parent folder
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    calls.clear()
    with pytest.raises(RuntimeError, match="simulated"):
        ds_mod.generate_dataset(existing, sizes=sizes, frames=1, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["existing"]
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
