"""Leaderboard flow on the embedded data: predict each test split through fairchem's CLI,
assemble the EvalAI files, check them against the test LMDBs, and score them.

One tiny model is trained once per module; S2EF predictions and ML relaxations of every
OC20-named test split are made once and shared.  Independent references: the test LMDBs read
with our own LMDB reader, fairchem's own ``make_submission_file.py`` run as a script on the
same prediction files, trajectories read with ASE, and the metrics recomputed with numpy.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _fairchem_runs import TINY_MODEL, check, deep_update, run_dir_files, run_fairchem, s2ef_config, write_config
from eqv2_plugin.cli import main
from eqv2_plugin.data import lmdb_writer

pytestmark = pytest.mark.slow

OURS = {"name": "eqv2_plugin.EquiformerV2", **TINY_MODEL, "edge_frame": "deterministic"}
OC20 = ("id", "ood_ads", "ood_cat", "ood_both")
RELAX = {"relaxation_steps": 3, "relaxation_fmax": 0.01, "write_pos": True,
         "relax_opt": {"maxstep": 0.04, "memory": 50, "damping": 1.0, "alpha": 70.0}}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from eqv2_plugin.data import generate_dataset

    out = tmp_path_factory.mktemp("lb_data") / "data"
    generate_dataset(out, seed=0, workers=2)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("lb_runs")


@pytest.fixture(scope="module")
def trained(data, work):
    """A tiny EquiformerV2 trained for one epoch (12 steps) with fairchem --mode train."""
    cfg = s2ef_config(data, OURS)
    config = write_config(work / "s2ef.yml", cfg)
    check(run_fairchem(["--mode", "train", "--config-yml", str(config), "--cpu", "--run-dir", str(work),
                        "--identifier", "lb", "--seed", "1"], cwd=work))
    relax = write_config(work / "relax.yml", deep_update(cfg, {"task": RELAX, "optim": {"eval_batch_size": 2}}))
    return {"config": config, "relax_config": relax,
            "checkpoint": run_dir_files(work, "lb")["checkpoints"] / "best_checkpoint.pt"}


@pytest.fixture(scope="module")
def s2ef_pred(trained, data, work):
    out = work / "pred"
    assert main(["predict-splits", "--config-yml", str(trained["config"]), "--checkpoint", str(trained["checkpoint"]),
                 "--test-data", str(data), "--out", str(out), "--cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def relaxed(trained, data, work):
    out = work / "pred"  # same folder: is2re/ and is2rs/ beside s2ef/
    assert main(["predict-splits", "--mode", "run-relaxations", "--config-yml", str(trained["relax_config"]),
                 "--checkpoint", str(trained["checkpoint"]), "--test-data", str(data), "--out", str(out),
                 "--cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def s2ef_submission(s2ef_pred, work) -> Path:
    path = work / "s2ef_submission.npz"
    assert main(["submission", "--task", "s2ef", "--predictions", str(s2ef_pred), "--out", str(path)]) == 0
    return path


def _entries(split_dir: Path) -> list:
    return list(lmdb_writer.iter_split(split_dir))


def _fairchem_script(args: list[str]) -> None:
    """fairchem 1.10's own make_submission_file.py, run as a script (as its docs do)."""
    spec = importlib.util.find_spec("fairchem.core")
    script = Path(next(iter(spec.submodule_search_locations))) / "scripts" / "make_submission_file.py"
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True, text=True)


def _split_flags(paths: dict[str, Path]) -> list[str]:
    return [a for s, p in paths.items() for a in (f"--{s.replace('_', '-')}", str(p))]


def _submission(task: str, pred: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    assert main(["submission", "--task", task, "--predictions", str(pred), "--out", str(out), *extra]) == 0
    return dict(np.load(out))


# --------------------------------------------------------------------------- S2EF


def test_s2ef_submission_format_and_check(s2ef_pred, data, work, capsys):
    sub = _submission("s2ef", s2ef_pred, work / "s2ef_checked.npz", "--test-data", str(data))
    assert "OK:" in capsys.readouterr().out
    assert sorted(sub) == sorted(f"{s}_{f}" for s in OC20 for f in ("ids", "energy", "forces", "chunk_idx"))
    for split in OC20:
        entries = _entries(data / "s2ef" / f"test_{split}")
        free = {f"{d.sid}_{d.fid}": int((d.fixed == 0).sum()) for d in entries}
        ids = sub[f"{split}_ids"]
        assert ids.dtype.kind == "U" and sorted(ids.tolist()) == sorted(free)
        assert sub[f"{split}_energy"].dtype == np.float16 and sub[f"{split}_energy"].shape == (len(ids), 1)
        forces = sub[f"{split}_forces"]
        assert forces.dtype == np.float16 and forces.shape == (sum(free.values()), 3)
        assert sub[f"{split}_chunk_idx"].dtype == np.int64
        chunks = np.split(forces, sub[f"{split}_chunk_idx"])  # forces of the free atoms only, per id
        assert [len(c) for c in chunks] == [free[i] for i in ids]
        assert np.isfinite(forces.astype(np.float64)).all()
    # fairchem's own script on the same prediction files writes the same arrays
    _fairchem_script([*_split_flags({s: s2ef_pred / "s2ef" / f"{s}.npz" for s in OC20}), "--out-path",
                      str(work / "fairchem_s2ef.npz")])
    ref = dict(np.load(work / "fairchem_s2ef.npz"))
    assert sorted(ref) == sorted(sub)
    for name in ref:
        assert ref[name].dtype == sub[name].dtype and np.array_equal(ref[name], sub[name]), name


def _corrupt(sub: dict[str, np.ndarray], how: str) -> tuple[dict[str, np.ndarray], str, str]:
    """A corrupted copy of an S2EF submission, the split and the id the check must name."""
    a = {k: v.copy() for k, v in sub.items()}
    if how == "missing_id":
        split = "ood_cat"
        ids, c = a[f"{split}_ids"], a[f"{split}_chunk_idx"]
        a[f"{split}_ids"], a[f"{split}_energy"] = ids[:-1], a[f"{split}_energy"][:-1]
        a[f"{split}_forces"], a[f"{split}_chunk_idx"] = a[f"{split}_forces"][: c[-1]], c[:-1]
        return a, split, ids[-1]
    if how == "duplicate_id":
        split = "id"
        a[f"{split}_ids"][1] = a[f"{split}_ids"][0]
        return a, split, a[f"{split}_ids"][0]
    if how == "shifted_chunk":
        split = "ood_ads"
        a[f"{split}_chunk_idx"][2] += 1  # the third id gets one force row too many
        return a, split, a[f"{split}_ids"][2]
    if how == "nan_force":
        split = "ood_both"
        row = int(a[f"{split}_chunk_idx"][4]) + 1  # a row of the sixth id
        a[f"{split}_forces"][row, 0] = np.nan
        return a, split, a[f"{split}_ids"][5]
    if how == "nan_energy":
        split = "id"
        a[f"{split}_energy"][3, 0] = np.inf
        return a, split, a[f"{split}_ids"][3]
    raise ValueError(how)


@pytest.mark.parametrize("how", ["missing_id", "duplicate_id", "shifted_chunk", "nan_force", "nan_energy"])
def test_corrupted_s2ef_submission_fails_naming_split_and_id(s2ef_submission, data, work, capsys, how):
    capsys.readouterr()
    assert main(["check-submission", str(s2ef_submission), "--test-data", str(data)]) == 0  # intact: passes
    assert "OK:" in capsys.readouterr().out
    bad, split, bad_id = _corrupt(dict(np.load(s2ef_submission)), how)
    path = work / f"bad_{how}.npz"
    np.savez_compressed(path, **bad)
    capsys.readouterr()
    assert main(["check-submission", str(path), "--test-data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eqv2-plugin check-submission: error: ")
    assert f"split '{split}', id '{bad_id}'" in err, err


def test_wrong_dtype_and_missing_split_are_named(s2ef_submission, data, work, capsys):
    sub = dict(np.load(s2ef_submission))
    bad = {**sub, "id_energy": sub["id_energy"].astype(np.float64)}
    del bad["ood_cat_forces"]
    np.savez_compressed(work / "bad_dtype.npz", **bad)
    capsys.readouterr()
    assert main(["check-submission", str(work / "bad_dtype.npz"), "--test-data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "split 'id': id_energy is float64" in err and "split 'ood_cat': missing ood_cat_forces" in err


def test_oc22_s2ef_needs_float32(trained, s2ef_pred, data, work, capsys):
    tests = {"id": data / "s2ef" / "test_id", "ood": data / "s2ef" / "test_ood_both"}
    test_data = [a for s, p in tests.items() for a in ("--test-data", f"{s}={p}")]
    # fairchem's default float16 predictions cannot make an OC22 file
    capsys.readouterr()
    assert main(["submission", "--task", "s2ef", "--benchmark", "oc22", "--id", str(s2ef_pred / "s2ef" / "id.npz"),
                 "--ood", str(s2ef_pred / "s2ef" / "ood_both.npz"), "--out", str(work / "x.npz")]) == 2
    assert "prediction_dtype=float32" in capsys.readouterr().err
    pred = work / "pred22"
    assert main(["predict-splits", "--config-yml", str(trained["config"]), "--checkpoint", str(trained["checkpoint"]),
                 *test_data, "--out", str(pred), "--cpu", "--", "--task.prediction_dtype=float32"]) == 0
    sub = _submission("s2ef", pred, work / "oc22.npz", "--benchmark", "oc22", *test_data)
    assert "OK:" in capsys.readouterr().out
    assert sorted(sub) == sorted(f"{s}_{f}" for s in ("id", "ood") for f in ("ids", "energy", "forces", "chunk_idx"))
    for split in ("id", "ood"):
        raw = np.load(pred / "s2ef" / f"{split}.npz")
        assert sub[f"{split}_forces"].dtype == np.float32 and sub[f"{split}_energy"].dtype == np.float32
        assert np.array_equal(sub[f"{split}_forces"], raw["forces"]) and np.array_equal(sub[f"{split}_ids"], raw["ids"])
    # the same model in float16 (OC20 default) agrees to float16 precision
    f16 = np.load(s2ef_pred / "s2ef" / "id.npz")
    assert np.array_equal(f16["ids"], sub["id_ids"])
    np.testing.assert_allclose(f16["forces"].astype(np.float64), sub["id_forces"], rtol=2e-3, atol=1e-4)


# --------------------------------------------------------------------------- IS2RE / IS2RS


def test_is2re_from_relaxations_is_the_last_frame(relaxed, trained, data, work, capsys):
    from ase.io import Trajectory

    sub = _submission("is2re", relaxed, work / "is2re.npz", "--test-data", str(data))
    assert "OK:" in capsys.readouterr().out
    assert sorted(sub) == sorted(f"{s}_{f}" for s in OC20 for f in ("ids", "energy"))
    positions = _submission("is2rs", relaxed, work / "is2rs.npz", "--test-data", str(data))
    for split in OC20:
        sids = sorted(str(d.sid) for d in _entries(data / "is2re" / f"test_{split}"))
        ids, energy = sub[f"{split}_ids"].tolist(), sub[f"{split}_energy"]
        assert sorted(ids) == sids and energy.shape == (len(ids),) and energy.dtype == np.float64
        pos_ids = positions[f"{split}_ids"].tolist()
        pos = np.split(positions[f"{split}_pos"], positions[f"{split}_chunk_idx"])
        for sid, e in zip(ids, energy):
            frames = Trajectory(str(relaxed / "is2re" / split / f"{sid}.traj"))
            assert len(frames) >= 2  # initial + relaxed
            last = frames[-1]
            assert e == last.get_potential_energy()
            # the relaxed energy belongs to the relaxed structure that IS2RS submits (fairchem's
            # trajectory frames may hold periodic images of the atoms: equal up to lattice vectors)
            diff = _min_image(last.positions - pos[pos_ids.index(sid)], last.cell.array)
            assert np.abs(diff).max() < 1e-5
    # fairchem's script (--is2re-relaxations) on the same trajectory folders agrees
    _fairchem_script([*_split_flags({s: relaxed / "is2re" / s for s in OC20}), "--is2re-relaxations",
                      "--out-path", str(work / "fairchem_is2re.npz")])
    ref = np.load(work / "fairchem_is2re.npz")
    for split in OC20:
        theirs = dict(zip(ref[f"{split}_ids"].tolist(), ref[f"{split}_energy"].tolist()))
        assert theirs == dict(zip(sub[f"{split}_ids"].tolist(), sub[f"{split}_energy"].tolist()))
    # ... and the model's own energy of the IS2RS structure (ASE calculator) is that energy
    from ase import Atoms
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    d = _entries(data / "is2re" / "test_id")[0]
    k = positions["id_ids"].tolist().index(str(d.sid))
    atoms = Atoms(numbers=d.atomic_numbers.numpy(), positions=np.split(positions["id_pos"], positions["id_chunk_idx"])[k],
                  cell=d.cell.reshape(3, 3).numpy(), pbc=True, tags=d.tags.numpy())
    atoms.calc = OCPCalculator(checkpoint_path=str(trained["checkpoint"]), trainer="equiformerv2_forces", cpu=True, seed=0)
    assert atoms.get_potential_energy() == pytest.approx(float(sub["id_energy"][sub["id_ids"].tolist().index(str(d.sid))]),
                                                         rel=1e-4)


def test_is2rs_submission_matches_fairchem_and_fails_on_free_atom_chunks(relaxed, data, work, capsys):
    sub = _submission("is2rs", relaxed, work / "is2rs.npz")
    _fairchem_script([*_split_flags({s: relaxed / "is2rs" / f"{s}.npz" for s in OC20}), "--out-path",
                      str(work / "fairchem_is2rs.npz")])
    ref = dict(np.load(work / "fairchem_is2rs.npz"))
    assert sorted(ref) == sorted(sub) == sorted(f"{s}_{f}" for s in OC20 for f in ("ids", "pos", "chunk_idx"))
    for name in ref:
        assert ref[name].dtype == sub[name].dtype and np.array_equal(ref[name], sub[name]), name
    for split in OC20:  # positions of all atoms, per system
        natoms = {str(d.sid): int(d.natoms) for d in _entries(data / "is2re" / f"test_{split}")}
        chunks = np.split(sub[f"{split}_pos"], sub[f"{split}_chunk_idx"])
        assert [len(c) for c in chunks] == [natoms[i] for i in sub[f"{split}_ids"]]
    # free atoms only (the S2EF convention) is wrong for IS2RS: the check names the first id
    entries = {str(d.sid): d for d in _entries(data / "is2re" / "test_ood_ads")}
    ids = sub["ood_ads_ids"]
    chunks = np.split(sub["ood_ads_pos"], sub["ood_ads_chunk_idx"])
    free = [c[(entries[i].fixed == 0).numpy()] for i, c in zip(ids, chunks)]
    bad = {**sub, "ood_ads_pos": np.concatenate(free), "ood_ads_chunk_idx": np.cumsum([len(f) for f in free])[:-1]}
    np.savez_compressed(work / "bad_is2rs.npz", **bad)
    capsys.readouterr()
    assert main(["check-submission", str(work / "bad_is2rs.npz"), "--test-data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"split 'ood_ads', id '{ids[0]}'" in err and "atoms" in err


# --------------------------------------------------------------------------- metrics


def _labels(data: Path, group: str, split: str) -> list:
    return _entries(data / "labels" / group / f"test_{split}")


def _min_image(d: np.ndarray, cell: np.ndarray) -> np.ndarray:
    frac = np.linalg.solve(cell.T, d.T).T
    return (frac - np.round(frac)) @ cell


def _numpy_metrics(task: str, sub: dict, data: Path, split: str) -> dict[str, float]:
    """The leaderboard metrics recomputed from their definitions, in numpy."""
    group = "s2ef" if task == "s2ef" else "is2re"
    labels = {(f"{d.sid}_{d.fid}" if task == "s2ef" else str(d.sid)): d for d in _labels(data, group, split)}
    ids = sub[f"{split}_ids"].tolist()
    out: dict[str, float] = {}
    if task == "s2ef":
        e = sub[f"{split}_energy"].astype(np.float64).reshape(-1)
        forces = np.split(sub[f"{split}_forces"].astype(np.float64), sub[f"{split}_chunk_idx"])
        de = np.array([e[k] - float(labels[i].energy) for k, i in enumerate(ids)])
        df = [forces[k] - labels[i].forces.double().numpy()[(labels[i].fixed == 0).numpy()] for k, i in enumerate(ids)]
        pf, tf = np.concatenate(forces), np.concatenate([labels[i].forces.double().numpy()[(labels[i].fixed == 0).numpy()]
                                                         for i in ids])
        out["energy_mae"] = float(np.abs(de).mean())
        out["forces_mae"] = float(np.abs(pf - tf).mean())
        out["forces_cosine_similarity"] = float(np.mean(np.sum(pf * tf, 1) / np.linalg.norm(pf, axis=1)
                                                        / np.linalg.norm(tf, axis=1)))
        out["energy_forces_within_threshold"] = float(np.mean(
            [abs(de[k]) < 0.02 and np.abs(df[k]).max() < 0.03 for k in range(len(ids))]))
    elif task == "is2re":
        de = np.array([float(sub[f"{split}_energy"][k]) - float(labels[i].y_relaxed) for k, i in enumerate(ids)])
        out["energy_mae"] = float(np.abs(de).mean())
        out["energy_within_threshold"] = float(np.mean(np.abs(de) < 0.02))
    else:
        pos = np.split(sub[f"{split}_pos"].astype(np.float64), sub[f"{split}_chunk_idx"])
        means = []
        for k, i in enumerate(ids):
            d = labels[i]
            free = (d.fixed == 0).numpy()
            diff = _min_image(pos[k][free] - d.pos_relaxed.double().numpy()[free], d.cell.double().numpy().reshape(3, 3))
            means.append(np.linalg.norm(diff, axis=1).mean())
        thresholds = np.arange(0.01, 0.5, 0.001)
        out["positions_average_distance_within_threshold"] = float(
            np.mean([[m < t for t in thresholds] for m in means]))
    return out


def _near_labels(task: str, data: Path, benchmark_splits=OC20) -> dict[str, np.ndarray]:
    """A submission built from the labelled copies plus controlled errors, so that the
    threshold metrics (EFwT, EwT, ADwT) are neither 0 nor 1."""
    rng = np.random.default_rng(7)
    sub: dict[str, np.ndarray] = {}
    group = "s2ef" if task == "s2ef" else "is2re"
    for split in benchmark_splits:
        entries = _labels(data, group, split)
        if task == "s2ef":
            sub[f"{split}_ids"] = np.array([f"{d.sid}_{d.fid}" for d in entries])
            sub[f"{split}_energy"] = np.array([[float(d.energy) + (0.01 if k % 2 else 0.05) * rng.choice([-1, 1])]
                                               for k, d in enumerate(entries)], dtype=np.float32)
            forces = [d.forces.numpy()[(d.fixed == 0).numpy()] for d in entries]
            forces = [f + rng.normal(0, 0.002 if k % 3 else 0.1, f.shape) for k, f in enumerate(forces)]
            sub[f"{split}_forces"] = np.concatenate(forces).astype(np.float32)
            sub[f"{split}_chunk_idx"] = np.cumsum([len(f) for f in forces])[:-1]
        elif task == "is2re":
            sub[f"{split}_ids"] = np.array([str(d.sid) for d in entries])
            sub[f"{split}_energy"] = np.array([float(d.y_relaxed) + (0.005 if k % 2 else 0.1)
                                               for k, d in enumerate(entries)])
        else:
            sub[f"{split}_ids"] = np.array([str(d.sid) for d in entries])
            pos = [d.pos_relaxed.double().numpy() + rng.normal(0, 0.01 if k % 2 else 0.3, (int(d.natoms), 3))
                   for k, d in enumerate(entries)]
            sub[f"{split}_pos"] = np.concatenate(pos)
            sub[f"{split}_chunk_idx"] = np.cumsum([len(p) for p in pos])[:-1]
    return sub


def _evaluate(path: Path, data: Path, capsys, *extra: str) -> dict:
    import json

    out = path.with_suffix(".json")
    capsys.readouterr()
    assert main(["evaluate", str(path), "--labels", str(data), "--out", str(out), *extra]) == 0
    printed = capsys.readouterr().out
    return {"json": json.loads(out.read_text()), "printed": printed}


def _assert_metrics_equal(result: dict, task: str, sub: dict, data: Path, splits=OC20) -> None:
    for split in splits:
        expected = _numpy_metrics(task, sub, data, split)
        got = result["splits"][split]
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-9), (split, name)
    for name in _numpy_metrics(task, sub, data, splits[0]):
        assert result["average"][name] == pytest.approx(np.mean([result["splits"][s][name] for s in splits]), rel=1e-12)


@pytest.mark.parametrize("source", ["model", "near_labels"])
def test_evaluate_s2ef_equals_numpy(source, s2ef_pred, data, work, capsys):
    path = work / f"eval_s2ef_{source}.npz"
    if source == "model":
        sub = _submission("s2ef", s2ef_pred, path)
    else:
        sub = _near_labels("s2ef", data)
        np.savez_compressed(path, **sub)
    result = _evaluate(path, data, capsys)
    _assert_metrics_equal(result["json"], "s2ef", sub, data)
    assert result["json"]["evaluator"] == "fairchem.core.modules.evaluator.Evaluator(task='s2ef')"
    assert "EFwT" in result["printed"] and "average" in result["printed"]
    if source == "near_labels":  # the thresholds matter: some systems in, some out
        efwt = [result["json"]["splits"][s]["energy_forces_within_threshold"] for s in OC20]
        assert 0 < min(efwt) and max(efwt) < 1


@pytest.mark.parametrize("task", ["is2re", "is2rs"])
@pytest.mark.parametrize("source", ["model", "near_labels"])
def test_evaluate_is2re_is2rs_equals_numpy(task, source, relaxed, data, work, capsys):
    path = work / f"eval_{task}_{source}.npz"
    if source == "model":
        sub = _submission(task, relaxed, path)
    else:
        sub = _near_labels(task, data)
        np.savez_compressed(path, **sub)
    result = _evaluate(path, data, capsys)
    _assert_metrics_equal(result["json"], task, sub, data)
    if source == "near_labels":
        name = "energy_within_threshold" if task == "is2re" else "positions_average_distance_within_threshold"
        assert 0 < result["json"]["average"][name] < 1
        assert ("EwT" if task == "is2re" else "ADwT") in result["printed"]


def test_evaluate_one_fairchem_results_file(s2ef_pred, data, work, capsys):
    """A single split's s2ef_predictions.npz with that split's labels (e.g. a validation split)."""
    import json

    out = work / "one_split.json"
    capsys.readouterr()
    assert main(["evaluate", str(s2ef_pred / "s2ef" / "ood_cat.npz"), "--labels",
                 f"val={data / 'labels' / 's2ef' / 'test_ood_cat'}", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    raw = dict(np.load(s2ef_pred / "s2ef" / "ood_cat.npz"))
    sub = {f"ood_cat_{k}": v for k, v in raw.items()}
    expected = _numpy_metrics("s2ef", sub, data, "ood_cat")
    for name, value in expected.items():
        assert result["splits"]["val"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    # unlabelled test data cannot be scored: the message says where the labels are
    assert main(["evaluate", str(s2ef_pred / "s2ef" / "ood_cat.npz"), "--labels",
                 f"val={data / 's2ef' / 'test_ood_cat'}", "--out", str(out)]) == 2
    assert "labels/" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input (no fairchem runs)


def test_bad_arguments_name_the_flag(tmp_path, capsys):
    (tmp_path / "pred.npz").write_bytes(b"not an npz")
    cases = [
        (["check-submission", str(tmp_path / "none.npz"), "--test-data", str(tmp_path)], "none.npz"),
        (["check-submission", str(tmp_path / "pred.npz"), "--test-data", str(tmp_path)], "not a readable .npz"),
        (["submission", "--task", "s2ef", "--id", str(tmp_path / "pred.npz"), "--out", str(tmp_path / "s.npz")],
         "needs every split"),
        (["submission", "--task", "s2ef", *[a for s in OC20 for a in (f"--{s.replace('_', '-')}", str(tmp_path / "pred.npz"))],
          "--out", str(tmp_path / "s.npz")], "split 'id'"),
        (["submission", "--task", "s2ef", "--out", str(tmp_path / "s.npz")], "--predictions"),
        (["evaluate", str(tmp_path / "pred.npz"), "--labels", "id"], "not a readable"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err, (argv, err)
    assert not (tmp_path / "s.npz").exists()


def test_resolve_splits_messages(tmp_path):
    from eqv2_plugin.errors import UserInputError
    from eqv2_plugin.leaderboard.testdata import resolve_splits

    with pytest.raises(UserInputError, match="unknown split 'ood_x'.*id, ood_ads, ood_cat, ood_both"):
        resolve_splits([f"ood_x={tmp_path}"], "s2ef", "oc20", "--test-data")
    with pytest.raises(UserInputError, match="split 'id': .* does not exist"):
        resolve_splits([f"id={tmp_path / 'gone'}"], "s2ef", "oc20", "--test-data")
    with pytest.raises(UserInputError, match="--test-data ood_cat=PATH"):
        resolve_splits([f"id={tmp_path}", f"ood_ads={tmp_path}", f"ood_both={tmp_path}"], "s2ef", "oc20",
                       "--test-data", required=OC20)
    with pytest.raises(UserInputError, match="no manifest.json"):
        resolve_splits([str(tmp_path)], "s2ef", "oc20", "--test-data")


def test_float16_overflow_is_refused(tmp_path):
    from eqv2_plugin.errors import UserInputError
    from eqv2_plugin.leaderboard.submission import load_s2ef

    path = tmp_path / "p.npz"
    np.savez(path, ids=np.array(["1_0", "2_0"]), energy=np.array([[1.0], [7e4]], dtype=np.float32),
             forces=np.zeros((3, 3), dtype=np.float32), chunk_idx=np.array([1]))
    with pytest.raises(UserInputError, match="split 'id'.*beyond float16"):
        load_s2ef(path, "id", "float16")
    assert load_s2ef(path, "id", "float32")["energy"].dtype == np.float32


def test_is2re_direct_predictions_use_sids(tmp_path):
    """An IS2RE-direct model's is2re_predictions.npz has ids "sid_fid": the submission wants "sid"."""
    from eqv2_plugin.errors import UserInputError
    from eqv2_plugin.leaderboard.submission import load_is2re

    path = tmp_path / "is2re_predictions.npz"
    np.savez(path, ids=np.array(["11000000_0", "11000001_0"]), energy=np.array([[1.5], [2.5]], dtype=np.float16))
    got = load_is2re(path, "id", "oc20")
    assert got["ids"].tolist() == ["11000000", "11000001"]
    assert got["energy"].shape == (2,) and got["energy"].dtype == np.float16
    with pytest.raises(UserInputError, match="split 'id'.*float16.*OC22"):
        load_is2re(path, "id", "oc22")


def test_predict_splits_refuses_to_reuse_outputs(tmp_path, capsys):
    cfg, ckpt = tmp_path / "c.yml", tmp_path / "c.pt"
    cfg.write_text("trainer: equiformerv2_forces\n")
    ckpt.write_bytes(b"")
    split = tmp_path / "lmdb"
    split.mkdir()
    (tmp_path / "pred" / "is2re" / "id").mkdir(parents=True)
    (tmp_path / "pred" / "is2re" / "id" / "11000000.traj").write_bytes(b"")
    assert main(["predict-splits", "--mode", "run-relaxations", "--config-yml", str(cfg), "--checkpoint", str(ckpt),
                 "--test-data", f"id={split}", "--out", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "is2re/id" in err
